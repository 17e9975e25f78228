"""Where the packaged templates are: the shell finds them, the core is handed them."""

from __future__ import annotations

from pathlib import Path

from agent.core.render import OUTPUTS


class NoTemplates(RuntimeError):
    """Neither the wheel nor the checkout holds the templates."""


def packaged_template_dir() -> Path:
    """Packaged templates (wheel: ``agent/templates``) or the checkout's ``templates/``."""
    here = Path(__file__).resolve().parent
    probe = next(iter(OUTPUTS.values()))
    for candidate in (here / "templates", here.parent / "templates"):
        if (candidate / probe).is_file():
            return candidate
    raise NoTemplates(f"no templates found beside {here}")


def template_dirs(user_dir: str | Path | None) -> list[Path]:
    """A user's template directory first (its files win), the packaged one after."""
    return [*([Path(user_dir)] if user_dir else []), packaged_template_dir()]

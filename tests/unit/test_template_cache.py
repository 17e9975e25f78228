"""The dry run's template cache (agent.assets.TemplateCache): compiled templates are reused
only when nothing they were compiled from changed, and a broken cache never breaks a render.
"""

from __future__ import annotations

import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from agent.assets import TemplateCache, template_cache, template_dirs
from agent.core import render
from agent.core.snapshot import Snapshot
from agent.core.translate import translate
from agent.settings import Settings
from tests.conftest import EXAMPLES

SETTINGS = Settings(node_name="worker-1", interface="eth0", spread=True, unicast=True)
OBJECTS: list[dict[str, Any]] = yaml.safe_load((EXAMPLES / "cluster.yaml").read_text())["items"]


def state() -> Any:
    return translate(
        Snapshot.from_objects(OBJECTS), SETTINGS, node_name="worker-1", interface="eth0"
    )


def renderer(dirs: list[Path], cache: TemplateCache, *, compiles: bool) -> render.Renderer:
    """A one-shot Renderer on ``cache`` whose environment fails the test if it compiles a
    template when it should not (``compiles=False``)."""
    made = render.Renderer(dirs, once=True, bytecode_cache=cache)
    if not compiles:

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("compiled a template the cache holds")

        made.env.compile = refuse  # type: ignore[method-assign]
    return made


def test_a_second_run_renders_from_the_cache_the_same_bytes(tmp_path: Path) -> None:
    cache = TemplateCache(str(tmp_path))
    first = renderer(template_dirs(None), cache, compiles=True).render(state())
    assert len(list(tmp_path.iterdir())) == 2, "one entry per template"
    again = renderer(template_dirs(None), TemplateCache(str(tmp_path)), compiles=False)
    assert again.render(state()) == first


def test_an_edited_template_is_compiled_again(tmp_path: Path) -> None:
    mine = tmp_path / "templates"
    shutil.copytree(template_dirs(None)[-1], mine)
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    renderer([mine], TemplateCache(str(cache_dir)), compiles=True).render(state())
    conf = mine / "keepalived.conf.j2"
    conf.write_text("# edited\n" + conf.read_text())
    with pytest.raises(AssertionError, match="compiled a template the cache holds"):
        renderer([mine], TemplateCache(str(cache_dir)), compiles=False).render(state())
    text = renderer([mine], TemplateCache(str(cache_dir)), compiles=True).render(state())
    assert text["keepalived.conf"].startswith("# edited\n")


def test_other_environment_options_do_not_share_an_entry(tmp_path: Path) -> None:
    """Jinja keys an entry on the template's source alone; the same source compiled with
    other whitespace options is other code."""
    loader = jinja2.DictLoader({"t.j2": "{% if true %}\n  x\n{% endif %}\n"})
    plain = jinja2.Environment(loader=loader, bytecode_cache=TemplateCache(str(tmp_path)))
    assert plain.get_template("t.j2").render() == "\n  x\n"
    trimmed = jinja2.Environment(
        loader=loader,
        bytecode_cache=TemplateCache(str(tmp_path)),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    assert trimmed.get_template("t.j2").render() == "  x\n"


def test_a_corrupt_or_unwritable_cache_still_renders(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    expected = renderer(template_dirs(None), TemplateCache(str(cache_dir)), compiles=True).render(
        state()
    )
    for entry in cache_dir.iterdir():
        entry.write_bytes(entry.read_bytes()[:40])  # past Jinja's header, into the pickle
    corrupt = renderer(template_dirs(None), TemplateCache(str(cache_dir)), compiles=True)
    assert corrupt.render(state()) == expected
    gone = TemplateCache(str(tmp_path / "no-such-dir"))
    assert renderer(template_dirs(None), gone, compiles=True).render(state()) == expected


@pytest.mark.parametrize(
    ("mode", "link", "cached"),
    [
        (0o700, False, True),
        (0o1777, False, True),  # as /tmp: anyone may write, no one may rename another's
        (0o777, False, False),  # anyone could swap Jinja's directory for their own
        (0o700, True, False),  # a link someone may point elsewhere
    ],
)
def test_the_cache_lives_only_where_no_one_else_can_swap_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int, link: bool, cached: bool
) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    temp.chmod(mode)
    if link:
        (tmp_path / "link").symlink_to(temp)
        temp = tmp_path / "link"
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    cache = template_cache()
    assert (cache is not None) == cached
    if cache is not None:
        assert Path(cache.directory).parent == temp
        assert stat.S_IMODE(Path(cache.directory).stat().st_mode) == 0o700

"""Where the packaged templates are: the shell finds them, the core is handed them."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from pathlib import Path

import jinja2
from jinja2.bccache import Bucket

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


class TemplateCache(jinja2.FileSystemBytecodeCache):
    """Compiled templates kept from one run of the command to the next: Jinja's bytecode
    cache, in Jinja's per-user directory (which it makes 0700, and refuses when another
    user owns it).  Compiling the two templates was 14 ms of a 5,000-Service dry run.

    Jinja keys a compiled template on its name, file and source alone; this one adds what
    else the code compiled for the Renderer's environment (Jinja's own filters and tests,
    no extension) depends on: the Python and Jinja versions, the environment's class and
    its syntax and compile options.  An entry that cannot be read or written is no cache:
    rendering never fails for it."""

    def get_bucket(
        self, environment: jinja2.Environment, name: str, filename: str | None, source: str
    ) -> Bucket:
        options = (
            sys.version,
            jinja2.__version__,
            type(environment).__qualname__,
            environment.code_generator_class.__qualname__,
            *(environment.block_start_string, environment.block_end_string),
            *(environment.variable_start_string, environment.variable_end_string),
            *(environment.comment_start_string, environment.comment_end_string),
            *(environment.line_statement_prefix, environment.line_comment_prefix),
            *(environment.trim_blocks, environment.lstrip_blocks),
            *(environment.newline_sequence, environment.keep_trailing_newline),
            *(environment.autoescape, environment.optimized, environment.is_async),
            getattr(environment.finalize, "__qualname__", environment.finalize),
            tuple(sorted(environment.extensions)),
        )
        return super().get_bucket(environment, name, filename, f"{options!r}\n{source}")

    def load_bytecode(self, bucket: Bucket) -> None:
        try:
            super().load_bytecode(bucket)
        except Exception:  # a truncated or foreign file: compile instead
            bucket.reset()

    def dump_bytecode(self, bucket: Bucket) -> None:
        # a full or read-only disk: the next run compiles again
        with contextlib.suppress(OSError):
            super().dump_bytecode(bucket)


def template_cache() -> TemplateCache | None:
    """The per-user template cache in the system's temporary directory, or None when there
    is no safe place for one.

    An entry is unpickled and its code run, so no other user may be able to write it.
    Jinja checks its own directory (0700, ours); the path to it is checked here: every
    directory on it must be ours or root's, no symbolic link, and sticky wherever others
    may write (as /tmp is).  Otherwise another user could swap Jinja's directory for one
    of their own between Jinja's check and the read (root running a dry run with another
    user's TMPDIR, say)."""
    base = Path(tempfile.gettempdir()).absolute()
    if not all(_private(directory) for directory in (base, *base.parents)):
        return None
    try:
        return TemplateCache()  # Jinja's directory in ``base``, made and checked by Jinja
    except (OSError, RuntimeError):
        return None


def _private(directory: Path) -> bool:
    """Whether only this user or root can put another directory in ``directory``'s place
    or inside it."""
    try:
        info = os.lstat(directory)
    except OSError:
        return False
    if stat.S_ISLNK(info.st_mode) or info.st_uid not in (0, os.geteuid()):
        return False
    shared = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    return not shared or bool(info.st_mode & stat.S_ISVTX)

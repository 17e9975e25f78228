"""Install rendered files: temp write + fsync, validate, swap atomically, all or nothing.

For each file: write ``.<name>.vip-agent.tmp`` in the target directory with an explicit
mode (0600 for keepalived.conf, which may hold a VRRP password), fsync it, and run the
daemon's own checker on it.  Only when every changed file passed are they moved over
the live ones with ``os.replace`` and the directory fsynced; a file whose bytes did not
change is not touched at all (so nothing is reloaded).  A file that fails its check is
kept as ``<name>.failed`` for debugging and the live files stay as they were: the last
good configuration keeps running.  keepalived.conf and haproxy.cfg go in together so a
PROXY VIP never appears without its listener.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.validate import Validator


@dataclass(frozen=True)
class Target:
    name: str
    """The rendered file's name (``keepalived.conf``) and the key in render's output."""
    path: Path
    mode: int
    validate: Validator


@dataclass(frozen=True)
class ApplyResult:
    changed: frozenset[str]
    """Names of the files that were replaced (empty when nothing changed or on failure)."""
    errors: Mapping[str, str]
    """File name -> what its checker said, when validation failed."""

    @property
    def ok(self) -> bool:
        return not self.errors


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write and fsync ``path`` with exactly ``mode`` (whatever the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow it
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _current(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def replace_file(path: Path, data: bytes, mode: int) -> None:
    """Swap ``path`` for new contents atomically: readers see the old or the new, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_file(tmp, data, mode)
    os.replace(tmp, path)


def failed_path(path: Path) -> Path:
    return path.with_name(path.name + ".failed")


def apply(targets: list[Target], files: Mapping[str, str]) -> ApplyResult:
    """Validate every changed file, then install them all, or none."""
    pending: list[tuple[Target, Path]] = []
    errors: dict[str, str] = {}
    try:
        for target in targets:
            data = files[target.name].encode("utf-8")
            if _current(target.path) == data:
                continue
            target.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.path.with_name(f".{target.path.name}.vip-agent.tmp")
            write_file(tmp, data, target.mode)
            pending.append((target, tmp))
            # the checker sees the file in the target directory, where relative
            # paths in it resolve as they will for the daemon
            result = target.validate(tmp)
            if not result.ok:
                errors[target.name] = result.output or "rejected by its checker"
                os.replace(tmp, failed_path(target.path))
                pending.pop()
        if errors:
            return ApplyResult(changed=frozenset(), errors=errors)
        for target, tmp in pending:
            os.replace(tmp, target.path)
        for directory in {t.path.parent for t, _ in pending}:
            _fsync_dir(directory)
        for target, _ in pending:
            with contextlib.suppress(FileNotFoundError):
                failed_path(target.path).unlink()
        return ApplyResult(changed=frozenset(t.name for t, _ in pending), errors={})
    finally:
        for _, tmp in pending:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

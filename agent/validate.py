"""Run a daemon's own configuration checker on a file, and say what it answered.

A rendered file is only ever installed after its daemon accepted it.  Each daemon module
knows its checker's command line (agent.daemons.keepalived: ``keepalived --config-test``,
agent.daemons.haproxy: ``haproxy -c``); this module is the part they share: run the
command with a timeout and turn what happened into a :class:`CheckResult`.  The process
runner is injected so callers (and tests) choose how to run it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

Runner = Callable[[Sequence[str], float], "subprocess.CompletedProcess[str]"]


def run(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, stdin=None
    )


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    output: str
    """What the checker printed (stdout and stderr), for the error report."""


Validator = Callable[[Path], CheckResult]
"""A daemon's check of one file, as apply calls it (the file to check -> its verdict)."""


def check(argv: Sequence[str], *, runner: Runner = run, timeout: float = 30.0) -> CheckResult:
    """Run a checker; a missing binary or a hung checker is a rejection, not a crash."""
    try:
        done = runner(argv, timeout)
    except FileNotFoundError as err:
        return CheckResult(False, f"{argv[0]}: {err.strerror}")
    except subprocess.TimeoutExpired:
        return CheckResult(False, f"{argv[0]}: no answer within {timeout:g}s")
    output = "\n".join(part.strip() for part in (done.stdout, done.stderr) if part.strip())
    return CheckResult(done.returncode == 0, output)


@dataclass(frozen=True)
class Block:
    """One top-level section of a configuration file, with the comments before it."""

    kind: str
    """Its first word: ``virtual_server``, ``vrrp_instance``, ``listen``..."""
    text: str


Splitter = Callable[[str], "list[Block] | None"]
"""A daemon's file cut into its top-level sections, in order, every character kept (so
the blocks joined are the file); None when the file has a shape the splitter does not
know, which makes the check whole."""


class Incremental:
    """A daemon's checker run on what changed, not on the whole file every time.

    A file of thousands of virtual servers costs keepalived a third of a second to check
    (0.3 s at 5,000), on every change.  Blocks of the kinds in ``alone`` (keepalived's
    ``virtual_server``, haproxy's ``listen``) need nothing but the file's other blocks to
    be checked, and each block that passed once passes again beside the same other
    blocks.  So when a file differs from the last one that passed only in such blocks,
    the checker gets a small file: the other blocks, unchanged, plus the new or changed
    ones.  Blocks of the kinds in ``unneeded`` (keepalived's VRRP instances: a virtual
    server refers to none) are left out of it, though a change to one still makes the
    check whole.  A small file the checker refuses is checked again whole, and the whole
    file's verdict stands: leaving a section out can only cost time, never a wrong
    refusal.  Anything else (the first check, a changed VRRP instance or global section,
    a template or settings change that touches them, a file the splitter cannot cut) and
    every ``full_every`` seconds, it checks the whole file.
    """

    def __init__(
        self,
        check: Validator,
        split: Splitter,
        alone: frozenset[str],
        *,
        unneeded: frozenset[str] = frozenset(),
        full_every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.check, self.split, self.alone, self.unneeded = check, split, alone, unneeded
        self.full_every, self.clock = full_every, clock
        self.passed: list[Block] | None = None
        """The blocks of the last file that passed."""
        self.last_full = float("-inf")
        self.partial_checks = 0
        self.full_checks = 0
        self._last_cut: list[Block] | None = None

    def __call__(self, path: Path) -> CheckResult:
        try:
            blocks = self._cut(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            blocks = None  # the checker will say what is wrong with it
        small = None
        if blocks is not None and self.clock() - self.last_full < self.full_every:
            small = self._small(blocks)
        result = None if small is None else self._check_small(path, small)
        if result is None or not result.ok:
            self.full_checks += 1
            result = self.check(path)
            if result.ok:
                self.last_full = self.clock()
        if result.ok:
            self.passed = blocks
        return result

    def _check_small(self, path: Path, small: str) -> CheckResult:
        self.partial_checks += 1
        part = path.with_name(f".{path.name}.part")
        part.write_text(small, encoding="utf-8")
        part.chmod(path.stat().st_mode & 0o777)
        try:
            return self.check(part)
        finally:
            part.unlink(missing_ok=True)

    def _cut(self, text: str) -> list[Block] | None:
        """``split(text)``, cutting only what differs from the last file cut.

        Blocks the last file began and ended with, found again at the same place (a
        memory compare each), are taken as they are: a block boundary is where the
        splitter starts afresh, so what lies before it cannot change how it cuts what
        follows.  Only the middle is cut; a middle that does not end exactly where the
        kept tail begins (comments at its end would belong to the tail's first block)
        makes the cut whole.
        """
        last, self._last_cut = self._last_cut, None
        blocks = self.split(text) if last is None else _cut_between(text, last, self.split)
        self._last_cut = blocks
        return blocks

    def _small(self, blocks: list[Block]) -> str | None:
        """The file to check instead of ``blocks``, or None when only the whole will do."""
        if self.passed is None:
            return None
        fixed = [b.text for b in blocks if b.kind not in self.alone]
        if fixed != [b.text for b in self.passed if b.kind not in self.alone]:
            return None
        seen = {b.text for b in self.passed if b.kind in self.alone}
        new = [b.text for b in blocks if b.kind in self.alone and b.text not in seen]
        context = [b.text for b in blocks if b.kind not in self.alone | self.unneeded]
        return "".join(context) + "".join(new)


def _cut_between(text: str, last: list[Block], split: Splitter) -> list[Block] | None:
    """``split(text)`` given the blocks of the file cut before (see Incremental._cut)."""
    head, pos = 0, 0
    while head < len(last) and text.startswith(last[head].text, pos):
        pos += len(last[head].text)
        head += 1
    tail, end = len(last), len(text)
    while tail > head and end - len(last[tail - 1].text) >= pos:
        if not text.endswith(last[tail - 1].text, pos, end):
            break
        end -= len(last[tail - 1].text)
        tail -= 1
    middle = split(text[pos:end]) if pos < end else []
    if middle is None or (middle and tail < len(last) and not middle[-1].kind):
        return split(text)
    return [*last[:head], *middle, *last[tail:]]

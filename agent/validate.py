"""Run a daemon's own configuration checker on a file, and say what it answered.

A rendered file is only ever installed after its daemon accepted it.  Each daemon module
knows its checker's command line (agent.daemons.keepalived: ``keepalived --config-test``,
agent.daemons.haproxy: ``haproxy -c``); this module is the part they share: run the
command with a timeout and turn what happened into a :class:`CheckResult`.  The process
runner is injected so callers (and tests) choose how to run it.
"""

from __future__ import annotations

import subprocess
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

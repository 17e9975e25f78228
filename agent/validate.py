"""The daemons' own configuration checkers: ``keepalived -t -f`` and ``haproxy -c -f``.

A rendered file is only ever installed after its daemon accepted it.  The
process runner is injected so callers (and tests) choose how to run it;
``netns`` runs keepalived's check inside a network namespace, which is how a
host that lacks the configured interfaces can still check honestly.
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


def _check(argv: Sequence[str], runner: Runner, timeout: float) -> CheckResult:
    try:
        done = runner(argv, timeout)
    except FileNotFoundError as err:
        return CheckResult(False, f"{argv[0]}: {err.strerror}")
    except subprocess.TimeoutExpired:
        return CheckResult(False, f"{argv[0]}: no answer within {timeout:g}s")
    output = "\n".join(part.strip() for part in (done.stdout, done.stderr) if part.strip())
    return CheckResult(done.returncode == 0, output)


def keepalived_argv(
    path: Path, *, binary: str = "keepalived", netns: str | None = None
) -> list[str]:
    argv = [binary, "--config-test", "--use-file", str(path)]
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


def check_keepalived(
    path: Path,
    *,
    binary: str = "keepalived",
    netns: str | None = None,
    runner: Runner = run,
    timeout: float = 30.0,
) -> CheckResult:
    return _check(keepalived_argv(path, binary=binary, netns=netns), runner, timeout)


def check_haproxy(
    path: Path, *, binary: str = "haproxy", runner: Runner = run, timeout: float = 30.0
) -> CheckResult:
    return _check([binary, "-c", "-f", str(path)], runner, timeout)

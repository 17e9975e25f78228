"""Skip, or in CI fail, when a real part a test needs is missing.

Locally a test that needs root, a built guest or a built API server skips with the
reason.  CI sets VIP_AGENT_CI_STRICT=1 (CI runs as root and builds everything first),
and then the same condition fails the test: a skipped test never counts as a pass there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NoReturn

import pytest

from labkit.checkers import Checkers, ScratchNamespace, missing_binaries, root_skip_reason


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("VIP_AGENT_CI_STRICT") == "1":
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def require_binaries(*names: str) -> None:
    reason = missing_binaries(*names)
    if reason:
        unavailable(reason)


def checkers_fixture() -> Iterator[Checkers]:
    reason = root_skip_reason()
    if reason:
        unavailable(reason)
    require_binaries("keepalived", "haproxy")
    netns = ScratchNamespace(f"vipagent-chk-{os.getpid()}")
    checkers = Checkers(netns)
    try:
        yield checkers
    finally:
        checkers.close()
        netns.delete()

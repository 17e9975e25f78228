from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemons import Checkers, checkers_fixture

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def checkers() -> Iterator[Checkers]:
    """Real ``keepalived -t`` (in a scratch netns) and ``haproxy -c``."""
    yield from checkers_fixture()


@pytest.fixture
def lab_ready() -> None:
    """Root, namespaces and the real daemons a namespace lab needs (skip, or fail in CI)."""
    from tests.daemons import require_binaries, root_skip_reason
    from tests.requirements import unavailable

    reason = root_skip_reason()
    if reason:
        unavailable(reason)
    require_binaries("keepalived", "haproxy", "openssl", "curl")

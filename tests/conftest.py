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

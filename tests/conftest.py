from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemons import Checkers, checkers_fixture
from tests.netlab import Lab

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


@pytest.fixture
def pair(lab_ready: None) -> Iterator[Lab]:
    """Two nodes running ``vip-agent run`` in static mode with the control-plane VIP
    (192.0.2.10) and both as apiserver backends; yields once one of them holds the VIP."""
    from tests.netlab import Lab, agent_config, start_agent, wait_for

    vip = "192.0.2.10"
    with Lab(["n1", "n2"]) as lab:
        for host in lab.hosts.values():
            config = agent_config(
                host,
                control_plane_vip=vip,
                control_plane_backends=[h.address for h in lab.hosts.values()],
                advert_int=0.2,
            )
            start_agent(host, config)
        wait_for(lambda: any(h.has(vip) for h in lab.hosts.values()), timeout=15, what="a master")
        yield lab

"""Fixtures every tier may use, and the tier markers.

The suite is split into tiers by directory, each with a marker of the same name
(registered in pyproject.toml; ``--strict-markers`` refuses any other):

    unit        pure: translate, render, settings, parsers (no daemons, no root)
    functional  the daemons' own checkers and single real daemons on loopback
    lab         real keepalived/haproxy/agents in network namespaces (root)
    guest       IPVS in a qemu guest with Debian's kernel (root, built guest)
    kube        a real kube-apiserver 1.20 (built from Debian's sources)
    node        a real Kubernetes 1.20 node: control plane, containerd, kubelet, kube-proxy
    shipping    the artefacts users run: container, systemd unit, manifests

``make check`` runs lint, types and the unit tier (under a minute); ``make test`` runs
everything.  Shared harness code lives in labkit/ (also used by bench/), test-only
helpers in tests/support/.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit.apiserver import (
    AGENT_SA_USER,
    APISERVER_VERSION,
    BUILD_SCRIPT,
    LIMITED_SA_USER,
    NOBODY_USER,
    SA_GROUPS,
    ApiServer,
    cache_dir,
    find_binaries,
)
from labkit.checkers import Checkers
from labkit.netlab import Lab
from tests.support.cluster import Cluster
from tests.support.requirements import checkers_fixture, unavailable

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def checkers() -> Iterator[Checkers]:
    """Real ``keepalived -t`` (in a scratch netns) and ``haproxy -c``."""
    yield from checkers_fixture()


@pytest.fixture
def lab_ready() -> None:
    """Root, namespaces and the real daemons a namespace lab needs (skip, or fail in CI)."""
    from labkit.checkers import root_skip_reason
    from tests.support.requirements import require_binaries, unavailable

    reason = root_skip_reason()
    if reason:
        unavailable(reason)
    require_binaries("keepalived", "haproxy", "openssl", "curl")


@pytest.fixture(scope="session")
def bgp_ready() -> None:
    """Root, namespaces, BIRD and FRR's daemons for the BGP labs (skip, or fail in CI)."""
    from labkit.bgplab import FRR_BIN, FRR_DAEMONS
    from labkit.checkers import root_skip_reason
    from tests.support.requirements import require_binaries

    reason = root_skip_reason()
    if reason:
        unavailable(reason)
    require_binaries("bird", "birdc", "vtysh", "keepalived", "haproxy")
    missing = [d for d in FRR_DAEMONS if not (FRR_BIN / d).exists()]
    if missing:
        unavailable(f"FRR daemons missing in {FRR_BIN}: {', '.join(missing)}")


@pytest.fixture
def report(
    capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> Iterator[list[str]]:
    """Lines a test appends (what it measured) are printed past pytest's capture when it
    ends, each after the test's name."""
    lines: list[str] = []
    yield lines
    with capsys.disabled():
        for line in lines:
            print(f"\n{request.node.name}: {line}", end="")


@pytest.fixture
def pair(lab_ready: None, request: pytest.FixtureRequest) -> Iterator[Lab]:
    """Two nodes running ``vip-agent run`` in static mode with the control-plane VIP
    (192.0.2.10) and both as apiserver backends; yields once one of them holds the VIP.
    The lab's logs are kept when the test failed."""
    from labkit.netlab import Lab, agent_config, start_agent, wait_for

    vip = "192.0.2.10"
    failed_before = request.session.testsfailed
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
        lab.keep = lab.keep or request.session.testsfailed > failed_before


TIERS = ("unit", "functional", "lab", "guest", "kube", "node", "shipping")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test gets the marker of its tier, the directory it lives in."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(Path(__file__).parent).parts
        if parts and parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))


@pytest.fixture(scope="session")
def apiserver() -> Iterator[ApiServer]:
    """A real kube-apiserver 1.20 + etcd on 127.0.0.1 for the whole session.

    Tokens: ``apiserver.admin_token`` (system:masters),
    ``apiserver.token_for(NOBODY_USER)`` (no RBAC bindings), and for the ServiceAccount
    names ``AGENT_SA_USER`` and ``LIMITED_SA_USER`` (bound by whatever RBAC a test applies).
    Skips when the binaries are missing, or fails in CI (tests/support/requirements.py). A test
    that calls ``kill()`` must ``restart()`` before it ends.
    """
    binaries = find_binaries()
    if binaries is None:
        reason = (
            f"kube-apiserver {APISERVER_VERSION} (in {cache_dir()}) or etcd not found; "
            f"run {BUILD_SCRIPT} as root (builds it from Debian sources, about 5 minutes)"
        )
        unavailable(reason)
    with ApiServer(
        binaries=binaries,
        extra_tokens={
            secrets.token_hex(16): (NOBODY_USER, ()),
            secrets.token_hex(16): (AGENT_SA_USER, SA_GROUPS),
            secrets.token_hex(16): (LIMITED_SA_USER, SA_GROUPS),
        },
    ) as server:
        yield server


@pytest.fixture
def cluster(apiserver: ApiServer) -> Iterator[Cluster]:
    """Administrator access to the session's API server; Nodes it made are deleted after."""
    c = Cluster(apiserver)
    try:
        yield c
    finally:
        c.close()

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.kube.apiserver import (
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
from tests.kube.cluster import Cluster
from tests.requirements import unavailable


@pytest.fixture(scope="session")
def apiserver() -> Iterator[ApiServer]:
    """A real kube-apiserver 1.20 + etcd on 127.0.0.1 for the whole session.

    Tokens: ``apiserver.admin_token`` (system:masters),
    ``apiserver.token_for(NOBODY_USER)`` (no RBAC bindings), and for the ServiceAccount
    names ``AGENT_SA_USER`` and ``LIMITED_SA_USER`` (bound by whatever RBAC a test applies).
    Skips when the binaries are missing, or fails in CI (tests/requirements.py). A test
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

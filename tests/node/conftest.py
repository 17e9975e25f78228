"""The node tier: a real Kubernetes 1.20 node (labkit.kubenode) for the whole session.

One node serves every test in the tier: bringing it up costs about half a minute, and the
tests only add objects they name themselves. Root and ``scripts/build-kube-node`` are
needed; without them the tier skips locally and fails in CI.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from labkit.checkers import root_skip_reason
from labkit.kubenode import KubeNode, missing_parts
from tests.support.requirements import unavailable


@pytest.fixture(scope="session")
def kube_node(request: pytest.FixtureRequest) -> Iterator[KubeNode]:
    """A Ready node with its control plane; its lab dir (the logs) is kept when a test of
    the session failed."""
    reason = root_skip_reason() or missing_parts()
    if reason:
        unavailable(reason)
    failed_before = request.session.testsfailed
    node = KubeNode().start()
    try:
        yield node
    finally:
        node.close(keep=request.session.testsfailed > failed_before)

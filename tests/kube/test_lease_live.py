"""Leader election on a real coordination.k8s.io/v1 Lease (kube-apiserver 1.20).

One agent at a time hands out pool addresses and reports Events; these tests prove the
election the way client-go's own tests do: one holder, a takeover only after the holder
stopped renewing for the lease duration, at once after a release, and never two.
"""

from __future__ import annotations

import time

from agent.lease import LeaseElector, LeaseTimings
from agent.sources.kube import KubeApi
from tests.support.cluster import Cluster, eventually

FAST = LeaseTimings(duration=2.0, renew_deadline=1.5, retry_period=0.2)


def elector(cluster: Cluster, namespace: str, node: str) -> LeaseElector:
    api = KubeApi(cluster.apiserver.api_client())
    return LeaseElector(
        api=api, namespace=namespace, name="vip-agent-ipam", node_name=node, timings=FAST
    )


def test_one_holder_takeover_after_expiry_and_at_once_after_release(cluster: Cluster) -> None:
    ns = cluster.namespace("lease")
    a, b = elector(cluster, ns, "node-a"), elector(cluster, ns, "node-b")
    assert a.try_once() is True
    assert b.try_once() is False and b.holder == a.identity
    assert a.identity.startswith("node-a_")
    lease = a.api.request("GET", a.path)
    assert lease["spec"]["holderIdentity"] == a.identity
    assert lease["spec"]["leaseDurationSeconds"] == 2

    # a renews: b never takes over while a is alive
    deadline = time.monotonic() + 3 * FAST.duration
    while time.monotonic() < deadline:
        assert a.try_once() is True
        assert b.try_once() is False
        time.sleep(FAST.retry_period)

    # a dies (stops renewing, no release): b takes over once a's record is stale
    died = time.monotonic()
    while not b.try_once():
        assert time.monotonic() - died < FAST.duration + 2, "no takeover after expiry"
        time.sleep(FAST.retry_period)
    waited = time.monotonic() - died
    assert FAST.duration - FAST.retry_period <= waited < FAST.duration + 2
    assert not a.is_leader(), "a holder that stopped renewing stops acting (renew deadline)"
    assert a.try_once() is False, "the old holder sees the new one and steps down"
    lease = a.api.request("GET", a.path)
    assert lease["spec"]["holderIdentity"] == b.identity
    assert lease["spec"]["leaseTransitions"] == 1

    # b releases on a clean stop: a takes over at once
    b.stop(release=True)
    assert a.try_once() is True


def test_a_holder_that_cannot_renew_stops_acting_within_the_renew_deadline(
    cluster: Cluster,
) -> None:
    ns = cluster.namespace("lease")
    a = elector(cluster, ns, "node-a")
    assert a.try_once() and a.is_leader()
    cluster.apiserver.kill()
    try:
        eventually(lambda: not a.is_leader(), what="leader steps down", timeout=5)
        assert a.try_once() is False
    finally:
        cluster.apiserver.restart()
    eventually(lambda: a.try_once(), what="leader again after the API server returns")


def test_two_agents_racing_for_a_free_lease_never_both_win(cluster: Cluster) -> None:
    ns = cluster.namespace("lease")
    for _ in range(5):
        contenders = [elector(cluster, ns, f"node-{i}") for i in range(3)]
        won = [c for c in contenders if c.try_once()]
        assert len(won) == 1
        won[0].stop(release=True)

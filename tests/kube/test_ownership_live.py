"""Address ownership and allocation with real agents on a real kube-apiserver 1.20.

Three ``vip-agent run`` processes (labkit/cluster_agents.py: distinct node names,
``--daemons none``, the real checkers) share one cluster: they elect one of themselves
with the Lease, which hands out pool addresses and reports Events; the others take over
when it dies.  Every address handed out is in the pool, distinct and announced by every
surviving agent's keepalived.conf; a tenant cannot take another namespace's address, a
node's address or an older Service's VIP.
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path
from typing import Any

from agent.core.model import Allocation
from agent.core.translate import ANNOTATION_LB_IPS
from agent.sources.kube import ApiError, KubeApi
from agent.writeback import AddressWriter
from labkit import objects
from labkit.cluster_agents import ClusterAgent, ClusterAgents
from tests.support.cluster import Cluster, eventually
from tests.support.samples import sample

POOL_FIRST, POOL_LAST = "203.0.113.10", "203.0.113.45"  # 36 addresses
GLOBAL = "203.0.113.100-203.0.113.110"
TIMINGS = {"lease_duration": 2.0, "lease_renew_deadline": 1.5, "lease_retry_period": 0.3}


def lease_holder(api: KubeApi, ns: str) -> str | None:
    try:
        lease = api.request(
            "GET", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/vip-agent-ipam"
        )
    except ApiError:
        return None
    return (lease.get("spec") or {}).get("holderIdentity")


def address_of(cluster: Cluster, ns: str, name: str) -> str | None:
    service = cluster.read("Service", ns, name)
    return (service["metadata"].get("annotations") or {}).get(ANNOTATION_LB_IPS)


def lb(name: str, ns: str, address: str | None = None) -> dict[str, Any]:
    notes = {ANNOTATION_LB_IPS: address} if address else None
    return objects.service(
        name, [objects.port("http", 80)], namespace=ns, annotations=notes, type="LoadBalancer"
    )


def events_for(cluster: Cluster, ns: str, name: str) -> list[dict[str, Any]]:
    return [e for e in cluster.events(ns) if e["involvedObject"].get("name") == name]


def agents_for(cluster: Cluster, ns: str, nodes: list[str], tmp_path: Path) -> list[ClusterAgent]:
    settings = {
        "configmap": f"{ns}/vip-configmap",
        "pool_configmap": f"{ns}/kubevip",
        "lease": f"{ns}/vip-agent-ipam",
        **TIMINGS,
    }
    return [
        ClusterAgent(apiserver=cluster.apiserver, node_name=n, root=tmp_path, settings=settings)
        for n in nodes
    ]


def cluster_nodes(cluster: Cluster, ns: str, count: int) -> list[str]:
    nodes = [f"{ns}-n{i}" for i in range(1, count + 1)]
    for i, name in enumerate(nodes):
        cluster.create(objects.node(name, f"198.51.100.{11 + i}"))
    return nodes


def test_agents_allocate_from_pools_and_the_next_holder_carries_on(
    cluster: Cluster, tmp_path: Path
) -> None:
    ns = cluster.namespace("ipam")
    api = KubeApi(cluster.apiserver.api_client())
    nodes = cluster_nodes(cluster, ns, 3)
    cluster.create(
        objects.configmap(
            {f"range-{ns}": f"{POOL_FIRST}-{POOL_LAST}", "range-global": GLOBAL},
            namespace=ns,
            name="kubevip",
        )
    )
    pool = {ipaddress.ip_address(int(ipaddress.ip_address(POOL_FIRST)) + i) for i in range(36)}
    with ClusterAgents(agents_for(cluster, ns, nodes, tmp_path)) as agents:
        eventually(lambda: lease_holder(api, ns) is not None, what="a Lease holder", timeout=20)
        names = [f"svc-{i:02d}" for i in range(30)]
        for name in names:
            cluster.create(lb(name, ns))
        eventually(
            lambda: all(address_of(cluster, ns, n) for n in names),
            what="30 Services allocated",
            timeout=30,
        )
        given = {n: ipaddress.ip_address(address_of(cluster, ns, n) or "") for n in names}
        assert len(set(given.values())) == 30, "distinct addresses"
        assert set(given.values()) <= pool, "all in the namespace's pool"
        assert cluster.read("Service", ns, "svc-00")["spec"]["loadBalancerIP"] == str(
            given["svc-00"]
        )

        # the holder dies without a word: another agent takes the Lease and carries on
        first = agents.holder(lease_holder(api, ns))
        assert first is not None
        first.kill()
        more = [f"more-{i}" for i in range(6)]
        for name in more:
            cluster.create(lb(name, ns))
        eventually(
            lambda: all(address_of(cluster, ns, n) for n in more),
            what="allocated by the next holder",
            timeout=30,
        )
        second = agents.holder(lease_holder(api, ns))
        assert second is not None and second is not first
        given.update({n: ipaddress.ip_address(address_of(cluster, ns, n) or "") for n in more})
        assert len(set(given.values())) == 36 and set(given.values()) == pool

        # the pool is full: the next Service waits, and says why
        cluster.create(lb("waiting", ns))
        eventually(
            lambda: any(
                e["reason"] == "AllocationFailed" for e in events_for(cluster, ns, "waiting")
            ),
            what="an Event on the pending Service",
            timeout=30,
        )
        assert address_of(cluster, ns, "waiting") is None
        # two go away: the waiting one gets a freed address. Which one depends on whether
        # the holder's pass saw both deletions (then the lower) or only the first: a lone
        # change is applied at once, so the first address freed may be given at once.
        cluster.delete("Service", ns, "svc-03")
        cluster.delete("Service", ns, "svc-07")
        freed = {str(given["svc-03"]), str(given["svc-07"])}
        eventually(
            lambda: address_of(cluster, ns, "waiting") in freed,
            what="a freed address allocated",
            timeout=30,
        )

        # every surviving agent announces every allocated address
        live = {n for n in names if n not in ("svc-03", "svc-07")} | set(more) | {"waiting"}
        wanted = {address_of(cluster, ns, n) for n in live}
        for agent in agents.agents.values():
            if agent is first:
                continue
            eventually(
                lambda agent=agent: all(f"{a}/32 dev" in agent.keepalived_conf() for a in wanted),
                what=f"{agent.node_name} announces every allocated address",
                timeout=20,
            )


def test_a_tenant_cannot_take_what_is_not_theirs(cluster: Cluster, tmp_path: Path) -> None:
    ns = cluster.namespace("own")
    tenant = cluster.namespace("tenant")
    team = cluster.namespace("team")
    nodes = cluster_nodes(cluster, ns, 2)
    cluster.create(
        objects.configmap(
            {f"range-{ns}": f"{POOL_FIRST}-{POOL_LAST}", "range-global": GLOBAL},
            namespace=ns,
            name="kubevip",
        )
    )
    cluster.create(lb("owner", team, "203.0.113.100"))
    time.sleep(1.1)  # creationTimestamp has whole seconds: the owner is older
    cluster.create(lb("theirs", tenant, "203.0.113.10"))  # the other namespace's pool
    cluster.create(lb("node", tenant, "198.51.100.11"))  # a node's address
    cluster.create(lb("steal", tenant, "203.0.113.100"))  # an older Service's VIP
    cluster.create(lb("fine", tenant, "203.0.113.101"))
    expected = {
        "theirs": "203.0.113.10 is in no pool of namespace",
        "node": f"198.51.100.11 is an address of Node {nodes[0]}; never a VIP",
        "steal": f"203.0.113.100 belongs to Service {team}/owner",
    }
    with ClusterAgents(agents_for(cluster, ns, nodes, tmp_path)) as agents:
        for name, text in expected.items():
            eventually(
                lambda name=name, text=text: any(
                    text in e["message"] for e in events_for(cluster, tenant, name)
                ),
                what=f"an Event on {tenant}/{name}",
                timeout=30,
            )
        for agent in agents.agents.values():
            eventually(
                lambda agent=agent: "203.0.113.101/32" in agent.keepalived_conf(),
                what="the tenant's own address announced",
                timeout=20,
            )
            conf = agent.keepalived_conf()
            assert "203.0.113.100/32" in conf  # the owner's, once
            assert "198.51.100.11/32" not in conf and "203.0.113.10/32" not in conf
            assert f"# Service {tenant}/steal" not in conf


def ingress_of(cluster: Cluster, ns: str, name: str) -> list[str]:
    status = cluster.read("Service", ns, name).get("status") or {}
    return [i.get("ip") for i in (status.get("loadBalancer") or {}).get("ingress") or []]


def test_status_is_level_triggered(cluster: Cluster, tmp_path: Path) -> None:
    """No node holds a VIP here (--daemons none): the preferred owner writes the ingress;
    it is written again for a Service deleted and created again under the same name, and
    restored when someone clears it by hand."""
    ns = cluster.namespace("status")
    nodes = cluster_nodes(cluster, ns, 3)
    with ClusterAgents(agents_for(cluster, ns, nodes, tmp_path)):
        cluster.create(lb("web", ns, "203.0.113.120"))
        eventually(lambda: ingress_of(cluster, ns, "web") == ["203.0.113.120"], what="ingress")
        cluster.delete("Service", ns, "web")
        eventually(lambda: not _exists(cluster, ns, "web"), what="deleted")
        cluster.create(lb("web", ns, "203.0.113.120"))
        eventually(
            lambda: ingress_of(cluster, ns, "web") == ["203.0.113.120"],
            what="ingress of the re-created Service",
        )
        cluster.patch_service_status(ns, "web", {"status": {"loadBalancer": {"ingress": None}}})
        assert ingress_of(cluster, ns, "web") == []
        eventually(
            lambda: ingress_of(cluster, ns, "web") == ["203.0.113.120"],
            what="ingress restored after a manual clear",
        )


def _exists(cluster: Cluster, ns: str, name: str) -> bool:
    try:
        cluster.read("Service", ns, name)
    except Exception:  # kubernetes ApiException 404
        return False
    return True


def test_events_from_agents_on_some_nodes_and_none_duplicated_by_restarts(
    cluster: Cluster, tmp_path: Path
) -> None:
    ns = cluster.namespace("events")
    nodes = cluster_nodes(cluster, ns, 3)
    cluster.create(lb("bad", ns, "127.0.0.9"))
    cluster.create(lb("node", ns, "198.51.100.12"))
    agents = agents_for(cluster, ns, nodes[:2], tmp_path)  # no agent on the third Node
    with ClusterAgents(agents) as running:
        for name in ("bad", "node"):
            eventually(
                lambda name=name: len(events_for(cluster, ns, name)) == 1,
                what=f"an Event on {name}",
                timeout=20,
            )
        first = {n: events_for(cluster, ns, n)[0]["metadata"]["name"] for n in ("bad", "node")}
        # every agent restarts (a rollout): the same problems are the same Events
        for agent in running.agents.values():
            agent.stop()
        for agent in running.agents.values():
            agent.start()
        api = KubeApi(cluster.apiserver.api_client())
        eventually(lambda: lease_holder(api, ns) is not None, what="a new holder", timeout=20)
        time.sleep(3)  # several write-back passes of the new holder
        for name in ("bad", "node"):
            found = events_for(cluster, ns, name)
            assert [e["metadata"]["name"] for e in found] == [first[name]], found


def test_an_address_still_in_flight_is_never_given_to_another_service(cluster: Cluster) -> None:
    """The watch has not shown a's and b's new addresses yet when the next pass plans; a
    newcomer created in the same second may sort first (uid order) and be planned a's
    address.  The writer holds back whatever names an address in flight for another
    Service; a replan of a written Service fails on its resourceVersion.  Found by
    bench/allocation_bench.py (duplicates in a burst of 100)."""
    ns = cluster.namespace("inflight")
    api = KubeApi(cluster.apiserver.api_client())
    version = {}
    for name in ("a", "b", "c"):
        version[name] = cluster.create(lb(name, ns))["metadata"]["resourceVersion"]
    ip = ipaddress.ip_address

    def plan(*pairs: tuple[str, str]) -> list[Allocation]:
        return [Allocation((ns, n), (ip(a),), version[n]) for n, a in pairs]

    writer = AddressWriter(api=api)
    assert len(writer.apply(plan(("a", "203.0.113.1"), ("b", "203.0.113.2")))) == 2
    writer.apply(plan(("c", "203.0.113.1"), ("a", "203.0.113.2"), ("b", "203.0.113.3")))
    assert address_of(cluster, ns, "a") == "203.0.113.1"
    assert address_of(cluster, ns, "b") == "203.0.113.2"
    assert address_of(cluster, ns, "c") is None, "waits for the watch, never a duplicate"
    # a's replan names b's address (in flight): held back; b's stale replan fails on its
    # resourceVersion
    assert results_of(writer, "conflict") == 1


def results_of(writer: AddressWriter, result: str) -> float:
    return sample(writer.registry, "vip_agent_allocations_total", result=result)

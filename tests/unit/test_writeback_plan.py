"""Who writes a LoadBalancer ingress, decided from cluster state alone (no server needed).

These are pure functions of a Snapshot and translate's output; the API side of write-back
runs against the real server in test_writeback_live.py.
"""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

from agent.core.model import Reason, Rejection
from agent.core.snapshot import Snapshot
from agent.core.translate import ANNOTATION_LB_IPS, translate
from agent.settings import Settings
from agent.sources.kube import KubeApi
from agent.writeback import (
    EventRecorder,
    IngressWriter,
    TokenBucket,
    event_reason,
    plan_ingress,
    rendezvous_winner,
)
from labkit import objects
from tests.support.samples import results

SETTINGS = Settings(spread=True)
NODES = ("node-a", "node-b", "node-c")


def lb(name: str, vips: str | None, ingress: list[str] | None = None, **spec: Any) -> Any:
    svc = objects.service(
        name,
        [objects.port("http", 80)],
        annotations={ANNOTATION_LB_IPS: vips} if vips is not None else None,
        type="LoadBalancer",
        **spec,
    )
    if ingress:
        svc["status"] = {"loadBalancer": {"ingress": [{"ip": ip} for ip in ingress]}}
    return svc


def snapshot(*services: Any, nodes: tuple[str, ...] = NODES) -> Snapshot:
    objs = [objects.node(n, f"198.51.100.{i + 1}") for i, n in enumerate(nodes)]
    return Snapshot.from_objects([*objs, *services])


def plan(snap: Snapshot, node: str, held: set[Any] | None) -> list[tuple[str, tuple[str, ...]]]:
    state = translate(snap, SETTINGS, node_name=node, interface="eth0")
    changes = plan_ingress(snapshot=snap, state=state, node_name=node, held_vips=held)
    return [(c.service[1], c.ingress) for c in changes]


def test_the_holder_of_the_lowest_vip_writes_all_of_them() -> None:
    snap = snapshot(lb("web", "192.0.2.9, 192.0.2.5"))
    low = ip_address("192.0.2.5")
    state = translate(snap, SETTINGS, node_name="node-a", interface="eth0")
    preferred = rendezvous_winner(NODES, next(i.name for i in state.instances if low in i.vips))
    holder = next(n for n in NODES if n != preferred)
    both = [("web", ("192.0.2.5", "192.0.2.9"))]
    assert plan(snap, holder, {low}) == both
    # the preferred owner writes too (the same list), so the ingress is right even when
    # no node holds the VIP yet; the third node neither holds it nor is preferred
    assert plan(snap, preferred, set()) == both
    third = next(n for n in NODES if n not in (holder, preferred))
    assert plan(snap, third, {ip_address("192.0.2.9")}) == []  # holds only the other one
    assert plan(snap, third, set()) == []


def test_without_vrrp_facts_the_preferred_owner_writes() -> None:
    snap = snapshot(lb("web", "192.0.2.5"))
    state = translate(snap, SETTINGS, node_name="node-a", interface="eth0")
    instance = next(i.name for i in state.instances if ip_address("192.0.2.5") in i.vips)
    winner = rendezvous_winner(NODES, instance)
    writers = [n for n in NODES if plan(snap, n, None)]
    assert writers == [winner]


def test_nothing_when_the_ingress_is_already_right() -> None:
    snap = snapshot(lb("web", "192.0.2.5", ingress=["192.0.2.5"]))
    assert all(plan(snap, n, {ip_address("192.0.2.5")}) == [] for n in NODES)
    assert all(plan(snap, n, None) == [] for n in NODES)


def test_a_rejected_vip_is_cleared_by_one_node() -> None:
    snap = snapshot(lb("web", "127.0.0.5", ingress=["127.0.0.5"]))
    plans = {n: plan(snap, n, set()) for n in NODES}
    assert sorted(p for p in plans.values() if p) == [[("web", ())]]


def test_services_not_asking_and_nodes_not_eligible_do_nothing() -> None:
    other = lb("other", None, ingress=["198.51.100.99"])  # another controller's
    plain = objects.service("plain", [objects.port("http", 80)], loadBalancerIP="192.0.2.7")
    snap = snapshot(other, plain)
    assert all(plan(snap, n, None) == [] for n in NODES)
    state = translate(snap, SETTINGS, node_name="node-a", interface="eth0")
    assert state.service_vips == ()  # loadBalancerIP counts only on type LoadBalancer
    # a node outside node_selector renders no service VIP and must not clear anything
    settings = Settings(node_selector="pool=vip")
    snap = snapshot(lb("web", "192.0.2.5", ingress=["192.0.2.5"]))
    state = translate(snap, settings, node_name="node-a", interface="eth0")
    assert plan_ingress(snapshot=snap, state=state, node_name="node-a", held_vips=None) == []


def test_eligibility_follows_the_state_of_each_pass() -> None:
    """Who may write is what translate decided for that pass: a config reload that
    changes node_selector takes effect with the next state, nothing is cached."""
    snap = snapshot(lb("web", "192.0.2.5"), nodes=("node-a",))
    before = translate(snap, SETTINGS, node_name="node-a", interface="eth0")
    after = translate(
        snap, Settings(node_selector="pool=vip"), node_name="node-a", interface="eth0"
    )
    assert plan_ingress(snapshot=snap, state=before, node_name="node-a", held_vips=None) != []
    assert plan_ingress(snapshot=snap, state=after, node_name="node-a", held_vips=None) == []


def test_translate_records_what_each_service_asks_for() -> None:
    """Write-back reads the requested VIPs from translate (one parser, not two)."""
    snap = snapshot(
        lb("a", "192.0.2.1,bogus, 2001:db8::1"), lb("b", None, loadBalancerIP="192.0.2.2")
    )
    state = translate(snap, SETTINGS, node_name="node-a", interface="eth0")
    assert [(s.service, s.requested) for s in state.service_vips] == [
        (("default", "a"), (ip_address("192.0.2.1"), ip_address("2001:db8::1"))),
        (("default", "b"), (ip_address("192.0.2.2"),)),
    ]


def test_event_reasons() -> None:
    bad = Reason.BAD_ADDRESS
    assert (
        event_reason(Rejection("ConfigMap", "a/b", "x", "not an IP address", bad)) == "InvalidVIP"
    )
    key = f"annotations[{ANNOTATION_LB_IPS}]"
    assert event_reason(Rejection("Service", "a/b", key, "bad", bad)) == "InvalidVIP"
    port_name = Rejection("Service", "a/b", "spec.ports[0].name", "bad", Reason.BAD_PORT)
    assert event_reason(port_name) == "Rejected"


def test_token_bucket() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=1 / 6, burst=2, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    now[0] += 6
    assert [bucket.take() for _ in range(2)] == [True, False]


def unreachable_api() -> KubeApi:
    from kubernetes import client

    from labkit.ports import free_ports

    configuration = client.Configuration(host=f"http://127.0.0.1:{free_ports(1)[0]}")
    configuration.proxy = None
    configuration.retries = False
    return KubeApi(client.ApiClient(configuration), connect_timeout=1)


def test_an_unreachable_server_ends_the_pass_after_one_try() -> None:
    snap = snapshot(lb("a", "192.0.2.5"), lb("b", "192.0.2.6"), nodes=("node-a",))
    state = translate(snap, SETTINGS, node_name="node-a", interface="eth0")
    writer = IngressWriter(api=unreachable_api(), node_name="node-a")
    assert writer.sync(snapshot=snap, state=state, held_vips=None) == []
    assert results(writer, "failed") == 1 and results(writer, "ok") == 0
    recorder = EventRecorder(api=unreachable_api(), node_name="node-a")
    rejections = [
        Rejection("Service", "default/a", "x", "one", Reason.BAD_ENTRY),
        Rejection("Service", "default/b", "x", "two", Reason.BAD_ENTRY),
    ]
    recorder.record(rejections, snap)
    assert results(recorder, "failed") == 1 and results(recorder, "created") == 0

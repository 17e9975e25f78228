"""Write-back against a real kube-apiserver 1.20: LoadBalancer ingress and Events.

Two agents (nodes A and B of one test's labelled Nodes) share one KubeSource here: they
see the same cluster, and each has its own IngressWriter and translate output, which is
what separate agents would have.
"""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

from agent.core.model import Reason, Rejection
from agent.core.translate import ANNOTATION_LB_IPS
from agent.sources.kube import KubeApi, KubeSource
from agent.writeback import (
    EventRecorder,
    IngressWriter,
    WriteBack,
    current_ingress,
    rendezvous_winner,
)
from tests.support.cluster import Cluster, Scene, eventually, running, source_for
from tests.support.samples import results

VIP = "192.0.2.70"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lb_scene(cluster: Cluster) -> Scene:
    scene = Scene(cluster)
    scene.add_node(f"{scene.ns}-b", "198.51.100.2")
    scene.web("lb", type="LoadBalancer")
    scene.cluster.patch(
        "Service", scene.ns, "lb", {"metadata": {"annotations": {ANNOTATION_LB_IPS: VIP}}}
    )
    return scene


def ingress(cluster: Cluster, scene: Scene) -> tuple[str, ...]:
    return current_ingress(cluster.read("Service", scene.ns, "lb"))


def seen_ingress(source: KubeSource, scene: Scene) -> tuple[str, ...]:
    return current_ingress(source.snapshot().services[(scene.ns, "lb")])


def sync(
    writer: IngressWriter, source: KubeSource, scene: Scene, node: str, held: Any
) -> list[Any]:
    return writer.sync(
        snapshot=source.snapshot(),
        state=scene.state(source, node),
        held_vips=held,
    )


def test_the_holder_writes_once_and_failover_causes_no_churn(cluster: Cluster) -> None:
    scene = lb_scene(cluster)
    nodes = (scene.me, f"{scene.ns}-b")
    api = KubeApi(cluster.apiserver.api_client())
    vip = ip_address(VIP)
    source = source_for(cluster.apiserver, (scene.ns, "vip-configmap"))
    with running(source):
        eventually(lambda: (scene.ns, "lb") in source.snapshot().services, what="service seen")
        state = scene.state(source)
        instance = next(i.name for i in state.instances if vip in (*i.vips, *i.excluded_vips))
        # the node keepalived prefers writes too; the other one writes only while it holds
        preferred = rendezvous_winner(nodes, instance)
        other = next(n for n in nodes if n != preferred)
        writer_p = IngressWriter(api=api, node_name=str(preferred))
        writer_o = IngressWriter(api=api, node_name=other)
        assert sync(writer_o, source, scene, other, set()) == []  # neither holds nor preferred
        done = sync(writer_o, source, scene, other, {vip})
        assert [(c.service, c.ingress) for c in done] == [((scene.ns, "lb"), (VIP,))]
        assert ingress(cluster, scene) == (VIP,)
        # before the watch delivers our own write, a second pass does not repeat it
        sync(writer_o, source, scene, other, {vip})
        eventually(lambda: seen_ingress(source, scene) == (VIP,), what="own write seen")
        for _ in range(3):
            assert sync(writer_o, source, scene, other, {vip}) == []
        # failover: the preferred node holds the VIP now; the ingress is already right
        assert sync(writer_p, source, scene, str(preferred), {vip}) == []
        assert sync(writer_o, source, scene, other, set()) == []
        assert results(writer_o, "ok") == 1 and results(writer_p, "ok") == 0
        rv = cluster.read("Service", scene.ns, "lb")["metadata"]["resourceVersion"]
        assert source.snapshot().services[(scene.ns, "lb")]["metadata"]["resourceVersion"] == rv


def test_without_vrrp_facts_exactly_one_node_writes(cluster: Cluster) -> None:
    scene = lb_scene(cluster)
    nodes = [scene.me, f"{scene.ns}-b"]
    api = KubeApi(cluster.apiserver.api_client())
    writers = {n: IngressWriter(api=api, node_name=n) for n in nodes}
    source = source_for(cluster.apiserver, (scene.ns, "vip-configmap"))
    with running(source):
        eventually(lambda: (scene.ns, "lb") in source.snapshot().services, what="service seen")
        state = scene.state(source)
        vip = ip_address(VIP)
        instance = next(i.name for i in state.instances if vip in (*i.vips, *i.excluded_vips))
        winner = rendezvous_winner(nodes, instance)
        wrote = {n: bool(sync(w, source, scene, n, None)) for n, w in writers.items()}
        assert wrote == {n: n == winner for n in nodes}
        assert ingress(cluster, scene) == (VIP,)


def test_ingress_follows_the_vip_and_is_cleared_when_it_goes(cluster: Cluster) -> None:
    scene = lb_scene(cluster)
    ns, a = scene.ns, scene.me
    api = KubeApi(cluster.apiserver.api_client())
    writer = IngressWriter(api=api, node_name=a)
    source = source_for(cluster.apiserver, (ns, "vip-configmap"))
    with running(source):
        eventually(lambda: (ns, "lb") in source.snapshot().services, what="service seen")
        sync(writer, source, scene, a, {ip_address(VIP)})
        assert ingress(cluster, scene) == (VIP,)

        # the VIP changes: the ingress follows (this node holds the new one)
        cluster.patch(
            "Service", ns, "lb", {"metadata": {"annotations": {ANNOTATION_LB_IPS: "192.0.2.71"}}}
        )
        eventually(
            lambda: bool(sync(writer, source, scene, a, {ip_address("192.0.2.71")})),
            what="ingress updated",
        )
        assert ingress(cluster, scene) == ("192.0.2.71",)
        eventually(lambda: seen_ingress(source, scene) == ("192.0.2.71",), what="seen")

        # the Service stops asking: the node that wrote clears what it wrote
        cluster.patch("Service", ns, "lb", {"metadata": {"annotations": {ANNOTATION_LB_IPS: None}}})
        eventually(
            lambda: bool(sync(writer, source, scene, a, set())) or not ingress(cluster, scene),
            what="ingress cleared",
        )
        assert ingress(cluster, scene) == ()

        # a VIP translate rejects (loopback): it still asks, nothing is served, so cleared
        cluster.patch_service_status(
            ns, "lb", {"status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.5"}]}}}
        )
        cluster.patch(
            "Service", ns, "lb", {"metadata": {"annotations": {ANNOTATION_LB_IPS: "127.0.0.5"}}}
        )
        eventually(
            lambda: (
                any(r.code is Reason.FORBIDDEN_ADDRESS for r in scene.state(source).rejections)
                and seen_ingress(source, scene) == ("127.0.0.5",)
            ),
            what="rejected VIP seen",
        )
        writers = {n: IngressWriter(api=api, node_name=n) for n in (a, f"{ns}-b")}
        for node, w in writers.items():
            sync(w, source, scene, node, set())
        assert ingress(cluster, scene) == ()
        assert sum(results(w, "ok") for w in writers.values()) == 1


def test_an_ingress_this_agent_did_not_write_is_left_alone(cluster: Cluster) -> None:
    scene = Scene(cluster)
    ns = scene.ns
    scene.web("other", type="LoadBalancer")  # no VIP asked of vip-agent
    cluster.patch_service_status(
        ns, "other", {"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.99"}]}}}
    )
    api = KubeApi(cluster.apiserver.api_client())
    writer = IngressWriter(api=api, node_name=scene.me)
    source = source_for(cluster.apiserver, (ns, "vip-configmap"))
    with running(source):
        eventually(lambda: (ns, "other") in source.snapshot().services, what="service seen")
        for held in (None, set(), {ip_address("198.51.100.99")}):
            assert sync(writer, source, scene, scene.me, held) == []
    assert current_ingress(cluster.read("Service", ns, "other")) == ("198.51.100.99",)


def own(rejections: tuple[Rejection, ...], ns: str) -> tuple[Rejection, ...]:
    """This test's rejections (Services of other tests live in the same cluster)."""
    return tuple(r for r in rejections if r.obj.startswith(f"{ns}/"))


def events_of(cluster: Cluster, ns: str) -> list[dict[str, Any]]:
    return [e for e in cluster.events(ns) if e["source"].get("component") == "vip-agent"]


def test_events_are_deduplicated_and_counted(cluster: Cluster) -> None:
    scene = Scene(cluster)
    ns = scene.ns
    scene.configmap({"not-an-ip": ""})
    clock = Clock()
    api = KubeApi(cluster.apiserver.api_client())
    recorder = EventRecorder(
        api=api, node_name=scene.me, clock=clock, per_minute=10, repeat_after=600
    )
    source = source_for(cluster.apiserver, (ns, "vip-configmap"))
    with running(source):
        snapshot = source.snapshot()
        rejections = own(scene.state(source).rejections, ns)
        assert [r.kind for r in rejections] == ["ConfigMap"]
        for _ in range(20):
            recorder.record(rejections, snapshot)
        events = events_of(cluster, ns)
        assert len(events) == 1
        event = events[0]
        uid = snapshot.configmaps[(ns, "vip-configmap")]["metadata"]["uid"]
        assert event["involvedObject"] == {
            "kind": "ConfigMap",
            "namespace": ns,
            "name": "vip-configmap",
            "uid": uid,
            "apiVersion": "v1",
            "resourceVersion": snapshot.configmaps[(ns, "vip-configmap")]["metadata"][
                "resourceVersion"
            ],
        }
        assert (event["type"], event["reason"], event["count"]) == ("Warning", "InvalidVIP", 1)
        assert event["message"] == (
            f"ConfigMap {ns}/vip-configmap key 'not-an-ip': not an IP address (IPv6: write "
            "'-' for ':')"
        )
        assert event["source"] == {"component": "vip-agent", "host": scene.me}
        assert event["reportingComponent"] == "vip-agent"
        assert event["reportingInstance"] == scene.me

        recorder.record((), snapshot)  # fixed ...
        recorder.record(rejections, snapshot)  # ... and broken again: counted, not new
        clock.now += 599
        recorder.record(rejections, snapshot)
        clock.now += 2  # still there after repeat_after: counted again
        recorder.record(rejections, snapshot)
        events = events_of(cluster, ns)
        assert [e["count"] for e in events] == [3]
        assert events[0]["lastTimestamp"] >= events[0]["firstTimestamp"]


def test_events_are_rate_limited(cluster: Cluster) -> None:
    scene = Scene(cluster)
    ns = scene.ns
    scene.configmap({f"bad-{i:02d}": "" for i in range(12)})
    clock = Clock()
    api = KubeApi(cluster.apiserver.api_client())
    recorder = EventRecorder(api=api, node_name=scene.me, clock=clock, per_minute=5)
    source = source_for(cluster.apiserver, (ns, "vip-configmap"))
    with running(source):
        snapshot = source.snapshot()
        rejections = own(scene.state(source).rejections, ns)
        assert len(rejections) == 12
        counts = []
        for _ in range(4):
            for _ in range(10):  # reconciles within the same minute
                recorder.record(rejections, snapshot)
            counts.append(len(events_of(cluster, ns)))
            clock.now += 60
        assert counts == [5, 10, 12, 12]
        assert results(recorder, "created") == 12
        assert results(recorder, "limited") > 0


def test_writeback_worker_from_the_agent_hook(cluster: Cluster) -> None:
    """WriteBack.submit as Agent(after_reconcile=...) would call it; the worker writes."""
    scene = lb_scene(cluster)
    api = KubeApi(cluster.apiserver.api_client())
    source = source_for(cluster.apiserver, (scene.ns, "vip-configmap"))
    with running(source):
        eventually(lambda: (scene.ns, "lb") in source.snapshot().services, what="service seen")
        worker = WriteBack(
            ingress=IngressWriter(api=api, node_name=scene.me),
            events=EventRecorder(api=api, node_name=scene.me),
            held_vips=lambda: {ip_address(VIP)},
            node_name=scene.me,
            resync_seconds=0.2,
        )
        worker.start()
        try:
            worker.submit(source.snapshot(), scene.state(source))
            eventually(lambda: ingress(cluster, scene) == (VIP,), what="worker wrote")
        finally:
            worker.stop()

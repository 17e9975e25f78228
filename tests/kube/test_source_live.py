"""KubeSource against a real kube-apiserver 1.20 (+ etcd): follow, relist after 410, outages.

1.20 does not serve discovery.k8s.io/v1, so these tests also prove that discovery picks
core/v1 Endpoints and that the Endpoints path follows changes; the EndpointSlice v1 path
runs on a stand-in server in test_source_v1_slices.py.  No controllers run on this server:
the tests write Endpoints themselves.  Each test uses its own namespace and its own
labelled Nodes (``node_selector``), so the session's other objects do not disturb it, and
every wait is bounded.
"""

from __future__ import annotations

import threading
import time
from ipaddress import ip_address
from typing import Any

from kubernetes import client

from agent.core.model import DesiredState
from agent.sources.kube import ENDPOINTS, KubeApi, Query, WatchStream
from labkit import objects
from labkit.apiserver import wait_until, watch_ends_in_gone
from tests.support.cluster import Cluster, Scene, eventually, running, source_for


def test_services_endpoints_and_configmap_are_followed(cluster: Cluster) -> None:
    scene = Scene(cluster)
    ns = scene.ns
    scene.configmap({"192.0.2.10": f"{ns}/web"})
    scene.web()
    scene.endpoints("web", "203.0.113.1")
    notified = threading.Event()
    source = source_for(cluster.apiserver, (ns, "vip-configmap"))
    with running(source, notified.set):
        assert source.endpoints.resource is ENDPOINTS  # 1.20: no discovery.k8s.io/v1
        conf = scene.keepalived(source)
        assert "virtual_server 192.0.2.10 80 {" in conf
        assert "real_server 203.0.113.1 8080" in conf

        def follows(what: str, present: str = "", absent: str = "") -> None:
            eventually(
                lambda: (
                    (not present or present in scene.keepalived(source))
                    and (not absent or absent not in scene.keepalived(source))
                ),
                what=what,
            )

        notified.clear()
        scene.set_endpoints("web", "203.0.113.2", "203.0.113.3")
        follows("endpoints update", "real_server 203.0.113.3 8080", "203.0.113.1 ")
        assert notified.is_set()
        cluster.patch("ConfigMap", ns, "vip-configmap", {"data": {"192.0.2.11": f"{ns}/web"}})
        follows("configmap key added", "virtual_server 192.0.2.11 80 {")
        cluster.patch("Service", ns, "web", {"spec": {"ports": [objects.port("http", 81, "http")]}})
        follows("service port update", "virtual_server 192.0.2.11 81 {", "192.0.2.11 80 ")
        cluster.patch("ConfigMap", ns, "vip-configmap", {"data": {"192.0.2.10": None}})
        follows("configmap key removed", absent="192.0.2.10")
        cluster.delete("Endpoints", ns, "web")
        follows("endpoints deleted", absent="real_server")
        assert (ns, "web") not in source.snapshot().endpoints
        cluster.delete("Service", ns, "web")
        eventually(
            lambda: any("not found" in r.reason for r in scene.state(source).rejections),
            what="service deleted",
        )
        cluster.delete("ConfigMap", ns, "vip-configmap")
        follows("configmap deleted", absent="192.0.2.11")
        assert source.error is None


class GatedApi(KubeApi):
    """The real KubeApi, whose new watches wait while the gate is shut.

    Lets a test hold a watcher behind (as a long network stall would) while etcd compacts
    past its resourceVersion.
    """

    def __init__(self, api_client: Any) -> None:
        super().__init__(api_client)
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()

    def watch(self, path: str, query: Query, *, read_timeout: float) -> WatchStream:
        if not self.gate.is_set():
            self.waiting.set()
            self.gate.wait(120)
            self.waiting.clear()
        return super().watch(path, query, read_timeout=read_timeout)


def gone_from(cluster: Cluster, resource_version: str) -> bool:
    """True when a watch of Services from ``resource_version`` ends in 410 Gone."""
    return watch_ends_in_gone(
        cluster.v1.list_service_for_all_namespaces,
        resource_version=resource_version,
        timeout_seconds=2,
    )


def test_410_gone_relists_nothing_missed_nothing_duplicated(cluster: Cluster) -> None:
    scene = Scene(cluster)
    ns = scene.ns
    scene.configmap({"192.0.2.20": f"{ns}/keep", "192.0.2.21": f"{ns}/doomed"})
    for name in ("keep", "doomed"):
        scene.web(name)
    api = GatedApi(cluster.apiserver.api_client())
    source = source_for(cluster.apiserver, (ns, "vip-configmap"), api=api)
    with running(source):
        assert source.services.lists == 1
        old_rv = source.services.watch.resource_version
        assert old_rv is not None
        eventually(lambda: source.services.watch.watching, what="services watch open")
        api.gate.clear()
        source.services.watch.close_stream()  # end the open watch; the next one waits
        assert api.waiting.wait(20), "the services watcher did not come back to watch"
        assert source.services.watch.resource_version == old_rv
        # while nobody watches: a delete, an add and an update
        cluster.delete("Service", ns, "doomed")
        scene.web("new")
        cluster.patch("Service", ns, "keep", {"spec": {"ports": [objects.port("http", 82)]}})
        started = time.monotonic()
        wait_until(
            lambda: gone_from(cluster, old_rv),
            timeout=3 * cluster.apiserver.compaction_interval + 30,
            interval=1.0,
            what=f"etcd compaction past resourceVersion {old_rv}",
        )
        compacted_after = time.monotonic() - started
        api.gate.set()
        eventually(lambda: source.services.lists == 2, what="relist after 410", timeout=20)
        eventually(lambda: source.error is None, what="error cleared")
        store = source.store_of("Service")
        assert store == cluster.fresh_store("Service"), "store differs from a fresh list"
        assert (ns, "doomed") not in store
        assert (ns, "new") in store
        assert store[(ns, "keep")]["spec"]["ports"][0]["port"] == 82
        assert set(source.snapshot().services) == set(store)
        reasons = [r.reason for r in scene.state(source).rejections]
        assert f"service {ns}/doomed not found; VIP held without virtual servers" in reasons
        assert compacted_after < 3 * cluster.apiserver.compaction_interval + 30


def test_apiserver_killed_and_restarted(cluster: Cluster) -> None:
    scene = Scene(cluster)
    ns = scene.ns
    apiserver = cluster.apiserver
    scene.configmap({"192.0.2.30": f"{ns}/web"})
    scene.web()
    scene.endpoints("web", "203.0.113.30")
    source = source_for(apiserver, (ns, "vip-configmap"), backoff_cap=1.0)
    with running(source):
        before = source.snapshot()
        conf_before = scene.keepalived(source)
        assert "real_server 203.0.113.30 8080" in conf_before
        try:
            apiserver.kill()
            eventually(lambda: source.error is not None, what="error while away", timeout=20)
            assert "unreachable" in (source.error or "")
            time.sleep(1.5)  # several failed reconnects
            assert source.snapshot() is before  # the last good objects stay
            assert scene.keepalived(source) == conf_before
        finally:
            apiserver.restart()
        # changes made after the restart reach the source
        scene.set_endpoints("web", "203.0.113.31")
        cluster.patch("ConfigMap", ns, "vip-configmap", {"data": {"192.0.2.31": f"{ns}/web"}})
        eventually(
            lambda: (
                "real_server 203.0.113.31 8080" in scene.keepalived(source)
                and "virtual_server 192.0.2.31 80" in scene.keepalived(source)
            ),
            what="catch up after restart",
            timeout=30,
        )
        eventually(lambda: source.error is None, what="error cleared", timeout=10)


def instance_facts(state: DesiredState) -> dict[str, tuple[int, int, tuple[str, ...]]]:
    return {
        i.name: (i.virtual_router_id, i.priority, tuple(map(str, (*i.vips, *i.excluded_vips))))
        for i in state.instances
    }


def test_node_added_and_removed(cluster: Cluster) -> None:
    scene = Scene(cluster, spread=True, unicast=True)
    ns = scene.ns
    scene.add_node(f"{ns}-b", "198.51.100.2")
    scene.configmap({"192.0.2.40": "", "192.0.2.41": "", "192.0.2.42": ""})
    source = source_for(cluster.apiserver, (ns, "vip-configmap"))
    with running(source):
        state = scene.state(source)
        facts = instance_facts(state)
        assert len(facts) >= 2
        assert {i.unicast_peers for i in state.instances} == {(ip_address("198.51.100.2"),)}

        scene.add_node(f"{ns}-c", "198.51.100.3")
        eventually(
            lambda: all(
                i.unicast_peers == (ip_address("198.51.100.2"), ip_address("198.51.100.3"))
                for i in scene.state(source).instances
            ),
            what="new node's address among the peers",
        )
        assert instance_facts(scene.state(source)) == facts  # ids, priorities, VIPs kept

        cluster.delete("Node", None, f"{ns}-c")
        eventually(
            lambda: all(
                i.unicast_peers == (ip_address("198.51.100.2"),)
                for i in scene.state(source).instances
            ),
            what="removed node gone from the peers",
        )
        assert instance_facts(scene.state(source)) == facts


def test_client_typed_watch_agrees(cluster: Cluster) -> None:
    """The typed client 37 API and the raw watcher see the same Services (a cross-check)."""
    scene = Scene(cluster)
    scene.web("typed")
    source = source_for(cluster.apiserver, (scene.ns, "vip-configmap"))
    with running(source):
        typed = client.CoreV1Api(cluster.api_client).list_namespaced_service(scene.ns)
        names = {s.metadata.name for s in typed.items if s.metadata is not None}
        store = source.store_of("Service")
        stored = {k[1] for k in store if isinstance(k, tuple) and k[0] == scene.ns}
        assert names == stored == {"typed"}

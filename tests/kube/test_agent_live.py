"""The agent loop on a live API server: KubeSource -> translate -> render -> files, with the
write-back hook, wired as ``vip-agent run`` wires it (minus daemons and netlink).

Validators are stand-ins that accept every file: the real ``keepalived -t`` / ``haproxy -c``
checks are covered by the golden and apply tests; this test is about the watch path.
"""

from __future__ import annotations

import threading
from ipaddress import ip_address
from pathlib import Path

from agent.apply import Target
from agent.assets import template_dirs
from agent.core.translate import ANNOTATION_LB_IPS
from agent.reconcile import Agent
from agent.sources.kube import KubeApi
from agent.validate import CheckResult
from agent.writeback import EventRecorder, IngressWriter, WriteBack, current_ingress
from tests.support.cluster import Cluster, Scene, eventually, source_for


def accept(_path: Path) -> CheckResult:
    return CheckResult(True, "")


def test_agent_follows_the_cluster_and_writes_back(cluster: Cluster, tmp_path: Path) -> None:
    scene = Scene(cluster, coalesce_seconds=0.05)
    ns = scene.ns
    scene.configmap({"192.0.2.80": f"{ns}/web", "not-an-ip": ""})
    scene.web()
    scene.endpoints("web", "203.0.113.80")
    scene.web("lb", type="LoadBalancer")
    annotations = {ANNOTATION_LB_IPS: "192.0.2.81"}
    cluster.patch("Service", ns, "lb", {"metadata": {"annotations": annotations}})
    source = source_for(cluster.apiserver, (ns, "vip-configmap"))
    api = KubeApi(cluster.apiserver.api_client())
    writeback = WriteBack(
        ingress=IngressWriter(api=api, node_name=scene.me),
        events=EventRecorder(api=api, node_name=scene.me),
        held_vips=lambda: {ip_address("192.0.2.81")},
        node_name=scene.me,
        resync_seconds=0.5,
    )
    keepalived = tmp_path / "keepalived.conf"
    agent = Agent(
        settings=scene.settings,
        source=source,
        daemons={},
        targets=[
            Target("keepalived.conf", keepalived, 0o600, accept),
            Target("haproxy.cfg", tmp_path / "haproxy.cfg", 0o640, accept),
        ],
        template_dirs=lambda: template_dirs(None),
        node_name=scene.me,
        interface="eth0",
        after_reconcile=writeback.submit,
    )
    stop = threading.Event()
    writeback.start()
    loop = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    loop.start()
    try:
        eventually(
            lambda: keepalived.exists() and "203.0.113.80 8080" in keepalived.read_text(),
            what="first render",
            timeout=30,
        )
        scene.set_endpoints("web", "203.0.113.81")
        eventually(
            lambda: "real_server 203.0.113.81 8080" in keepalived.read_text(),
            what="endpoints change on disk",
        )
        eventually(
            lambda: current_ingress(cluster.read("Service", ns, "lb")) == ("192.0.2.81",),
            what="ingress written",
        )
        eventually(
            lambda: any(e["involvedObject"]["name"] == "vip-configmap" for e in cluster.events(ns)),
            what="event for the bad key",
        )
        assert agent.status.last_apply_ok is True
        assert source.error is None
    finally:
        stop.set()
        loop.join(timeout=10)
        agent.shutdown()
        writeback.stop()

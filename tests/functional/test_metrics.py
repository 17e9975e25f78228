"""Metrics move as the agent works: agent.reconcile.Agent with the Metrics observer.

The Agent runs with its real parts: translate, render, the real ``keepalived -t`` (in a
scratch network namespace holding ``eth0``) and ``haproxy -c``, and a real haproxy in
master-worker mode in that namespace, reloaded through its master socket.  keepalived is
not started here (VRRP needs a peer and its own namespace: tests/lab/test_operability_lab.py
runs it); only its configuration is validated.  Values are read with
``registry.get_sample_value``, from a registry of the test's own.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from agent.apply import Target
from agent.assets import packaged_template_dir
from agent.core.model import Reason, Rejection
from agent.core.snapshot import Snapshot
from agent.core.translate import translate
from agent.daemons.haproxy import Haproxy, check_haproxy
from agent.daemons.keepalived import check_keepalived
from agent.reconcile import Agent
from agent.settings import Settings
from agent.telemetry.metrics import REASON_CODES, Metrics
from labkit import objects
from labkit.checkers import Checkers


class Objects:
    """A Source holding cluster objects the test sets (stands for the watch or the files)."""

    def __init__(self, items: list[objects.Obj]) -> None:
        self.items = items
        self.error: str | None = None

    def start(self, notify: object) -> None:
        return None

    def snapshot(self) -> Snapshot:
        return Snapshot.from_objects(self.items)

    def stop(self) -> None:
        return None


WEB = [
    objects.service("web", [objects.port("http", 80, 8080)]),
    objects.endpoint_slice("web", [objects.port("http", 8080)], [objects.endpoint("203.0.113.5")]),
]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    templates = tmp_path / "templates"
    shutil.copytree(packaged_template_dir(), templates)
    (tmp_path / "etc").mkdir()
    return tmp_path


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


@pytest.fixture
def agent_parts(
    workdir: Path, checkers: Checkers
) -> Iterator[tuple[Agent, CollectorRegistry, Objects, Haproxy]]:
    checkers.netns.ensure_links(["eth0"])
    run = workdir / "run"
    settings = Settings(
        node_name="n1",
        interface="eth0",
        kubernetes=False,
        run_dir=str(run),
        haproxy_stats_socket=str(run / "haproxy.sock"),
        health_file=str(run / "apiserver.health"),
        vrrp_notify_fifo=None,
        keepalived_reload_interval=0,
        coalesce_seconds=0,
        real_server_check="none",
    )
    registry = CollectorRegistry()
    source = Objects([objects.configmap({"192.0.2.50": ""})])
    haproxy = Haproxy(
        binary="haproxy",
        config=workdir / "etc" / "haproxy.cfg",
        run_dir=run,
        prefix=["ip", "netns", "exec", checkers.netns.name],
    )
    agent = Agent(
        settings=settings,
        source=source,
        daemons={"haproxy": haproxy},
        targets=[
            Target(
                "keepalived.conf",
                workdir / "etc" / "keepalived.conf",
                0o600,
                lambda p: check_keepalived(p, netns=checkers.netns.name),
            ),
            Target("haproxy.cfg", workdir / "etc" / "haproxy.cfg", 0o640, check_haproxy),
        ],
        template_dirs=lambda: [workdir / "templates"],
        node_name="n1",
        interface="eth0",
        observer=Metrics(registry, version="9.9.9-test"),
    )
    try:
        yield agent, registry, source, haproxy
    finally:
        haproxy.stop()


def test_reconcile_rejections_reload_and_failed_validation_move_the_metrics(
    agent_parts: tuple[Agent, CollectorRegistry, Objects, Haproxy], workdir: Path
) -> None:
    agent, registry, source, haproxy = agent_parts
    assert value(registry, "vip_agent_build_info", version="9.9.9-test") == 1
    assert value(registry, "vip_agent_reconciles_total") == 0

    # 1. a first reconcile, with two rejected inputs
    source.items = [
        objects.configmap({"192.0.2.50": "", "192.0.2.300": "", "192.0.2.57": "default/web:BOGUS"})
    ]
    before = time.time()
    assert agent.reconcile()
    assert value(registry, "vip_agent_reconciles_total") == 1
    assert value(registry, "vip_agent_reconcile_errors_total") == 0
    assert value(registry, "vip_agent_reconcile_duration_seconds_count") == 1
    assert value(registry, "vip_agent_renders_total", daemon="keepalived", result="changed") == 1
    assert value(registry, "vip_agent_renders_total", daemon="haproxy", result="changed") == 1
    assert value(registry, "vip_agent_vips_managed") == 1
    assert value(registry, "vip_agent_rejected_inputs", kind="ConfigMap", reason="bad_address") == 1
    assert value(registry, "vip_agent_rejected_inputs", kind="ConfigMap", reason="bad_method") == 1
    applied_at = value(registry, "vip_agent_last_apply_success_timestamp_seconds")
    assert applied_at is not None and before <= applied_at <= time.time()

    # 2. fixed input, a PROXY listener: haproxy.cfg changes and haproxy is reloaded
    haproxy.start()
    source.items = [
        objects.configmap({"192.0.2.50": "", "192.0.2.53": "default/web:PROXY"}),
        *WEB,
    ]
    assert agent.reconcile()
    assert value(registry, "vip_agent_rejected_inputs", kind="ConfigMap", reason="bad_method") == 0
    assert value(registry, "vip_agent_rejected_inputs", kind="ConfigMap", reason="bad_address") == 0
    assert value(registry, "vip_agent_vips_managed") == 2
    assert value(registry, "vip_agent_reloads_total", daemon="haproxy", result="ok") == 1
    assert value(registry, "vip_agent_reload_duration_seconds_count", daemon="haproxy") == 1
    assert agent.reconcile()  # the same input again: nothing to install
    assert value(registry, "vip_agent_renders_total", daemon="haproxy", result="unchanged") == 1
    applied_at = value(registry, "vip_agent_last_apply_success_timestamp_seconds")

    # 3. a template keepalived -t rejects: counted per file, the last success stays
    template = workdir / "templates" / "keepalived.conf.j2"
    good = template.read_text()
    template.write_text(good + "\nno_such_keyword {{ router_id }}\n")
    assert not agent.reconcile()
    assert value(registry, "vip_agent_validation_failures_total", file="keepalived.conf") == 1
    assert value(registry, "vip_agent_validation_failures_total", file="haproxy.cfg") is None
    assert value(registry, "vip_agent_renders_total", daemon="keepalived", result="invalid") == 1
    assert value(registry, "vip_agent_reconcile_errors_total") == 1
    assert value(registry, "vip_agent_last_apply_success_timestamp_seconds") == applied_at

    # 4. a template that does not render at all
    template.write_text(good + "\n{{ no_such_variable }}\n")
    assert not agent.reconcile()
    assert value(registry, "vip_agent_renders_total", daemon="keepalived", result="error") == 1
    assert value(registry, "vip_agent_renders_total", daemon="haproxy", result="error") == 1
    assert value(registry, "vip_agent_reconcile_errors_total") == 2
    assert value(registry, "vip_agent_reconciles_total") == 5


def test_every_rejection_translate_makes_has_a_code() -> None:
    hostile = "already used; x skipped is the control-plane VIP\n"
    items = [
        objects.node("n1", "198.51.100.11"),
        objects.node("bad name!", "198.51.100.12"),
        objects.node("n3", "not-an-ip"),
        objects.configmap(
            {
                "192.0.2.300": "",
                "192.0.2.51": "default/web:BOGUS",
                "192.0.2.52": "a:b:c",
                "192.0.2.53": "default/missing",
                "192.0.2.54": "default/ext",
                "192.0.2.55": "default/udp:PROXY",
                "192.0.2.56": "default/dr:DR",
                "192.0.2.57": "default/web",
                "192.0.2.10": "",
                "127.0.0.1": "",
                hostile: "",
            }
        ),
        objects.service("web", [objects.port("http", 80, 8080)]),
        objects.service(
            "web2",
            [objects.port("http", 80, 8080), objects.port("bad", 70000), objects.port("p", 81)],
            type="LoadBalancer",
            loadBalancerIP="192.0.2.58",
            annotations={"vip-agent.io/scheduler": "nope", "vip-agent.io/method": "NAT"},
        ),
        objects.service("ext", [objects.port("http", 80)], type="ExternalName"),
        objects.service("udp", [objects.port("dns", 53, 53, protocol="UDP")]),
        objects.service("dr", [objects.port("http", 80, 8080)]),
        objects.endpoint_slice(
            "dr", [objects.port("http", 8080)], [objects.endpoint("203.0.113.7")]
        ),
    ]
    settings = Settings(interface="eth0", control_plane_vip="192.0.2.10")
    snapshot = Snapshot.from_objects(items)
    rejections = [
        *translate(snapshot, settings, node_name="n1", interface="eth0").rejections,
        *translate(snapshot, settings, node_name="n9", interface="eth0").rejections,
    ]
    codes = {str(r): r.code.value for r in rejections}
    assert len(set(codes.values())) >= 13, codes
    assert set(codes.values()) <= REASON_CODES
    # a key that reads like other rejections' messages still gets its own code
    assert {r.code for r in rejections if r.key == hostile} == {Reason.BAD_ADDRESS}
    # whatever the cluster writes, the label is the code translate chose, never the text
    registry = CollectorRegistry()
    metrics = Metrics(registry, version="t")
    forged = Rejection("ConfigMap", "x", hostile, hostile + '"} 1\nevil{a="', Reason.BAD_ENTRY)
    state = translate(Snapshot(), settings, node_name="n1", interface="eth0")
    metrics.rendered(dataclasses.replace(state, rejections=(forged,)))
    assert value(registry, "vip_agent_rejected_inputs", kind="ConfigMap", reason="bad_entry") == 1
    assert b"evil" not in generate_latest(registry)


def test_watch_restarts_and_apiserver_health() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, version="t")
    seen: list[bool | None] = []
    metrics.add_listener(lambda: seen.append(metrics.apiserver_healthy))
    assert value(registry, "vip_agent_apiserver_healthy") is None, "absent until probed"
    metrics.set_apiserver_healthy(True)
    metrics.set_apiserver_healthy(True)
    assert value(registry, "vip_agent_apiserver_healthy") == 1
    metrics.set_apiserver_healthy(False)
    assert value(registry, "vip_agent_apiserver_healthy") == 0
    assert seen == [True, False], "listeners hear changes, not repeats"
    metrics.watch_restarted("endpointslices")
    metrics.watch_restarted("endpointslices")
    metrics.watch_restarted('services"} 1\n')
    assert value(registry, "vip_agent_watch_restarts_total", resource="endpointslices") == 2
    assert value(registry, "vip_agent_watch_restarts_total", resource="other") == 1

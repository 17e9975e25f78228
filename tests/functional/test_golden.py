"""Whole rendered outputs for the example cluster, byte for byte, and accepted by the daemons.

Regenerate after an intended change with ``UPDATE_GOLDEN=1 make unit`` and read the diff.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.assets import template_dirs
from agent.core import render
from agent.core.snapshot import Snapshot
from agent.core.translate import translate
from agent.daemons import config_files_for
from agent.daemons.spec import outputs
from agent.settings import Settings
from agent.sources.manifests import load_snapshot
from labkit.checkers import Checkers
from labkit.objects import configmap, node, port, service
from tests.conftest import EXAMPLES

GOLDEN = Path(__file__).resolve().parent / "golden"
GOLDEN_CA = "/tmp/vip-agent-golden/ca.crt"
"""haproxy -c loads the CA file, so the daemon test writes a real one at this fixed path."""

CASES: dict[str, dict[str, Any]] = {
    # a worker: per-VIP instances spread across nodes, unicast, DR/UDP/SCTP/PROXY/IPv6
    "worker-spread-unicast": {
        "node_name": "worker-1",
        "interface": "eth0",
        "unicast": True,
        "spread": True,
        "control_plane_vip": "192.0.2.10",
    },
    # a control-plane node: control-plane VIP with the health track, haproxy apiserver
    # frontend verifying the CA, spread, unicast
    "control-plane-spread-unicast": {
        "node_name": "cp-1",
        "interface": "eth0",
        "unicast": True,
        "spread": True,
        "control_plane_vip": "192.0.2.10",
        "apiserver_ca_file": GOLDEN_CA,
    },
    # keepalived-vip layout: one multicast instance per family, VRRPv2 with PASS auth,
    # an extra tracked interface and FAULT on apiserver failure
    "control-plane-shared-multicast-v2": {
        "node_name": "cp-2",
        "interface": "eth0",
        "vrrp_version": 2,
        "auth_pass": "s3cret",
        "track_interfaces": ("eth1",),
        "control_plane_vip": "192.0.2.10",
        "health_mode": "fault",
        "scheduler": "wlc",
    },
    # BGP: a control-plane node announcing the gated control-plane VIP and the service
    # VIPs to an IPv4 router (BFD, MD5) and an IPv6 one (multihop, no BFD), communities
    "bgp-control-plane": {
        "node_name": "cp-1",
        "interface": "eth0",
        "control_plane_vip": "192.0.2.10",
        "mode": "bgp",
        "bgp_local_as": 64501,
        "bgp_peers": (
            "198.51.100.1:64500:s3cr3t!",
            {"address": "2001:db8:100::1", "as": 64502, "multihop": 2, "bfd": False},
        ),
        "bgp_communities": ("64500:100", "64500:1:2"),
        "bgp_hold_time": 6,
        "bgp_keepalive_time": 2,
    },
    # BGP without the control-plane VIP: a Local-policy VIP this node has no endpoint of is
    # left to the nodes that have one; iBGP (direct) with LOCAL_PREF
    "bgp-worker-ibgp": {
        "node_name": "cp-3",
        "interface": "eth0",
        "mode": "bgp",
        "bgp_local_as": 64500,
        "bgp_peers": ("198.51.100.1:64500",),
        "bgp_local_pref": 200,
    },
    # a cluster shared by teams: refused addresses and endpoints, a contested VIP, a
    # deliberate share, pools per namespace, allocations (what each node would write)
    "shared-cluster-ownership": {
        "manifests": "shared-cluster.yaml",
        "node_name": "node-1",
        "interface": "eth0",
        "unicast": True,
    },
}


def rendered(case: str) -> dict[str, str]:
    """The rendered files, and what a dry run prints on stderr and would allocate."""
    values = dict(CASES[case])
    snapshot = load_snapshot([str(EXAMPLES / values.pop("manifests", "cluster.yaml"))])
    settings = Settings(**values)
    assert settings.node_name and settings.interface
    state = translate(
        snapshot, settings, node_name=settings.node_name, interface=settings.interface
    )
    files = render.Renderer(template_dirs(None)).render(state, outputs(config_files_for(settings)))
    lines = [f"rejected: {r}" for r in state.rejections]
    lines += [
        f"allocate: {'/'.join(a.service)} {', '.join(map(str, a.addresses))}"
        for a in state.allocations
    ]
    return {**files, "rejections.txt": "".join(f"{line}\n" for line in lines)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_bytes(case: str) -> None:
    files = rendered(case)
    for name, text in files.items():
        path = GOLDEN / case / name
        if os.environ.get("UPDATE_GOLDEN"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        assert path.read_text(encoding="utf-8") == text, f"{case}/{name} differs from golden"


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_output_is_deterministic(case: str) -> None:
    assert rendered(case) == rendered(case)


@pytest.fixture(scope="module")
def golden_ca() -> str:
    ca = Path(GOLDEN_CA)
    ca.parent.mkdir(parents=True, exist_ok=True)
    if not ca.is_file():
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "3650",
                "-subj",
                "/CN=vip-agent-test-ca",
                "-keyout",
                str(ca.with_suffix(".key")),
                "-out",
                str(ca),
            ],
            check=True,
            capture_output=True,
        )
    return GOLDEN_CA


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_accepted_by_real_daemons(case: str, checkers: Checkers, golden_ca: str) -> None:
    interfaces = ["eth0", *CASES[case].get("track_interfaces", ())]
    kept = checkers.keepalived((GOLDEN / case / "keepalived.conf").read_text(), interfaces)
    assert kept.ok, kept.output
    # keepalived -t exits 0 on some warnings; a clean golden prints nothing at all
    assert kept.output == "", kept.output
    ha = checkers.haproxy((GOLDEN / case / "haproxy.cfg").read_text())
    assert ha.ok, ha.output
    bird = GOLDEN / case / "bird.conf"
    if CASES[case].get("mode") == "bgp":
        checked = checkers.bird(bird.read_text())
        assert checked.ok, checked.output
    else:
        assert not bird.exists()


def test_keepalived_check_is_honest(checkers: Checkers) -> None:
    """The checker fails on what keepalived rejects, so a pass above means something."""
    good = (GOLDEN / "worker-spread-unicast" / "keepalived.conf").read_text()
    assert not checkers.keepalived(good.replace("lb_algo rr", "lb_algo bogus")).ok
    assert not checkers.keepalived(good.replace("interface eth0", "interface eth9", 1), []).ok
    assert not checkers.keepalived(good + "\nnot_a_keyword {\n}\n").ok
    assert not checkers.haproxy("global\n    no-such-directive\n").ok


def test_a_lone_node_with_unicast_renders_what_keepalived_accepts(checkers: Checkers) -> None:
    """The DaemonSet ships ``unicast: true``; the first node of a cluster has no peer yet.
    keepalived refuses ``unicast_src_ip`` without a ``unicast_peer``, which refused every
    render and kept the node without VIPs: until a peer exists the instance is multicast."""
    objects = [
        node("solo", "198.51.100.21", "2001:db8:1::21", control_plane=True),
        configmap({"192.0.2.50": "default/web", "2001:db8::50": "default/web"}),
        service("web", [port("http", 80, 8080)]),
    ]
    settings = Settings(
        node_name="solo", interface="eth0", unicast=True, control_plane_vip="192.0.2.10"
    )
    state = translate(Snapshot.from_objects(objects), settings, node_name="solo", interface="eth0")
    files = render.Renderer(template_dirs(None)).render(state, outputs(config_files_for(settings)))
    conf = files["keepalived.conf"]
    assert "unicast_src_ip" not in conf and "192.0.2.10" in conf and "192.0.2.50" in conf
    checked = checkers.keepalived(conf)
    assert checked.ok, checked.output
    # a second node makes it unicast again
    two = Snapshot.from_objects([*objects, node("other", "198.51.100.22", "2001:db8:1::22")])
    state = translate(two, settings, node_name="solo", interface="eth0")
    conf = render.Renderer(template_dirs(None)).render(state, outputs(config_files_for(settings)))[
        "keepalived.conf"
    ]
    assert "unicast_src_ip 198.51.100.21" in conf and "198.51.100.22" in conf
    assert checkers.keepalived(conf).ok

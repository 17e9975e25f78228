"""A live agent never announces its own node's network: interface addresses, the subnet's
network and broadcast addresses, the gateway.  And the VIP it holds itself is not
mistaken for one of the node's own addresses.

One node in a network namespace with a default route, the whole agent in supervise mode
with real keepalived, cluster objects from a manifest file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from labkit.netlab import Lab, agent_config, ip, start_agent, wait_for
from labkit.objects import configmap

pytestmark = pytest.mark.usefixtures("lab_ready")

GATEWAY = "198.51.100.1"
VIP = "192.0.2.50"


def status(host_dir: Path) -> dict[str, object]:
    try:
        return dict(json.loads((host_dir / "run" / "status.json").read_text()))
    except (OSError, ValueError):
        return {}


def test_the_nodes_own_network_is_refused_and_its_own_vip_is_kept() -> None:
    with Lab(["n1"]) as lab:
        host = lab["n1"]
        ip("-n", host.ns, "route", "add", "default", "via", GATEWAY)
        own = {
            host.address: "is an address of this node's interfaces",
            GATEWAY: "is a next hop (gateway) of this node's routes",
            "198.51.100.0": "is the network address of 198.51.100.0/24",
            "198.51.100.255": "is the broadcast address of 198.51.100.0/24",
        }
        manifests = host.dir / "manifests"
        manifests.mkdir()
        cluster = manifests / "cluster.yaml"
        cluster.write_text(yaml.safe_dump(configmap({**dict.fromkeys(own, ""), VIP: ""})))
        config = agent_config(host, manifests=[str(manifests)], real_server_check="none")
        start_agent(host, config)
        wait_for(lambda: host.has(VIP), timeout=20, what="the VIP held")
        found = {
            str(r["text"])
            for r in status(host.dir).get("rejections", [])  # type: ignore[union-attr]
            if r["code"] == "forbidden_address"
        }
        for address, why in own.items():
            assert any(address in text and why in text for text in found), (address, found)
            assert not host.has(address) or address == host.address
        conf = (host.dir / "etc" / "keepalived.conf").read_text()
        assert f"{VIP}/32" in conf
        assert all(f"{a}/32" not in conf for a in own)
        agent_log = (host.dir / "agent.log").read_text()
        assert f"rejected: ConfigMap kube-system/vip-configmap key '{GATEWAY}'" in agent_log

        # the held VIP is on eth0 now; once the agent's view of its own network is read
        # again (at most every 5 s) and the objects change, the VIP must survive
        time.sleep(5.5)
        cluster.write_text(
            yaml.safe_dump(configmap({**dict.fromkeys(own, ""), VIP: "", "192.0.2.51": ""}))
        )
        wait_for(lambda: host.has("192.0.2.51"), timeout=20, what="the second VIP held")
        assert host.has(VIP)
        assert all(VIP not in str(r["text"]) for r in status(host.dir).get("rejections", []))  # type: ignore[union-attr]

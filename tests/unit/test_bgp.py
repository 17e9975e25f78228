"""BGP mode in a dry run: settings, what each node announces, what bird.conf says.

The real BIRD parses every golden bird.conf (tests/functional/test_golden.py) and the
fuzzed ones (tests/functional/test_injection.py); the lab proves the rest against FRR.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from agent.assets import template_dirs
from agent.core import render
from agent.core.model import Community, DesiredState, Reason
from agent.core.snapshot import Snapshot
from agent.core.translate import translate
from agent.daemons import config_files_for
from agent.daemons.spec import outputs
from agent.settings import Settings, SettingsError
from labkit.objects import configmap, endpoint, endpoint_slice, node, port, service

ip = ipaddress.ip_address
NODES = [
    node("cp-1", "198.51.100.11", "2001:db8:100::11", control_plane=True),
    node("w-1", "198.51.100.21"),
    node("w-2", "198.51.100.22"),
]
BGP: dict[str, Any] = {
    "mode": "bgp",
    "bgp_local_as": 64501,
    "bgp_peers": ("198.51.100.1:64500",),
    "control_plane_vip": "192.0.2.10",
}


def run(objs: list[Any], node_name: str = "cp-1", **extra: Any) -> DesiredState:
    settings = Settings(interface="eth0", **{**BGP, **extra})
    return translate(Snapshot.from_objects(objs), settings, node_name=node_name, interface="eth0")


def announced(state: DesiredState) -> dict[str, bool]:
    assert state.bgp is not None
    return {str(a.vip): a.gated for a in state.bgp.announcements}


def bird_conf(state: DesiredState, **extra: Any) -> str:
    settings = Settings(interface="eth0", **{**BGP, **extra})
    files = render.Renderer(template_dirs(None)).render(state, outputs(config_files_for(settings)))
    return files["bird.conf"]


# --- settings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("198.51.100.1:64500", ("198.51.100.1", 64500, None, None)),
        ("198.51.100.1:64500::false", ("198.51.100.1", 64500, None, None)),
        ("198.51.100.1:64500:pw:true", ("198.51.100.1", 64500, "pw", 64)),
        ("198.51.100.1:64500:pw:3", ("198.51.100.1", 64500, "pw", 3)),
        ("[2001:db8::1]:4200000000", ("2001:db8::1", 4200000000, None, None)),
    ],
)
def test_kube_vip_peer_strings(text: str, expected: tuple[Any, ...]) -> None:
    (peer,) = Settings(**{**BGP, "bgp_peers": (text,)}).bgp_peers
    assert (str(peer.address), peer.asn, peer.password, peer.multihop) == expected


def test_yaml_peer_mappings_and_what_is_shown_of_them() -> None:
    settings = Settings(
        **{
            **BGP,
            "bgp_peers": (
                {"address": "198.51.100.2", "as": 64500, "password": "s3cr3t", "port": 1179},
                {"address": "2001:db8::2", "asn": 64502, "bfd": False, "source": "2001:db8::11"},
            ),
        }
    )
    first, second = settings.bgp_peers
    assert (first.port, first.password, first.bfd) == (1179, "s3cr3t", True)
    assert (second.asn, second.bfd, str(second.source)) == (64502, False, "2001:db8::11")
    shown = settings.redacted()["bgp_peers"]
    assert shown == ("198.51.100.2:64500:<redacted>", "[2001:db8::2]:64502")
    assert "s3cr3t" not in repr(settings) and "s3cr3t" not in str(settings.redacted())


@pytest.mark.parametrize(
    ("peers", "message"),
    [
        (("198.51.100.1",), "setting bgp_peers='<redacted>': expected ADDRESS:AS"),
        (("198.51.100.1:0",), "AS 0 is not 1-4294967294"),
        (("198.51.100.1:64500:pass word",), "setting bgp_peers='198.51.100.1:64500:<redacted>'"),
        (('198.51.100.1:64500:a"b',), "no quote, backslash or space"),
        (("198.51.100.1:64500:pw:300",), "multihop TTL 300 is not 1-255"),
        (("127.0.0.1:64500",), "127.0.0.1 is a loopback address"),
        (({"address": "198.51.100.1", "as": 1, "colour": "red"},), "unknown peer key 'colour'"),
        ((), "mode bgp needs at least one peer"),
    ],
)
def test_bad_peers_are_refused_without_showing_a_password(peers: Any, message: str) -> None:
    with pytest.raises(SettingsError) as err:
        Settings(**{**BGP, "bgp_peers": peers})
    assert message in str(err.value)
    assert "pass word" not in str(err.value) and 'a"b' not in str(err.value)


def test_communities_and_the_rest_of_bgp_settings() -> None:
    settings = Settings(**BGP, bgp_communities="64500:100, 64500:1:2")
    assert settings.bgp_communities == (Community((64500, 100)), Community((64500, 1, 2)))
    for bad in ("64500:70000", "1:2:3:4", "x:1"):
        with pytest.raises(SettingsError, match="bgp_communities"):
            Settings(**BGP, bgp_communities=(bad,))
    with pytest.raises(SettingsError, match="required with mode bgp"):
        Settings(mode="bgp", bgp_peers=("198.51.100.1:64500",))
    with pytest.raises(SettingsError, match="at most a third of bgp_hold_time"):
        Settings(**BGP, bgp_hold_time=6, bgp_keepalive_time=3)
    with pytest.raises(SettingsError, match="not 253-255"):
        Settings(**BGP, bgp_gate_table=254)


# --- what is announced ----------------------------------------------------------------


def test_a_control_plane_node_gates_the_control_plane_vip_and_announces_service_vips() -> None:
    state = run([*NODES, configmap({"192.0.2.50": "", "2001-db8--50": ""})])
    assert announced(state) == {"192.0.2.10": True, "192.0.2.50": False, "2001:db8::50": False}
    assert state.instances == () and state.track_files == ()
    assert state.bgp is not None and str(state.bgp.router_id) == "198.51.100.11"
    assert str(state.bgp.next_hop6) == "2001:db8:100::11"


def test_a_worker_announces_service_vips_only_and_local_policy_needs_a_local_endpoint() -> None:
    local = service("local", [port("http", 80, 8080)], externalTrafficPolicy="Local")
    slices = endpoint_slice(
        "local", [port("http", 8080)], [endpoint("203.0.113.7", node_name="w-1")]
    )
    objs = [*NODES, configmap({"192.0.2.50": "", "192.0.2.51": "default/local"}), local, slices]
    assert announced(run(objs, node_name="w-1")) == {"192.0.2.50": False, "192.0.2.51": False}
    assert announced(run(objs, node_name="w-2")) == {"192.0.2.50": False}


def test_refused_addresses_are_never_announced() -> None:
    objs = [*NODES, configmap({"198.51.100.21": "", "127.0.0.1": "", "192.0.2.50": ""})]
    state = run(objs)
    assert announced(state) == {"192.0.2.10": True, "192.0.2.50": False}
    conf = bird_conf(state)
    assert "198.51.100.21" not in conf and "127.0.0.1" not in conf


def test_per_service_communities_and_a_bad_one_reported() -> None:
    lb = service(
        "lb",
        [port("http", 80)],
        type="LoadBalancer",
        loadBalancerIP="192.0.2.70",
        annotations={"vip-agent.io/bgp-communities": "64500:7, 64500:2:3, nonsense"},
    )
    state = run([*NODES, lb], bgp_communities=("64500:1",))
    assert state.bgp is not None
    (service_vip,) = [a for a in state.bgp.announcements if str(a.vip) == "192.0.2.70"]
    assert [str(c) for c in service_vip.communities] == ["64500:1", "64500:7", "64500:2:3"]
    assert [r.code for r in state.rejections] == [Reason.BAD_COMMUNITY]
    conf = bird_conf(state, bgp_communities=("64500:1",))
    assert "bgp_community.add((64500, 7));" in conf
    assert "bgp_large_community.add((64500, 2, 3));" in conf


def test_no_router_id_means_no_bird_conf_content_and_a_reason() -> None:
    state = run([node("v6-only", "2001:db8:100::5")], node_name="v6-only")
    assert state.bgp is None
    assert [r.code for r in state.rejections] == [Reason.NO_ROUTER_ID]
    state = run(
        [node("v6-only", "2001:db8:100::5")], node_name="v6-only", bgp_router_id="198.51.100.5"
    )
    assert state.bgp is not None and str(state.bgp.router_id) == "198.51.100.5"


def test_bird_conf_exports_exactly_the_announced_host_routes() -> None:
    state = run([*NODES, configmap({"192.0.2.50": "", "2001-db8--50": ""})])
    conf = bird_conf(state)
    assert "192.0.2.10/32" in conf.split("protocol kernel gate4", 1)[1].split("}")[0]
    assert "route 192.0.2.10/32" not in conf, "the gated VIP is not a static route"
    assert conf.count("protocol bgp ") == 1
    assert "route 192.0.2.50/32 unreachable;" in conf
    assert "route 2001:db8::50/128 unreachable;" in conf
    assert "next hop address 2001:db8:100::11;" in conf  # IPv6 over the IPv4 session

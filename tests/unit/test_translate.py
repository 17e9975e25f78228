"""What the translation means: endpoints, ports, methods, VRRP layout, rejections."""

from __future__ import annotations

import ipaddress
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from agent.core import grammar
from agent.core.model import DesiredState, HealthCheck, Method, Protocol
from agent.core.snapshot import Snapshot
from agent.core.translate import PlanMemo, parse_configmap_key, priority_for, translate
from agent.settings import Settings
from labkit.objects import (
    configmap,
    core_endpoints,
    endpoint,
    endpoint_slice,
    node,
    port,
    service,
)

NODES = [
    node("cp-1", "198.51.100.11", "2001:db8:1::11", control_plane=True),
    node("cp-2", "198.51.100.12", "2001:db8:1::12", control_plane=True),
    node("worker-1", "198.51.100.21", "2001:db8:1::21"),
]


def run(
    objects: list[dict[str, Any]], node_name: str = "worker-1", **settings: Any
) -> DesiredState:
    s = Settings(interface="eth0", **settings)
    return translate(Snapshot.from_objects(objects), s, node_name=node_name, interface="eth0")


def web(**spec: Any) -> list[dict[str, Any]]:
    return [
        service("web", [port("http", 80, "http"), port("dns", 53, 53, "UDP")], **spec),
        endpoint_slice(
            "web",
            [port("http", 8080), port("dns", 5353, protocol="UDP")],
            [
                endpoint("203.0.113.1", node_name="worker-1"),
                endpoint("203.0.113.2", ready=None, node_name="cp-1"),
                endpoint("203.0.113.3", ready=False),
                endpoint("203.0.113.4", ready=True, terminating=True),
            ],
        ),
    ]


def reasons(state: DesiredState) -> list[str]:
    return [str(r) for r in state.rejections]


def test_ready_endpoints_only_on_the_resolved_named_port() -> None:
    state = run([*NODES, configmap({"192.0.2.50": "default/web"}), *web()])
    by_proto = {vs.protocol: vs for vs in state.virtual_servers}
    tcp = by_proto[Protocol.TCP]
    assert [(str(r.address), r.port) for r in tcp.real_servers] == [
        ("203.0.113.1", 8080),
        ("203.0.113.2", 8080),
    ]
    assert tcp.port == 80 and tcp.method is Method.NAT
    udp = by_proto[Protocol.UDP]
    assert [r.port for r in udp.real_servers] == [5353, 5353]


def test_udp_never_gets_a_tcp_check() -> None:
    state = run([*NODES, configmap({"192.0.2.50": "default/web"}), *web()])
    checks = {vs.protocol: vs.health_check for vs in state.virtual_servers}
    assert checks == {Protocol.TCP: HealthCheck.TCP, Protocol.UDP: HealthCheck.NONE}


def test_persistence_only_from_client_ip_affinity() -> None:
    plain = run([*NODES, configmap({"192.0.2.50": "default/web"}), *web()])
    assert {vs.persistence_timeout for vs in plain.virtual_servers} == {None}
    sticky = run(
        [
            *NODES,
            configmap({"192.0.2.50": "default/web"}),
            *web(sessionAffinity="ClientIP"),
        ]
    )
    assert {vs.persistence_timeout for vs in sticky.virtual_servers} == {10800}
    custom = run(
        [
            *NODES,
            configmap({"192.0.2.50": "default/web"}),
            *web(
                sessionAffinity="ClientIP",
                sessionAffinityConfig={"clientIP": {"timeoutSeconds": 30}},
            ),
        ]
    )
    assert {vs.persistence_timeout for vs in custom.virtual_servers} == {30}


def test_scheduler_default_and_annotation_override() -> None:
    objs = web()
    objs[0]["metadata"]["annotations"] = {"vip-agent.io/scheduler": "mh"}
    state = run([*NODES, configmap({"192.0.2.50": "default/web"}), *objs], scheduler="wlc")
    assert {vs.scheduler for vs in state.virtual_servers} == {"mh"}
    objs[0]["metadata"]["annotations"] = {"vip-agent.io/scheduler": "rr\n}\nvrrp_script x {"}
    state = run([*NODES, configmap({"192.0.2.50": "default/web"}), *objs], scheduler="wlc")
    assert {vs.scheduler for vs in state.virtual_servers} == {"wlc"}
    assert any("vip-agent.io/scheduler" in r for r in reasons(state))


def test_endpoints_used_only_when_a_service_has_no_slices() -> None:
    svc = service("legacy", [port("http", 80, 80)])
    eps = core_endpoints("legacy", ["203.0.113.7"], [port("http", 80)], not_ready=["203.0.113.8"])
    state = run([*NODES, configmap({"192.0.2.50": "default/legacy:DR"}), svc, eps])
    (vs,) = state.virtual_servers
    assert vs.method is Method.DR
    assert [str(r.address) for r in vs.real_servers] == ["203.0.113.7"]
    sliced = run(
        [
            *NODES,
            configmap({"192.0.2.50": "default/legacy"}),
            svc,
            eps,
            endpoint_slice("legacy", [port("http", 80)], [endpoint("203.0.113.9")]),
        ]
    )
    assert [str(r.address) for r in sliced.virtual_servers[0].real_servers] == ["203.0.113.9"]


def test_dr_refuses_port_translation() -> None:
    state = run([*NODES, configmap({"192.0.2.50": "default/web:DR"}), *web()])
    assert not [vs for vs in state.virtual_servers if vs.protocol is Protocol.TCP]
    assert any("DR cannot change the port" in r for r in reasons(state))
    # the Event goes on the Service; it names the vip-configmap key that asked for DR
    assert any(
        r.startswith("Service default/web")
        and "(configmap kube-system/vip-configmap key '192.0.2.50' asks for it)" in r
        for r in reasons(state)
    ), reasons(state)


def test_proxy_method_goes_to_haproxy_and_is_tcp_only() -> None:
    state = run([*NODES, configmap({"192.0.2.53": "default/web:PROXY"}), *web()])
    assert not state.virtual_servers
    (listener,) = state.listeners
    assert listener.port == 80
    assert [(str(s.address), s.port) for s in listener.servers] == [
        ("203.0.113.1", 8080),
        ("203.0.113.2", 8080),
    ]
    assert any("PROXY is TCP only" in r for r in reasons(state))


def test_no_ready_endpoints_means_no_virtual_server_but_the_vip_stays() -> None:
    svc = service("idle", [port("http", 80, 8080)])
    state = run([*NODES, configmap({"192.0.2.50": "default/idle"}), svc])
    assert not state.virtual_servers
    assert [str(v) for i in state.instances for v in i.vips] == ["192.0.2.50"]
    assert not state.rejections


def test_missing_service_keeps_the_vip_and_says_so() -> None:
    state = run([*NODES, configmap({"192.0.2.55": "default/nope"})])
    assert [str(v) for i in state.instances for v in i.vips] == ["192.0.2.55"]
    assert reasons(state) == [
        "ConfigMap kube-system/vip-configmap key '192.0.2.55': "
        "service default/nope not found; VIP held without virtual servers"
    ]


def test_configmap_keys_values_and_ipv6_form() -> None:
    assert parse_configmap_key("2001-db8--50") == ipaddress.ip_address("2001:db8::50")
    state = run(
        [
            *NODES,
            configmap(
                {
                    "192.0.2.54": "",
                    "2001-db8--50": "default/web",
                    "192.0.2.999": "default/web",
                    "192.0.2.57": "default/web:MASQ",
                    "192.0.2.58": "web",
                    "127.0.0.1": "",
                }
            ),
            *web(),
        ]
    )
    held = sorted(str(v) for i in state.instances for v in (*i.vips, *i.excluded_vips))
    assert held == ["192.0.2.54", "2001:db8::50"]
    assert len(state.rejections) == 4
    for rejection in state.rejections:
        assert rejection.kind == "ConfigMap" and rejection.obj == "kube-system/vip-configmap"


def test_loadbalancer_services_kube_vip_annotation_and_spec() -> None:
    lb = service(
        "lb",
        [port("http", 80, 8080)],
        annotations={"kube-vip.io/loadbalancerIPs": "192.0.2.60, 2001:db8::60,bogus"},
        type="LoadBalancer",
    )
    spec_only = service(
        "lb2", [port("http", 80, 8080)], type="LoadBalancer", loadBalancerIP="192.0.2.61"
    )
    cluster_ip = service("plain", [port("http", 80, 8080)], loadBalancerIP="192.0.2.62")
    state = run([*NODES, lb, spec_only, cluster_ip])
    held = sorted(str(v) for i in state.instances for v in (*i.vips, *i.excluded_vips))
    assert held == ["192.0.2.60", "192.0.2.61", "2001:db8::60"]
    # announced only: kube-proxy forwards LoadBalancer IPs, as it does under kube-vip
    assert not state.virtual_servers
    assert reasons(state) == [
        "Service default/lb key 'annotations[kube-vip.io/loadbalancerIPs]': "
        "'bogus' is not an IP address"
    ]


def test_ipv4_and_ipv6_vips_never_share_an_instance() -> None:
    state = run([*NODES, configmap({"192.0.2.50": "", "2001-db8--50": ""})])
    families = [{v.version for v in (*i.vips, *i.excluded_vips)} for i in state.instances]
    assert sorted(map(sorted, families)) == [[4], [6]]
    assert {i.family: i.version for i in state.instances} == {4: 3, 6: 3}


def test_unicast_peers_are_the_other_eligible_nodes_of_the_family() -> None:
    state = run([*NODES, configmap({"192.0.2.50": "", "2001-db8--50": ""})], unicast=True)
    by_family = {i.family: i for i in state.instances}
    assert str(by_family[4].unicast_src) == "198.51.100.21"
    assert [str(p) for p in by_family[4].unicast_peers] == ["198.51.100.11", "198.51.100.12"]
    assert [str(p) for p in by_family[6].unicast_peers] == ["2001:db8:1::11", "2001:db8:1::12"]
    selected = run(
        [*NODES, configmap({"192.0.2.50": ""})],
        unicast=True,
        node_selector="!node-role.kubernetes.io/control-plane",
    )
    assert selected.instances[0].unicast_peers == ()


def test_control_plane_instance_only_on_control_plane_nodes() -> None:
    objs = [*NODES, configmap({"192.0.2.50": ""})]
    worker = run(objs, control_plane_vip="192.0.2.10")
    assert [i.name for i in worker.instances] == ["services_v4"]
    assert worker.apiserver is None
    cp = run(objs, node_name="cp-1", control_plane_vip="192.0.2.10", unicast=True)
    control = cp.instances[0]
    assert control.name == "control_plane" and control.track_file == "apiserver"
    assert [str(p) for p in control.unicast_peers] == ["198.51.100.12"]
    assert cp.apiserver is not None
    assert [(s.name, str(s.address), s.port) for s in cp.apiserver.servers] == [
        ("cp-1", "198.51.100.11", 6443),
        ("cp-2", "198.51.100.12", 6443),
    ]
    assert cp.track_files[0].weight == -120


def test_health_weight_always_moves_the_vip_below_every_healthy_node() -> None:
    names = [f"node-{i}" for i in range(200)]
    priorities = [priority_for(n, "control_plane") for n in names]
    assert min(priorities) - 120 < min(priorities)
    assert max(priorities) - 120 < min(priorities)
    assert all(1 <= p <= 254 for p in priorities)


def test_static_mode_without_nodes_uses_settings() -> None:
    state = run(
        [],
        node_name="cp-1",
        control_plane_vip="192.0.2.10",
        control_plane_backends=("198.51.100.11", "cp-2=198.51.100.12"),
        unicast=True,
        node_address="198.51.100.11",
        unicast_peers=("198.51.100.11", "198.51.100.12"),
    )
    (control,) = state.instances
    assert str(control.unicast_src) == "198.51.100.11"
    assert [str(p) for p in control.unicast_peers] == ["198.51.100.12"]
    assert state.apiserver is not None
    assert [s.name for s in state.apiserver.servers] == ["apiserver_198_51_100_11", "cp-2"]


def test_local_traffic_policy_uses_local_endpoints_and_prefers_their_nodes() -> None:
    objs = [*NODES, configmap({"192.0.2.50": "default/web"}), *web(externalTrafficPolicy="Local")]
    here = run(objs, node_name="worker-1", spread=True)
    tcp = next(vs for vs in here.virtual_servers if vs.protocol is Protocol.TCP)
    assert [str(r.address) for r in tcp.real_servers] == ["203.0.113.1"]
    elsewhere = run(objs, node_name="cp-2", spread=True)
    assert not elsewhere.virtual_servers
    name = here.instances[0].name
    assert here.instances[0].priority == priority_for("worker-1", name)
    assert elsewhere.instances[0].priority == priority_for("cp-2", name) - 50


def test_port_collisions_and_control_plane_vip_reuse_are_rejected() -> None:
    other = service("other", [port("http", 80, 8080)])
    objs = [
        *NODES,
        configmap({"192.0.2.50": "default/web", "192.0.2.10": "default/web"}),
        *web(),
        other,
        endpoint_slice("other", [port("http", 8080)], [endpoint("203.0.113.9")]),
        service(
            "lb",
            [port("http", 80, 8080)],
            annotations={"vip-agent.io/method": "NAT"},
            type="LoadBalancer",
            loadBalancerIP="192.0.2.50",
        ),
    ]
    state = run(objs, control_plane_vip="192.0.2.10")
    found = reasons(state)
    assert any("is the control-plane VIP" in r for r in found)
    # the vip-configmap owns 192.0.2.50: the Service asking for it is refused outright
    assert any("192.0.2.50 belongs to ConfigMap kube-system/vip-configmap" in r for r in found)
    assert len([vs for vs in state.virtual_servers if vs.port == 80]) == 1
    # Services sharing a VIP on purpose still may not take each other's port
    shared = {"vip-agent.io/allow-shared-ip": "team", "vip-agent.io/method": "NAT"}
    objs += [
        service(
            "a",
            [port("http", 80, 8080)],
            annotations={**shared},
            type="LoadBalancer",
            loadBalancerIP="192.0.2.51",
        ),
        service(
            "b",
            [port("http", 80, 8080)],
            annotations={**shared},
            type="LoadBalancer",
            loadBalancerIP="192.0.2.51",
        ),
    ]
    found = reasons(run(objs, control_plane_vip="192.0.2.10"))
    assert any("192.0.2.51 TCP/80 already used; default/b:http skipped" in r for r in found)


def test_node_not_in_cluster_holds_nothing() -> None:
    state = run([*NODES, configmap({"192.0.2.50": ""})], node_name="ghost")
    assert state.instances == ()
    assert reasons(state) == [
        "Node ghost: this node is not in the cluster; holding no service VIPs"
    ]


@pytest.mark.parametrize("spread", [False, True])
def test_same_input_same_state(spread: bool) -> None:
    objs = [*NODES, configmap({"192.0.2.50": "default/web", "2001-db8--50": ""}), *web()]
    assert run(objs, spread=spread) == run(list(reversed(objs)), spread=spread)


def test_memoized_translation_equals_a_fresh_one_as_objects_change() -> None:
    """The live agent's store keeps unchanged objects as the same dicts, so translate
    reuses per-request plans by object identity; replayed in order, VIP:port collisions,
    Local policy and rejections must come out exactly as computed from scratch."""

    def fresh(snapshot: Snapshot, settings: Settings, node_name: str) -> DesiredState:
        once = PlanMemo(once=True)
        state = translate(snapshot, settings, node_name=node_name, interface="eth0", memo=once)
        assert len(once) == 0, "a one-shot translation keeps no plan"
        return state

    memo = PlanMemo()

    settings = Settings(interface="eth0", spread=True, unicast=True)
    web_objs = web()
    local = service("local", [port("http", 80, 8080)], externalTrafficPolicy="Local")
    local_slice = endpoint_slice(
        "local",
        [port("http", 8080)],
        [endpoint("203.0.113.7", node_name="cp-1"), endpoint("203.0.113.8", node_name="cp-2")],
    )
    api = service(
        "api",
        [port("http", 80, 8080)],
        annotations={"kube-vip.io/loadbalancerIPs": "192.0.2.60", "vip-agent.io/method": "NAT"},
        type="LoadBalancer",
    )
    api_slice = endpoint_slice("api", [port("http", 8080)], [endpoint("203.0.113.9")])
    data = {
        "192.0.2.60": "default/web:NAT",
        "192.0.2.61": "default/web:PROXY",
        "192.0.2.62": "default/web:DR",
        "192.0.2.63": "default/local",
    }
    cm_all = configmap(data)
    cm_less = configmap({k: v for k, v in data.items() if k != "192.0.2.60"})
    new_web_slice = endpoint_slice(
        "web", [port("http", 8080), port("dns", 53, protocol="UDP")], [endpoint("203.0.113.99")]
    )
    steps = [
        ("cp-1", [*NODES, cm_all, *web_objs, local, local_slice, api, api_slice]),
        ("cp-1", [*NODES, cm_less, *web_objs, local, local_slice, api, api_slice]),
        ("cp-1", [*NODES, cm_all, web_objs[0], new_web_slice, local, local_slice, api, api_slice]),
        ("cp-2", [*NODES, cm_all, web_objs[0], new_web_slice, local, local_slice, api, api_slice]),
        ("worker-1", [*NODES, cm_less, *web_objs, local, local_slice, api, api_slice]),
    ]
    collided = []
    for node_name, objs in steps:
        snapshot = Snapshot.from_objects(objs)
        warm = translate(snapshot, settings, node_name=node_name, interface="eth0", memo=memo)
        assert len(memo) > 0, "the warm translation keeps its plans in the caller's memo"
        assert warm == fresh(snapshot, settings, node_name)
        collided.append(any("belongs to ConfigMap" in r for r in reasons(warm)))
    # the steps exercise what they claim: the slot is contested only while the
    # vip-configmap also asks for 192.0.2.60
    assert collided == [True, False, True, True, False]


def test_two_requests_for_one_vip_and_service_share_no_plan() -> None:
    """One IPv6 VIP written two ways is two vip-configmap entries for the same VIP and
    Service; a DR port that cannot keep its port names the entry that asks for DR, so each
    request's plan must be its own, memoized or not."""
    web6 = [
        service("web6", [port("http", 80, "http")]),
        endpoint_slice(
            "web6", [port("http", 8080)], [endpoint("2001:db8:2::7")], address_type="IPv6"
        ),
    ]
    cm = configmap({"2001-db8--60": "default/web6:DR", "2001-db8-0--60": "default/web6:DR"})
    snapshot = Snapshot.from_objects([*NODES, cm, *web6])
    settings = Settings(interface="eth0")
    states = [
        translate(snapshot, settings, node_name="worker-1", interface="eth0", memo=memo)
        for memo in (PlanMemo(), PlanMemo(once=True))
    ]
    assert states[0] == states[1]
    asking = [r for r in reasons(states[0]) if "cannot change the port" in r]
    assert len(asking) == 2
    assert "key '2001-db8--60' asks" in asking[0]
    assert "key '2001-db8-0--60' asks" in asking[1]


@hypothesis.settings(max_examples=2000, deadline=None)
@hypothesis.given(
    st.integers(0, 2**128 - 1)
    | st.integers(0, 2**32 - 1)
    | st.integers(0, 2**32 - 1).map(lambda n: n | 0xFFFF << 32)
    | st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0xDB8]), min_size=8, max_size=8).map(
        lambda groups: int.from_bytes(b"".join(g.to_bytes(2, "big") for g in groups), "big")
    )
)
def test_ip_text_is_what_ipaddress_writes(number: int) -> None:
    address = ipaddress.IPv6Address(number)
    assert grammar.ip_text(address) == str(address)
    if number < 2**32:
        assert grammar.ip_text(ipaddress.IPv4Address(number)) == str(ipaddress.IPv4Address(number))

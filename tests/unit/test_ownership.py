"""Address ownership, in a dry run: who may claim which address, and who hands them out.

No node may be made to announce an address it must not own: reserved forms, a Node's
address, this node's own network; endpoints that must never be real servers; the oldest
Service keeps a contested VIP unless both share it on purpose; pools bind namespaces to
addresses; Services without an address get the lowest free one of their pools.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.addresses import HostFacts, reserved_reason
from agent.core.model import DesiredState, IPAddress, Reason
from agent.core.snapshot import Snapshot
from agent.core.translate import translate
from agent.settings import Settings
from agent.writeback import plan_ingress
from labkit.objects import configmap, endpoint, endpoint_slice, node, port, service

NODES = [
    node("cp-1", "198.51.100.11", control_plane=True),
    node("worker-1", "198.51.100.21"),
]


def lb(
    name: str,
    address: str | None = None,
    *,
    namespace: str = "default",
    created: str | None = None,
    shared: str | None = None,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    notes = dict(annotations or {})
    if address is not None:
        notes["kube-vip.io/loadbalancerIPs"] = address
    if shared is not None:
        notes["vip-agent.io/allow-shared-ip"] = shared
    svc = service(
        name,
        [port("http", 80, 8080)],
        namespace=namespace,
        annotations=notes or None,
        type="LoadBalancer",
        **spec,
    )
    if created is not None:
        svc["metadata"]["creationTimestamp"] = created
        svc["metadata"]["uid"] = f"uid-{namespace}-{name}"
    svc["metadata"]["resourceVersion"] = "7"
    return svc


def pools(data: dict[str, str]) -> dict[str, Any]:
    return configmap(data, name="kubevip")


def run(objs: list[Any], host: HostFacts | None = None, **settings_: Any) -> DesiredState:
    return translate(
        Snapshot.from_objects(objs),
        Settings(interface="eth0", **settings_),
        node_name="cp-1",
        interface="eth0",
        host=host,
    )


def held(state: DesiredState) -> set[IPAddress]:
    return {v for i in state.instances for v in (*i.vips, *i.excluded_vips)}


def codes(state: DesiredState) -> dict[str, Reason]:
    return {str(r): r.code for r in state.rejections}


def real_servers(state: DesiredState) -> set[IPAddress]:
    found = {rs.address for vs in state.virtual_servers for rs in vs.real_servers}
    return found | {s.address for li in state.listeners for s in li.servers}


ip = ipaddress.ip_address

# --- addresses no one may claim ------------------------------------------------------

FORBIDDEN_FORMS = [
    "0.0.0.0",
    "0.1.2.3",
    "127.0.0.5",
    "224.0.0.18",
    "255.255.255.255",
    "240.0.0.1",
    "169.254.10.1",
    "::",
    "::1",
    "ff02::12",
    "fe80::1",
    "::ffff:192.0.2.75",
    "::192.0.2.75",
    "fec0::1",
    "100::1",
]


@pytest.mark.parametrize("address", FORBIDDEN_FORMS)
def test_reserved_forms_are_refused_from_the_configmap_and_from_services(address: str) -> None:
    key = address.replace(":", "-")
    state = run([*NODES, configmap({key: ""}), lb("web", address)])
    assert ip(address) not in held(state)
    found = [r for r in state.rejections if r.code is Reason.FORBIDDEN_ADDRESS]
    assert {r.kind for r in found} == {"ConfigMap", "Service"}, codes(state)
    assert all(str(ip(address)) in r.reason and "never a VIP" in r.reason for r in found)


def test_every_address_of_every_node_is_refused() -> None:
    worker = node("worker-2", "198.51.100.22")
    worker["status"]["addresses"] += [
        {"type": "ExternalIP", "address": "203.0.113.22"},
        {"type": "Hostname", "address": "worker-2"},
        {"type": "InternalIP", "address": "2001:db8::22"},
    ]
    cm = configmap({"198.51.100.11": "", "203.0.113.22": "", "2001-db8--22": ""})
    state = run([*NODES, worker, cm, lb("web", "198.51.100.22")])
    assert held(state) == set()
    reasons = [r.reason for r in state.rejections]
    assert "198.51.100.11 is an address of Node cp-1; never a VIP" in reasons
    assert "203.0.113.22 is an address of Node worker-2; never a VIP" in reasons
    assert "2001:db8::22 is an address of Node worker-2; never a VIP" in reasons
    assert "198.51.100.22 is an address of Node worker-2; never a VIP" in reasons


def test_this_nodes_own_network_is_refused_and_the_rest_of_the_subnet_is_not() -> None:
    host = HostFacts(
        addresses=frozenset({ip("192.0.2.2")}),
        subnets=frozenset({ipaddress.ip_network("192.0.2.0/24")}),
        gateways=frozenset({ip("192.0.2.1")}),
    )
    cm = configmap({a: "" for a in ("192.0.2.0", "192.0.2.1", "192.0.2.2", "192.0.2.255")})
    state = run([*NODES, cm, lb("web", "192.0.2.50")], host=host)
    assert held(state) == {ip("192.0.2.50")}
    reasons = sorted(r.reason for r in state.rejections)
    assert reasons == [
        "192.0.2.0 is the network address of 192.0.2.0/24, a subnet of this node; never a VIP",
        "192.0.2.1 is a next hop (gateway) of this node's routes; never a VIP",
        "192.0.2.2 is an address of this node's interfaces; never a VIP",
        "192.0.2.255 is the broadcast address of 192.0.2.0/24, a subnet of this node; never a VIP",
    ]


def test_the_control_plane_vip_may_not_be_a_nodes_address() -> None:
    state = run([*NODES], control_plane_vip="198.51.100.21")
    assert state.apiserver is None and held(state) == set()
    assert [str(r) for r in state.rejections] == [
        "Settings control_plane_vip: 198.51.100.21 is an address of Node worker-1; never a VIP"
    ]


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "0.0.0.0", "169.254.0.9", "224.0.0.1", "fe80::9", "::1"]
)
def test_endpoints_that_never_leave_the_node_or_go_everywhere_are_not_real_servers(
    address: str,
) -> None:
    family = "IPv6" if ":" in address else "IPv4"
    good = "2001:db8::9" if family == "IPv6" else "203.0.113.9"
    vip = "2001-db8--50" if family == "IPv6" else "192.0.2.50"
    eps = [endpoint(address), endpoint(good)]
    objs = [
        *NODES,
        configmap({vip: "default/web", "192.0.2.51": "default/web:PROXY"}),
        service("web", [port("http", 80, 8080)]),
        endpoint_slice("web", [port("http", 8080)], eps, address_type=family),
    ]
    state = run(objs)
    assert ip(address) not in real_servers(state)
    assert ip(good) in real_servers(state)
    bad = [r for r in state.rejections if r.code is Reason.BAD_ENDPOINT]
    assert bad and all(r.obj == "default/web" and address in r.reason for r in bad)


def test_an_endpoint_that_is_itself_a_vip_is_not_a_real_server() -> None:
    objs = [
        *NODES,
        configmap({"192.0.2.50": "default/web", "192.0.2.60": ""}),
        service("web", [port("http", 80, 8080)]),
        endpoint_slice(
            "web", [port("http", 8080)], [endpoint("192.0.2.60"), endpoint("203.0.113.9")]
        ),
    ]
    state = run(objs)
    assert real_servers(state) == {ip("203.0.113.9")}
    assert (
        "Service default/web key 'endpoints (port http)': endpoint 192.0.2.60 is a VIP; "
        "not a real server" in {str(r) for r in state.rejections}
    )


_RESERVED_V4 = ["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4"]
_RESERVED_V6 = ["::/8", "fe80::/10", "fec0::/10", "ff00::/8", "100::/8", "::ffff:0:0/96"]


@st.composite
def reserved_address(draw: st.DrawFn) -> IPAddress:
    network = ipaddress.ip_network(draw(st.sampled_from(_RESERVED_V4 + _RESERVED_V6)))
    offset = draw(st.integers(min_value=0, max_value=network.num_addresses - 1))
    return network[offset]


@settings(max_examples=200, deadline=None)
@given(reserved=st.lists(reserved_address(), min_size=1, max_size=6, unique=True))
def test_no_reserved_address_is_ever_announced_or_a_real_server(reserved: list[IPAddress]) -> None:
    cm = {str(a).replace(":", "-"): "default/web" for a in reserved}
    v4 = [endpoint(str(a)) for a in reserved if a.version == 4] + [endpoint("203.0.113.9")]
    v6 = [endpoint(str(a)) for a in reserved if a.version == 6] + [endpoint("2001:db8::9")]
    objs = [
        *NODES,
        configmap({**cm, "192.0.2.50": "default/web", "2001-db8--50": "default/web"}),
        service("web", [port("http", 80, 8080)]),
        endpoint_slice("web", [port("http", 8080)], v4, name="web-4"),
        endpoint_slice("web", [port("http", 8080)], v6, name="web-6", address_type="IPv6"),
        *(lb(f"lb{i}", str(a)) for i, a in enumerate(reserved)),
    ]
    state = run(objs)
    assert all(reserved_reason(a) for a in reserved), "the strategy draws reserved forms only"
    assert not held(state) & set(reserved)
    assert not real_servers(state) & set(reserved)
    assert {ip("192.0.2.50"), ip("2001:db8::50")} <= held(state), "the rest still applies"


# --- first come, first served --------------------------------------------------------


def test_the_oldest_service_keeps_a_contested_vip_whatever_the_names() -> None:
    prod = lb("web", "192.0.2.75", namespace="prod", created="2024-01-01T00:00:00Z")
    tenant = lb("a", "192.0.2.75", namespace="aaa", created="2024-06-01T00:00:00Z")
    state = run([*NODES, tenant, prod], node_selector="")
    owners = {o for i in state.instances for o in i.owners}
    assert "Service prod/web" in owners and "Service aaa/a" not in owners
    refused = [r for r in state.rejections if r.code is Reason.VIP_OWNED]
    assert [(r.obj, r.reason) for r in refused] == [
        (
            "aaa/a",
            "192.0.2.75 belongs to Service prod/web, created 2024-01-01T00:00:00Z; sharing "
            "needs the same namespace and the same allow-shared-ip annotation on both",
        )
    ]
    accepted = {s.service: s.accepted for s in state.service_vips}
    assert accepted == {("prod", "web"): (ip("192.0.2.75"),), ("aaa", "a"): ()}


def test_write_back_never_gives_a_refused_service_the_owners_vip() -> None:
    prod = lb("web", "192.0.2.75", namespace="prod", created="2024-01-01T00:00:00Z")
    tenant = lb("a", "192.0.2.75", namespace="aaa", created="2024-06-01T00:00:00Z")
    snapshot = Snapshot.from_objects([*NODES, tenant, prod])
    state = translate(snapshot, Settings(), node_name="cp-1", interface="eth0")
    changes = plan_ingress(
        snapshot=snapshot, state=state, node_name="cp-1", held_vips={ip("192.0.2.75")}
    )
    assert {c.service: c.ingress for c in changes} == {("prod", "web"): ("192.0.2.75",)}


@pytest.mark.parametrize(
    ("other_namespace", "mine", "theirs", "metallb", "shared"),
    [
        ("prod", "team", "team", False, True),
        ("prod", "team", "team", True, True),
        ("prod", "team", "other", False, False),
        ("prod", "team", None, False, False),
        ("dev", "team", "team", False, False),
    ],
)
def test_sharing_is_deliberate_and_within_one_namespace(
    other_namespace: str, mine: str, theirs: str | None, metallb: bool, shared: bool
) -> None:
    first = lb("web", "192.0.2.75", namespace="prod", created="2024-01-01T00:00:00Z", shared=mine)
    notes = {"metallb.universe.tf/allow-shared-ip": theirs} if metallb and theirs else None
    second = lb(
        "dns",
        "192.0.2.75",
        namespace=other_namespace,
        created="2024-02-01T00:00:00Z",
        shared=None if metallb else theirs,
        annotations=notes,
    )
    state = run([*NODES, first, second])
    accepted = {s.service[1]: s.accepted for s in state.service_vips}
    assert accepted["web"] == (ip("192.0.2.75"),)
    assert accepted["dns"] == ((ip("192.0.2.75"),) if shared else ())


def test_the_vip_configmap_comes_before_every_service() -> None:
    old = lb("web", "192.0.2.75", namespace="prod", created="2020-01-01T00:00:00Z")
    state = run([*NODES, old, configmap({"192.0.2.75": ""})])
    assert [r.obj for r in state.rejections if r.code is Reason.VIP_OWNED] == ["prod/web"]


# --- pools ---------------------------------------------------------------------------

POOLS = pools(
    {
        "cidr-tenant-a": "192.0.2.64/29",
        "range-global": "192.0.2.200-192.0.2.210, 2001:db8:1::10-2001:db8:1::20",
        "cidr-v6only": "2001:db8:6::/126",
        "some-other-setting": "left alone",
    }
)


def test_with_pools_a_service_may_only_claim_its_namespaces_addresses() -> None:
    objs = [
        *NODES,
        POOLS,
        lb("in", "192.0.2.66", namespace="tenant-a"),
        lb("global", "192.0.2.201", namespace="tenant-a"),
        lb("other", "192.0.2.67", namespace="tenant-b"),
        lb("free", "192.0.2.205", namespace="tenant-b"),
        lb("v6", "2001:db8:6::2", namespace="v6only"),
        lb("v6g", "2001:db8:1::11", namespace="tenant-b"),
    ]
    state = run(objs)
    accepted = {s.service[1]: s.accepted for s in state.service_vips}
    assert accepted == {
        "in": (ip("192.0.2.66"),),
        "global": (),  # tenant-a has pools of its own: the global ones are not its
        "other": (),
        "free": (ip("192.0.2.205"),),
        "v6": (ip("2001:db8:6::2"),),
        "v6g": (ip("2001:db8:1::11"),),
    }
    refused = {r.obj: r.reason for r in state.rejections if r.code is Reason.NOT_IN_POOL}
    assert refused["tenant-b/other"] == (
        "192.0.2.67 is in no pool of namespace tenant-b (ConfigMap kube-system/kubevip: "
        "192.0.2.200-192.0.2.210, 2001:db8:1::10-2001:db8:1::20)"
    )


def test_without_a_pool_configmap_any_allowed_address_may_be_claimed() -> None:
    state = run([*NODES, lb("web", "192.0.2.66", namespace="tenant-b")])
    assert held(state) == {ip("192.0.2.66")}


def test_a_broken_pool_entry_is_reported_and_the_rest_applies() -> None:
    objs = [*NODES, pools({"cidr-global": "192.0.2.64/29, nonsense, 192.0.2.9-192.0.2.1"})]
    state = run([*objs, lb("web", "192.0.2.66")])
    assert held(state) == {ip("192.0.2.66")}
    bad = sorted(r.reason for r in state.rejections if r.code is Reason.BAD_POOL)
    assert bad == [
        "'192.0.2.9-192.0.2.1': the first address is above the last",
        "'nonsense' is neither a CIDR nor a first-last range",
    ]


# --- allocation ----------------------------------------------------------------------


def allocations(state: DesiredState) -> dict[str, tuple[str, ...]]:
    return {a.service[1]: tuple(map(str, a.addresses)) for a in state.allocations}


def test_services_without_an_address_get_the_lowest_free_ones_oldest_first() -> None:
    objs = [
        *NODES,
        pools({"cidr-global": "192.0.2.64/29"}),  # hosts .65 to .70
        configmap({"192.0.2.65": ""}),
        lb("has", "192.0.2.66", created="2024-01-01T00:00:00Z"),
        lb("young", created="2024-03-01T00:00:00Z"),
        lb("old", created="2024-02-01T00:00:00Z"),
        node("cp-2", "192.0.2.67"),
    ]
    state = run(objs, control_plane_vip="192.0.2.68")
    assert allocations(state) == {"old": ("192.0.2.69",), "young": ("192.0.2.70",)}
    assert all(a.resource_version == "7" for a in state.allocations)


def test_an_exhausted_pool_leaves_the_service_pending_and_says_so() -> None:
    objs = [
        *NODES,
        pools({"cidr-global": "192.0.2.64/30"}),  # .65 and .66
        lb("a", created="2024-01-01T00:00:00Z"),
        lb("b", created="2024-01-02T00:00:00Z"),
        lb("c", created="2024-01-03T00:00:00Z"),
    ]
    state = run(objs)
    assert allocations(state) == {"a": ("192.0.2.65",), "b": ("192.0.2.66",)}
    exhausted = [str(r) for r in state.rejections if r.code is Reason.POOL_EXHAUSTED]
    assert exhausted == [
        "Service default/c key 'annotations[kube-vip.io/loadbalancerIPs]': no free IPv4 "
        "address in the pools of namespace default (ConfigMap kube-system/kubevip: "
        "192.0.2.64/30); pending until one is freed"
    ]


@pytest.mark.parametrize(
    ("families", "policy", "expected"),
    [
        (["IPv4"], "SingleStack", ("192.0.2.65",)),
        (["IPv6"], "SingleStack", ("2001:db8:1::1",)),
        (["IPv6", "IPv4"], "PreferDualStack", ("2001:db8:1::1", "192.0.2.65")),
        (["IPv4", "IPv6"], "RequireDualStack", ("192.0.2.65", "2001:db8:1::1")),
        (None, None, ("192.0.2.65",)),
    ],
)
def test_ip_families_decide_what_is_allocated(
    families: list[str] | None, policy: str | None, expected: tuple[str, ...]
) -> None:
    spec: dict[str, Any] = {}
    if families:
        spec = {"ipFamilies": families, "ipFamilyPolicy": policy}
    objs = [*NODES, pools({"cidr-global": "192.0.2.64/30,2001:db8:1::/64"}), lb("web", **spec)]
    assert allocations(run(objs)) == {"web": expected}


def test_dual_stack_required_without_a_v6_pool_is_pending() -> None:
    spec = {"ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack"}
    state = run([*NODES, pools({"cidr-global": "192.0.2.64/30"}), lb("web", **spec)])
    assert allocations(state) == {}
    assert [r.code for r in state.rejections] == [Reason.POOL_EXHAUSTED]


def test_other_load_balancer_classes_are_left_alone_entirely() -> None:
    theirs = lb("theirs", "192.0.2.66", loadBalancerClass="example.com/other")
    unaddressed = lb("theirs-too", loadBalancerClass="example.com/other")
    ours = lb("ours", loadBalancerClass="vip-agent.io/vip-agent")
    objs = [*NODES, pools({"cidr-global": "192.0.2.64/29"}), theirs, unaddressed, ours]
    state = run(objs)
    assert held(state) == set()
    assert allocations(state) == {"ours": ("192.0.2.65",)}
    assert state.service_vips == () and state.rejections == ()


def test_allocation_off_leaves_services_to_another_allocator() -> None:
    objs = [*NODES, pools({"cidr-global": "192.0.2.64/29"}), lb("web")]
    state = run(objs, allocation=False)
    assert state.allocations == () and state.rejections == ()


def test_a_namespace_no_pool_serves_stays_pending() -> None:
    objs = [*NODES, pools({"cidr-tenant-a": "192.0.2.64/29"}), lb("web", namespace="tenant-b")]
    state = run(objs)
    assert state.allocations == ()
    assert [str(r) for r in state.rejections] == [
        "Service tenant-b/web key 'annotations[kube-vip.io/loadbalancerIPs]': no pool serves "
        "namespace tenant-b (ConfigMap kube-system/kubevip has no usable cidr-tenant-b, "
        "range-tenant-b or global entry); pending"
    ]


def test_a_namespace_whose_own_pool_is_broken_gets_no_global_address() -> None:
    """Admins gave the namespace pools of its own: a typo there must not hand it addresses
    meant for everyone else."""
    data = {"cidr-global": "192.0.2.64/29", "cidr-tenant-b": "192.0.2.96/28 oops"}
    state = run([*NODES, pools(data), lb("web", namespace="tenant-b")])
    assert state.allocations == ()
    assert {r.code for r in state.rejections} == {Reason.BAD_POOL, Reason.POOL_EXHAUSTED}


@settings(max_examples=2000, deadline=None)
@given(
    v4=st.integers(min_value=0, max_value=2**32 - 1),
    v6=st.integers(min_value=0, max_value=2**128 - 1),
)
def test_the_fast_path_never_lets_a_reserved_form_through(v4: int, v6: int) -> None:
    """reserved_reason skips ipaddress's slow checks for ordinary addresses; whatever it
    skips must be ordinary by ipaddress's own rules."""
    for address in (ipaddress.IPv4Address(v4), ipaddress.IPv6Address(v6)):
        slow = (
            address.is_unspecified
            or address.is_loopback
            or address.is_multicast
            or address.is_link_local
            or address.is_reserved
            or (address.version == 4 and int(address) >> 24 == 0)
            or (address.version == 6 and (address.is_site_local or address.ipv4_mapped))
        )
        assert (reserved_reason(address) is not None) == bool(slow), address

"""Adding or removing one VIP or one node never changes another VIP's instance, id or priority.

keepalived drops or moves a VIP when its instance's virtual_router_id, name or priority
changes on reload; these properties are what make a Service change hitless for the
VIPs it does not touch.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.model import DesiredState
from agent.core.snapshot import Snapshot
from agent.core.translate import translate
from agent.settings import Settings
from labkit.objects import configmap, node

V4 = st.integers(1, 254).map(lambda i: f"192.0.2.{i}")
V6 = st.integers(1, 2**16).map(lambda i: str(ipaddress.ip_address("2001:db8::") + i))
VIPS = st.sets(st.one_of(V4, V6), min_size=1, max_size=40)
NODE_IDS = st.sets(st.integers(1, 250), min_size=1, max_size=12)


def state(vips: set[str], node_ids: set[int], me: int, **extra: Any) -> DesiredState:
    nodes = [
        node(f"node-{i}", f"198.51.100.{i}", f"2001:db8:1::{i:x}", control_plane=i % 2 == 0)
        for i in sorted(node_ids | {me})
    ]
    data = {v.replace(":", "-"): "" for v in vips}
    s = Settings(interface="eth0", unicast=True, control_plane_vip="203.0.113.10", **extra)
    snap = Snapshot.from_objects([*nodes, configmap(data)])
    return translate(snap, s, node_name=f"node-{me}", interface="eth0")


def placement(s: DesiredState) -> dict[str, tuple[str, int, int]]:
    """VIP -> (instance name, virtual_router_id, priority) on this node."""
    return {
        str(vip): (i.name, i.virtual_router_id, i.priority)
        for i in s.instances
        for vip in (*i.vips, *i.excluded_vips)
    }


def assert_undisturbed(before: DesiredState, after: DesiredState, changed: set[str]) -> None:
    a, b = placement(before), placement(after)
    for vip in (a.keys() & b.keys()) - changed:
        assert a[vip] == b[vip], f"{vip} moved from {a[vip]} to {b[vip]}"


@settings(max_examples=150, deadline=None)
@given(vips=VIPS, extra=st.one_of(V4, V6), nodes=NODE_IDS, me=st.integers(1, 250))
def test_adding_or_removing_a_vip_disturbs_no_other(
    vips: set[str], extra: str, nodes: set[int], me: int
) -> None:
    for spread in (False, True):
        without = state(vips - {extra}, nodes, me, spread=spread)
        with_it = state(vips | {extra}, nodes, me, spread=spread)
        assert_undisturbed(without, with_it, {extra})
        assert_undisturbed(with_it, without, {extra})


@settings(max_examples=150, deadline=None)
@given(vips=VIPS, nodes=NODE_IDS, other=st.integers(1, 250), me=st.integers(1, 250))
def test_a_node_joining_or_leaving_disturbs_no_vip(
    vips: set[str], nodes: set[int], other: int, me: int
) -> None:
    if other == me:
        return
    for spread in (False, True):
        without = state(vips, nodes - {other}, me, spread=spread)
        with_it = state(vips, nodes | {other}, me, spread=spread)
        assert_undisturbed(without, with_it, set())
        # the control-plane instance keeps its id and priority too; only peers change
        cp_before = [i for i in without.instances if i.name == "control_plane"]
        cp_after = [i for i in with_it.instances if i.name == "control_plane"]
        assert [(i.virtual_router_id, i.priority) for i in cp_before] == [
            (i.virtual_router_id, i.priority) for i in cp_after
        ]


@settings(max_examples=50, deadline=None)
@given(vips=st.sets(V4, min_size=30, max_size=60), nodes=st.sets(st.integers(1, 250), min_size=3))
def test_spread_gives_every_node_a_share_of_preferred_vips(vips: set[str], nodes: set[int]) -> None:
    """With spread, the preferred owner (highest priority) is not always the same node."""
    owners: dict[str, str] = {}
    for me in nodes:
        for inst in state(vips, nodes, me, spread=True).instances:
            if inst.name == "control_plane":
                continue
            best = owners.get(inst.name)
            if best is None or inst.priority > int(best.split("@")[1]):
                owners[inst.name] = f"node-{me}@{inst.priority}"
    preferred = {o.split("@")[0] for o in owners.values()}
    assert len(preferred) >= 2

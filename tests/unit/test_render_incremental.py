"""Rendering with a Renderer kept between passes gives what a fresh one gives, byte for byte.

The live agent keeps its Renderer (and its translate memo) between reconciles and reuses
the text of every block whose values did not change.  Over random sequences of the
changes a cluster makes (an endpoint moves, a Service goes, a VIP is added or removed, a
port changes), each pass's files must equal a cold render of the same cluster.  And a
template edited on disk must show at once, with no block kept from the old one.
"""

from __future__ import annotations

import copy
import gc
import ipaddress
import shutil
import weakref
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.assets import template_dirs
from agent.core import render
from agent.core.model import DesiredState
from agent.core.snapshot import Snapshot
from agent.core.translate import LOCAL_PENALTY, PlanMemo, translate
from agent.core.translate.common import Rejections
from agent.core.translate.requests import EntryMemo, configmap_requests
from agent.daemons import config_files_for
from agent.daemons.spec import outputs
from agent.settings import Settings
from tests.conftest import EXAMPLES, ROOT

BASE: list[dict[str, Any]] = yaml.safe_load((EXAMPLES / "cluster.yaml").read_text())["items"]
SETTINGS = Settings(
    node_name="worker-1",
    interface="eth0",
    unicast=True,
    spread=True,
    node_selector="",
    # haproxy has room for one of the example's two PROXY listeners (2 servers each, 3
    # descriptors): most changes keep the first only, some both (agent.core.haproxy_fds)
    haproxy_fd_limit=256,
    haproxy_threads=2,
    haproxy_min_connections=106,
)
FILES = outputs(config_files_for(SETTINGS))
KINDS = [
    "endpoint",
    "drop-service",
    "add-vip",
    "drop-vip",
    "port",
    # each of these is a change translate patches in place, or must see it cannot
    "endpoint-node",
    "no-endpoints",
    "endpoint-port",
    "local",
    "restore",
    "lb-address",
    "node",
    "share",
    "vip-edit",
]
# vip-configmap keys and values that collide: VIPs other requests have (the configmap's
# own, a Service's loadBalancerIP, the shared one), endpoints of other Services, a
# Local-policy Service, PROXY and DR, and an entry held without a Service
EDIT_KEYS = ["192.0.2.50", "192.0.2.53", "192.0.2.61", "192.0.2.70", "192.0.2.90", "203.0.113.11"]
EDIT_VALUES = [
    "default/web",
    "default/static-site:DR",
    "ingress/ingress:PROXY",
    "default/local-app",
    "kube-system/dns",
    "",
]
CHANGES = st.lists(
    st.tuples(st.sampled_from(KINDS), st.integers(0, 10_000)),
    min_size=1,
    max_size=12,
)


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[int]:
    return [i for i, o in enumerate(objs) if o.get("kind") == kind]


def replaced(out: list[dict[str, Any]], kinds: tuple[str, ...], pick: int) -> dict[str, Any] | None:
    """A copy of one object of ``kinds``, put in the place of the original."""
    found = [i for kind in kinds for i in of_kind(out, kind)]
    if not found:
        return None
    i = found[pick % len(found)]
    out[i] = copy.deepcopy(out[i])
    return out[i]


def endpoint_change(obj: dict[str, Any], change: str, pick: int) -> None:
    """Change a slice's or a core/v1 Endpoints' first endpoint, or remove them all."""
    if obj["kind"] == "EndpointSlice":
        if change == "no-endpoints":
            obj["endpoints"] = []
        for ep in obj.get("endpoints", [])[:1]:
            if change == "endpoint":
                ep["addresses"] = [f"198.18.{pick % 250}.{1 + pick % 200}"]
            else:
                ep["nodeName"] = ["worker-1", "worker-2", "cp-1"][pick % 3]
        for port in obj.get("ports", [])[:1] if change == "endpoint-port" else []:
            port["port"] = 80 + pick % 2
        return
    if change == "no-endpoints":
        obj["subsets"] = []
    for subset in obj.get("subsets", [])[:1]:
        for address in subset.get("addresses", [])[:1]:
            if change == "endpoint":
                address["ip"] = f"198.18.{pick % 250}.{1 + pick % 200}"
            else:
                address["nodeName"] = ["worker-1", "worker-2", "cp-1"][pick % 3]
        for port in subset.get("ports", [])[:1] if change == "endpoint-port" else []:
            port["port"] = 80 + pick % 2


def changed(objs: list[dict[str, Any]], change: str, pick: int) -> list[dict[str, Any]]:
    """A new list in which the changed object is a new object (as a watch store does)."""
    out = list(objs)
    if change in ("endpoint", "endpoint-node", "no-endpoints", "endpoint-port"):
        obj = replaced(out, ("EndpointSlice", "Endpoints"), pick)
        if obj is not None:
            endpoint_change(obj, change, pick)
    elif change == "local":
        obj = replaced(out, ("Service",), pick)
        if obj is not None:
            spec = obj.setdefault("spec", {})
            local = spec.get("externalTrafficPolicy") == "Local"
            spec["externalTrafficPolicy"] = "Cluster" if local else "Local"
    elif change == "restore":
        names = {(o["metadata"].get("namespace"), o["metadata"]["name"]) for o in out}
        gone = [
            o for o in BASE if (o["metadata"].get("namespace"), o["metadata"]["name"]) not in names
        ]
        if gone:
            out.append(gone[pick % len(gone)])
    elif change == "lb-address":
        obj = replaced(out, ("Service",), pick)
        if obj is not None:
            obj.setdefault("spec", {}).update(
                type="LoadBalancer", loadBalancerIP=f"192.0.2.{50 + pick % 15}"
            )
    elif change == "node":
        obj = replaced(out, ("Node",), pick)
        if obj is not None:
            obj["status"]["addresses"][0]["address"] = f"198.51.100.{pick % 250}"
    elif change == "drop-service" and of_kind(out, "Service"):
        del out[of_kind(out, "Service")[pick % len(of_kind(out, "Service"))]]
    elif change in ("add-vip", "drop-vip"):
        i = of_kind(out, "ConfigMap")[0]
        obj = copy.deepcopy(out[i])
        data = obj.setdefault("data", {})
        if change == "add-vip":
            data[f"192.0.2.{100 + pick % 100}"] = "default/web"
        elif data:
            del data[sorted(data)[pick % len(data)]]
        out[i] = obj
    elif change == "vip-edit":
        i = of_kind(out, "ConfigMap")[0]
        obj = copy.deepcopy(out[i])
        key = EDIT_KEYS[pick % len(EDIT_KEYS)]
        data = obj.setdefault("data", {})
        if pick % 7 == 0:
            data.pop(key, None)
        else:
            data[key] = EDIT_VALUES[(pick // len(EDIT_KEYS)) % len(EDIT_VALUES)]
        out[i] = obj
    elif change == "port" and of_kind(out, "Service"):
        i = of_kind(out, "Service")[pick % len(of_kind(out, "Service"))]
        obj = copy.deepcopy(out[i])
        for p in obj.get("spec", {}).get("ports", [])[:1]:
            # often a port another request on the same VIP has: who gets it moves
            p["port"] = [80, 443, 8080, 1000 + pick % 1000][pick % 4]
        out[i] = obj
    elif change == "share":
        obj = replaced(out, ("Service",), pick)
        if obj is not None and obj["metadata"].get("namespace") == "default":
            obj.setdefault("spec", {}).update(type="LoadBalancer", loadBalancerIP="192.0.2.70")
            obj["metadata"]["annotations"] = {
                "vip-agent.io/allow-shared-ip": "shared",
                "vip-agent.io/method": ["NAT", "DR", "PROXY"][pick % 3],
            }
    return out


def translated(objs: list[dict[str, Any]], memo: PlanMemo | None) -> DesiredState:
    return translate(
        Snapshot.from_objects(objs), SETTINGS, node_name="worker-1", interface="eth0", memo=memo
    )


def cold_state(objs: list[dict[str, Any]]) -> DesiredState:
    return translated(objs, None)


def cold(objs: list[dict[str, Any]]) -> dict[str, str]:
    return render.Renderer(template_dirs(None), once=True).render(cold_state(objs), FILES)


@settings(max_examples=150, deadline=None)
@given(changes=CHANGES)
def test_a_kept_renderer_renders_what_a_fresh_one_does(changes: list[tuple[str, int]]) -> None:
    memo, renderer = PlanMemo(), render.Renderer(template_dirs(None))
    objs = BASE
    for change, pick in [("endpoint", 0), *changes]:
        objs = changed(objs, change, pick)
        state = translated(objs, memo)
        assert state == cold_state(objs)
        # counted pass by pass (agent.core.translate.passes), never walked
        assert state.listener_checks == sum(len(lst.servers) for lst in state.listeners)
        assert renderer.render(state, FILES) == cold(objs)


def test_an_endpoint_change_forwards_only_its_own_requests_again() -> None:
    """The patched path is the one a live agent takes: one endpoint change forwards the
    requests of one Service, not all (and still gives what a cold translation gives)."""
    memo, objs = PlanMemo(), BASE
    translated(objs, memo)
    for pick in range(6):
        objs = changed(objs, "endpoint", pick)
        state = translated(objs, memo)
        assert state == cold_state(objs)
    assert memo.incremental_passes == 6
    # a Service port moving to a slot no one else has is patched as well
    for pick in (3, 7, 11):
        objs = changed(objs, "port", pick)
        state = translated(objs, memo)
        assert state == cold_state(objs)
    assert memo.incremental_passes == 9


def test_an_edited_template_is_used_at_once_with_no_old_block_kept(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    renderer = render.Renderer([templates])
    state = cold_state(BASE)
    before = renderer.render(state, FILES)["keepalived.conf"]
    assert "delay_loop" in before
    again = renderer.render(state, FILES)["keepalived.conf"]
    assert again == before and len(renderer.blocks) > 0
    path = templates / "keepalived.conf.j2"
    path.write_text(path.read_text().replace("    delay_loop {{", "    delay_loop_EDITED {{"))
    after = renderer.render(state, FILES)["keepalived.conf"]
    assert "delay_loop_EDITED" in after and "    delay_loop " not in after


def test_a_dropped_renderer_is_freed_without_the_cyclic_collector() -> None:
    """Nothing a render leaves behind ties the Renderer into a reference cycle: a cycle
    would keep every value and text of the pass alive until the collector walked them,
    which cost a 5,000-Service dry run a tenth of its time."""
    renderer = render.Renderer(template_dirs(None), once=True)
    assert renderer.render(cold_state(BASE), FILES)["keepalived.conf"]
    gone = weakref.ref(renderer)
    collecting = gc.isenabled()
    gc.disable()
    try:
        del renderer
        assert gone() is None
    finally:
        if collecting:
            gc.enable()


def test_a_port_freed_on_a_shared_vip_goes_to_the_next_request() -> None:
    """Two Services share a VIP and both want port 80: the older (static-site) takes it
    and web's is skipped.  web moving to 8080 and back changes its slots (the pass cannot
    patch); web's endpoint change alone is patched, and must find port 80 taken, or
    free, exactly as before."""
    objs = changed(changed(BASE, "share", 0), "share", 2)  # web and static-site
    assert sum(o.get("spec", {}).get("loadBalancerIP") == "192.0.2.70" for o in objs) == 2
    memo = PlanMemo()
    for port in (80, 8080, 80):
        objs = [copy.deepcopy(o) if o["metadata"]["name"] == "web" else o for o in objs]
        web = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == "web")
        web["spec"]["ports"][0]["port"] = port
        state = translated(objs, memo)
        assert state == cold_state(objs)
        taken = [r for r in state.rejections if "already used" in r.reason]
        assert bool(taken) == (port == 80)
        # web's own change (static-site is older, so first): web finds port 80 taken, or
        # free, as before
        site = next(i for i, o in enumerate(objs) if o["metadata"]["name"] == "web-abc12")
        objs = list(objs)
        objs[site] = copy.deepcopy(objs[site])
        endpoint_change(objs[site], "endpoint", port)
        state = translated(objs, memo)
        assert state == cold_state(objs)
    assert memo.incremental_passes >= 3
    # the older one leaving port 80 frees it for web, which wants it again (and coming
    # back takes it again)
    for port in (81, 80, 81):
        objs = [copy.deepcopy(o) if o["metadata"]["name"] == "static-site" else o for o in objs]
        site = next(
            o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == "static-site"
        )
        site["spec"]["ports"][0]["port"] = port
        state = translated(objs, memo)
        assert state == cold_state(objs)


def configmap_edited(objs: list[dict[str, Any]], **entries: str | None) -> list[dict[str, Any]]:
    """A new list with the vip-configmap's entries set (None: removed); keys use '_'."""
    out = list(objs)
    i = of_kind(out, "ConfigMap")[0]
    out[i] = copy.deepcopy(out[i])
    data = out[i]["data"]
    for key, value in entries.items():
        key = key.replace("_", ".")
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return out


def test_a_vip_added_or_removed_is_patched_in_not_forwarded_all_again() -> None:
    """A vip-configmap entry that comes or goes (an admission change) forwards that one
    request; every other keeps what it forwarded, and the result is a cold one's."""
    memo = PlanMemo()
    translated(BASE, memo)
    objs = BASE
    for entries in (
        {"192_0_2_90": "default/web"},
        {"192_0_2_91": "ingress/ingress:PROXY"},
        {"192_0_2_90": None},
        {"192_0_2_91": "default/static-site:DR"},  # edited: one request goes, one comes
        {"192_0_2_53": None},  # the PROXY entry of the example: its listeners go
    ):
        objs = configmap_edited(objs, **entries)
        assert translated(objs, memo) == cold_state(objs)
    assert memo.incremental_passes == 5


def test_a_vip_that_is_another_services_endpoint_takes_it_out_and_gives_it_back() -> None:
    """web's endpoint 203.0.113.11 becoming a VIP leaves web's virtual servers (never
    forward a VIP to a VIP); the entry going gives it back.  Both patched."""
    memo = PlanMemo()
    translated(BASE, memo)

    def web_servers(state: DesiredState) -> set[str]:
        return {
            str(rs.address)
            for vs in state.virtual_servers
            if vs.service.startswith("default/web:")
            for rs in vs.real_servers
        }

    objs = configmap_edited(BASE, **{"203_0_113_11": "kube-system/dns"})
    state = translated(objs, memo)
    assert state == cold_state(objs)
    assert "203.0.113.11" not in web_servers(state) and "203.0.113.12" in web_servers(state)
    objs = configmap_edited(objs, **{"203_0_113_11": None})
    state = translated(objs, memo)
    assert state == cold_state(objs)
    assert "203.0.113.11" in web_servers(state)
    assert memo.incremental_passes == 2


def test_a_local_policy_vip_added_and_removed_keeps_its_local_endpoint_answer() -> None:
    """A vip-configmap VIP for a Local-policy Service with no endpoint on this node: the
    instance holding it gets the local penalty the moment the entry comes (the answer
    "no local endpoint" is patched in with it), and loses it when the entry goes."""
    objs = list(BASE)
    i = next(k for k, o in enumerate(objs) if o["metadata"]["name"] == "local-app-1")
    objs[i] = copy.deepcopy(objs[i])
    for ep in objs[i]["endpoints"]:
        ep["nodeName"] = "worker-2"
    memo = PlanMemo()
    translated(objs, memo)
    vip = ipaddress.ip_address("192.0.2.95")

    def priority(state: DesiredState) -> int | None:
        return next((inst.priority for inst in state.instances if vip in inst.vips), None)

    plain = configmap_edited(objs, **{"192_0_2_95": "default/web"})
    assert translated(plain, memo) == cold_state(plain)
    local = configmap_edited(objs, **{"192_0_2_95": "default/local-app"})
    state = translated(local, memo)
    assert state == cold_state(local)
    assert priority(state) == priority(cold_state(plain)) - LOCAL_PENALTY  # type: ignore[operator]
    assert translated(objs, memo) == cold_state(objs)
    assert memo.incremental_passes == 3


def test_a_request_that_goes_frees_its_slot_for_the_next_one() -> None:
    """static-site (older) and web share a VIP and both want port 80: web is skipped.
    static-site ceasing to be a LoadBalancer takes its request away, and web must get
    port 80: a request that goes with a slot another has is not patched out."""
    objs = changed(changed(BASE, "share", 0), "share", 2)
    memo = PlanMemo()
    state = translated(objs, memo)
    assert [r for r in state.rejections if "already used" in r.reason]
    objs = [copy.deepcopy(o) if o["metadata"]["name"] == "static-site" else o for o in objs]
    site = next(
        o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == "static-site"
    )
    site["spec"]["type"] = "ClusterIP"
    state = translated(objs, memo)
    assert state == cold_state(objs)
    assert not [r for r in state.rejections if "already used" in r.reason]


def test_vip_configmap_entries_read_before_are_the_same_requests() -> None:
    """An edited vip-configmap reads only its new or edited entries again: the others are
    the very request objects of last time, which is what lets forwarding match them."""
    memo: EntryMemo = {}
    first = configmap_requests(Snapshot.from_objects(BASE), SETTINGS, rej=Rejections(), memo=memo)
    objs = configmap_edited(BASE, **{"192_0_2_90": "default/web", "192_0_2_51": None})
    rej = Rejections()
    again = configmap_requests(Snapshot.from_objects(objs), SETTINGS, rej=rej, memo=memo)
    kept = {r.key: r for r in first}
    assert [r.key for r in again if r is not kept.get(r.key)] == ["192.0.2.90"]
    assert "192.0.2.51" not in {r.key for r in again}
    # the rejections of entries read before are reported again, as a fresh read's
    fresh = Rejections()
    assert again == configmap_requests(Snapshot.from_objects(objs), SETTINGS, rej=fresh)
    assert rej.items == fresh.items and len(fresh.items) == 2
    assert set(memo) == {
        ("kube-system/vip-configmap", k, v)
        for k, v in objs_data(objs).items()
        if isinstance(v, str)
    }


def objs_data(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(objs[of_kind(objs, "ConfigMap")[0]]["data"])

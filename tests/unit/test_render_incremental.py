"""Rendering with a Renderer kept between passes gives what a fresh one gives, byte for byte.

The live agent keeps its Renderer (and its translate memo) between reconciles and reuses
the text of every block whose values did not change.  Over random sequences of the
changes a cluster makes (an endpoint moves, a Service goes, a VIP is added or removed, a
port changes), each pass's files must equal a cold render of the same cluster.  And a
template edited on disk must show at once, with no block kept from the old one.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.assets import template_dirs
from agent.core import render
from agent.core.model import DesiredState
from agent.core.snapshot import Snapshot
from agent.core.translate import PlanMemo, translate
from agent.daemons import config_files_for
from agent.daemons.spec import outputs
from agent.settings import Settings
from tests.conftest import EXAMPLES, ROOT

BASE: list[dict[str, Any]] = yaml.safe_load((EXAMPLES / "cluster.yaml").read_text())["items"]
SETTINGS = Settings(
    node_name="worker-1", interface="eth0", unicast=True, spread=True, node_selector=""
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


def cold_state(objs: list[dict[str, Any]]) -> DesiredState:
    return translate(Snapshot.from_objects(objs), SETTINGS, node_name="worker-1", interface="eth0")


def cold(objs: list[dict[str, Any]]) -> dict[str, str]:
    return render.Renderer(template_dirs(None)).render(cold_state(objs), FILES)


@settings(max_examples=150, deadline=None)
@given(changes=CHANGES)
def test_a_kept_renderer_renders_what_a_fresh_one_does(changes: list[tuple[str, int]]) -> None:
    memo, renderer = PlanMemo(), render.Renderer(template_dirs(None))
    objs = BASE
    for change, pick in [("endpoint", 0), *changes]:
        objs = changed(objs, change, pick)
        state = translate(
            Snapshot.from_objects(objs), SETTINGS, node_name="worker-1", interface="eth0", memo=memo
        )
        assert state == cold_state(objs)
        assert renderer.render(state, FILES) == cold(objs)


def test_an_endpoint_change_forwards_only_its_own_requests_again() -> None:
    """The patched path is the one a live agent takes: one endpoint change forwards the
    requests of one Service, not all (and still gives what a cold translation gives)."""
    memo, objs = PlanMemo(), BASE
    translate(
        Snapshot.from_objects(objs), SETTINGS, node_name="worker-1", interface="eth0", memo=memo
    )
    for pick in range(6):
        objs = changed(objs, "endpoint", pick)
        state = translate(
            Snapshot.from_objects(objs), SETTINGS, node_name="worker-1", interface="eth0", memo=memo
        )
        assert state == cold_state(objs)
    assert memo.incremental_passes == 6
    # a Service port moving to a slot no one else has is patched as well
    for pick in (3, 7, 11):
        objs = changed(objs, "port", pick)
        state = translate(
            Snapshot.from_objects(objs), SETTINGS, node_name="worker-1", interface="eth0", memo=memo
        )
        assert state == cold_state(objs)
    assert memo.incremental_passes == 9


def test_an_edited_template_is_used_at_once_with_no_old_block_kept(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    renderer = render.Renderer([templates])
    state = translate(Snapshot.from_objects(BASE), SETTINGS, node_name="worker-1", interface="eth0")
    before = renderer.render(state, FILES)["keepalived.conf"]
    assert "delay_loop" in before
    again = renderer.render(state, FILES)["keepalived.conf"]
    assert again == before and len(renderer.blocks) > 0
    path = templates / "keepalived.conf.j2"
    path.write_text(path.read_text().replace("    delay_loop {{", "    delay_loop_EDITED {{"))
    after = renderer.render(state, FILES)["keepalived.conf"]
    assert "delay_loop_EDITED" in after and "    delay_loop " not in after


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
        state = translate(
            Snapshot.from_objects(objs), SETTINGS, node_name="worker-1", interface="eth0", memo=memo
        )
        assert state == cold_state(objs)
        taken = [r for r in state.rejections if "already used" in r.reason]
        assert bool(taken) == (port == 80)
        # web's own change (static-site is older, so first): web finds port 80 taken, or
        # free, as before
        site = next(i for i, o in enumerate(objs) if o["metadata"]["name"] == "web-abc12")
        objs = list(objs)
        objs[site] = copy.deepcopy(objs[site])
        endpoint_change(objs[site], "endpoint", port)
        state = translate(
            Snapshot.from_objects(objs), SETTINGS, node_name="worker-1", interface="eth0", memo=memo
        )
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
        state = translate(
            Snapshot.from_objects(objs), SETTINGS, node_name="worker-1", interface="eth0", memo=memo
        )
        assert state == cold_state(objs)

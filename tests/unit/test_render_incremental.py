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
CHANGES = st.lists(
    st.tuples(
        st.sampled_from(["endpoint", "drop-service", "add-vip", "drop-vip", "port"]),
        st.integers(0, 10_000),
    ),
    min_size=1,
    max_size=8,
)


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[int]:
    return [i for i, o in enumerate(objs) if o.get("kind") == kind]


def changed(objs: list[dict[str, Any]], change: str, pick: int) -> list[dict[str, Any]]:
    """A new list in which the changed object is a new object (as a watch store does)."""
    out = list(objs)
    if change == "endpoint" and of_kind(out, "EndpointSlice"):
        i = of_kind(out, "EndpointSlice")[pick % len(of_kind(out, "EndpointSlice"))]
        obj = copy.deepcopy(out[i])
        for ep in obj.get("endpoints", [])[:1]:
            ep["addresses"] = [f"198.18.{pick % 250}.{1 + pick % 200}"]
        out[i] = obj
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
            p["port"] = 1000 + pick % 1000
        out[i] = obj
    return out


def cold(objs: list[dict[str, Any]]) -> dict[str, str]:
    state = translate(Snapshot.from_objects(objs), SETTINGS, node_name="worker-1", interface="eth0")
    return render.Renderer(template_dirs(None)).render(state, FILES)


@settings(max_examples=60, deadline=None)
@given(changes=CHANGES)
def test_a_kept_renderer_renders_what_a_fresh_one_does(changes: list[tuple[str, int]]) -> None:
    memo, renderer = PlanMemo(), render.Renderer(template_dirs(None))
    objs = BASE
    for change, pick in [("endpoint", 0), *changes]:
        objs = changed(objs, change, pick)
        state = translate(
            Snapshot.from_objects(objs), SETTINGS, node_name="worker-1", interface="eth0", memo=memo
        )
        assert renderer.render(state, FILES) == cold(objs)


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

"""Hostile text in any cluster field can never add a line, block, directive or script.

Every hostile string carries the marker PWNED, which no valid Kubernetes name, address
or port can contain (names are lower case), so the exact check is: PWNED never appears
in a rendered file, the files have exactly the blocks the model has, and the real
keepalived and haproxy still accept them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.assets import template_dirs
from agent.core import render
from agent.core.model import DesiredState
from agent.core.snapshot import Snapshot
from agent.core.translate import translate
from agent.daemons import config_files_for
from agent.daemons.spec import outputs
from agent.settings import Settings
from labkit.checkers import Checkers
from tests.conftest import EXAMPLES

BASE: list[dict[str, Any]] = yaml.safe_load((EXAMPLES / "cluster.yaml").read_text())["items"]
SETTINGS = Settings(
    node_name="worker-1",
    interface="eth0",
    unicast=True,
    spread=True,
    control_plane_vip="192.0.2.10",
    node_selector="",
)

ATTACKS = [
    '\n}\nvrrp_script PWNED {\n    script "/bin/sh -c id"\n}\n',
    "x PWNED\n    notify_master /bin/sh",
    "PWNED # comment",
    '"PWNED"',
    "PWNED{",
    "192.0.2.50\nPWNED",
    "default/web\nvirtual_server PWNED 1 {",
    "web:NAT\n}\nglobal_defs { PWNED }",
    "PWNED\x00\r\n",
    "!PWNED",
    "$PWNED",
    "@PWNED",
    "\uff30\uff37\uff2e\uff25\uff24 PWNED",  # full-width look-alikes
]
HOSTILE = st.one_of(
    st.sampled_from(ATTACKS),
    st.builds(
        lambda a, b: a + "PWNED" + b,
        st.text(alphabet=" \t\n\r{}\"'#!;:/\\$@=,.", max_size=6),
        st.text(max_size=12),
    ),
)


def kind(objs: list[dict[str, Any]], k: str, name: str | None = None) -> dict[str, Any]:
    """The object at the position it has in BASE, so an earlier injection that renamed it
    does not hide it from a later one."""
    index = next(
        i for i, o in enumerate(BASE) if o["kind"] == k and name in (None, o["metadata"]["name"])
    )
    return objs[index]


def cm(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return kind(objs, "ConfigMap")["data"]


Injection = Callable[[list[dict[str, Any]], str], None]

INJECTIONS: dict[str, Injection] = {
    "configmap key": lambda o, h: cm(o).__setitem__(h, "default/web"),
    "configmap value": lambda o, h: cm(o).__setitem__("192.0.2.50", h),
    "configmap method": lambda o, h: cm(o).__setitem__("192.0.2.50", "default/web:" + h),
    "configmap service": lambda o, h: cm(o).__setitem__("192.0.2.50", h + "/web"),
    "service name": lambda o, h: kind(o, "Service", "web")["metadata"].__setitem__("name", h),
    "service namespace": lambda o, h: kind(o, "Service", "web")["metadata"].__setitem__(
        "namespace", h
    ),
    "port name": lambda o, h: kind(o, "Service", "web")["spec"]["ports"][0].__setitem__("name", h),
    "target port": lambda o, h: kind(o, "Service", "web")["spec"]["ports"][0].__setitem__(
        "targetPort", h
    ),
    "protocol": lambda o, h: kind(o, "Service", "web")["spec"]["ports"][1].__setitem__(
        "protocol", h
    ),
    "port number": lambda o, h: kind(o, "Service", "dns")["spec"]["ports"][0].__setitem__(
        "port", h
    ),
    "scheduler annotation": lambda o, h: kind(o, "Service", "static-site")["metadata"][
        "annotations"
    ].__setitem__("vip-agent.io/scheduler", h),
    "method annotation": lambda o, h: kind(o, "Service", "local-app")["metadata"][
        "annotations"
    ].__setitem__("vip-agent.io/method", h),
    "kube-vip annotation": lambda o, h: kind(o, "Service", "kube-vip-style")["metadata"][
        "annotations"
    ].__setitem__("kube-vip.io/loadbalancerIPs", "192.0.2.60," + h),
    "loadBalancerIP": lambda o, h: kind(o, "Service", "local-app")["spec"].__setitem__(
        "loadBalancerIP", h
    ),
    "affinity timeout": lambda o, h: kind(o, "Service", "web")["spec"]["sessionAffinityConfig"][
        "clientIP"
    ].__setitem__("timeoutSeconds", h),
    "endpoint address": lambda o, h: kind(o, "EndpointSlice", "web-abc12")["endpoints"][0][
        "addresses"
    ].__setitem__(0, h),
    "slice port name": lambda o, h: kind(o, "EndpointSlice", "ingress-q9")["ports"][0].__setitem__(
        "name", h
    ),
    "slice port": lambda o, h: kind(o, "EndpointSlice", "dns-x1")["ports"][0].__setitem__(
        "port", h
    ),
    "slice name": lambda o, h: kind(o, "EndpointSlice", "web-abc12")["metadata"].__setitem__(
        "name", h
    ),
    "endpoint node": lambda o, h: kind(o, "EndpointSlice", "local-app-1")["endpoints"][
        0
    ].__setitem__("nodeName", h),
    "address type": lambda o, h: kind(o, "EndpointSlice", "web-abc12").__setitem__(
        "addressType", h
    ),
    "endpoints ip": lambda o, h: kind(o, "Endpoints")["subsets"][0]["addresses"][0].__setitem__(
        "ip", h
    ),
    "node name": lambda o, h: kind(o, "Node", "cp-2")["metadata"].__setitem__("name", h),
    "node address": lambda o, h: kind(o, "Node", "cp-3")["status"]["addresses"][0].__setitem__(
        "address", h
    ),
    "node label": lambda o, h: kind(o, "Node", "cp-1")["metadata"]["labels"].__setitem__(h, h),
    "bgp communities": lambda o, h: kind(o, "Service", "kube-vip-style")["metadata"][
        "annotations"
    ].__setitem__("vip-agent.io/bgp-communities", "64500:100," + h),
}

BGP_SETTINGS = Settings(
    node_name="cp-1",
    interface="eth0",
    control_plane_vip="192.0.2.10",
    mode="bgp",
    bgp_local_as=64501,
    bgp_peers=("198.51.100.1:64500:s3cr3t", "[2001:db8:100::1]:64500"),
    bgp_communities=("64500:1",),
)

ATTACK_PLANS = st.lists(
    st.tuples(st.sampled_from(sorted(INJECTIONS)), HOSTILE), min_size=1, max_size=4
)


def attacked(
    plan: list[tuple[str, str]], settings_: Settings = SETTINGS
) -> tuple[DesiredState, dict[str, str]]:
    objs = copy.deepcopy(BASE)
    for where, text in plan:
        INJECTIONS[where](objs, text)
    assert settings_.node_name is not None
    state = translate(
        Snapshot.from_objects(objs), settings_, node_name=settings_.node_name, interface="eth0"
    )
    files = outputs(config_files_for(settings_))
    return state, render.Renderer(template_dirs(None)).render(state, files)


def assert_bird_contained(state: DesiredState, bird: str) -> None:
    """bird.conf announces exactly the VIPs of the model, to exactly its peers."""
    assert state.bgp is not None
    assert "PWNED" not in bird
    assert len(re.findall(r"^protocol bgp ", bird, re.M)) == len(state.bgp.peers)
    routes = re.findall(r"^\s+route (\S+) unreachable;", bird, re.M)
    static = {f"{a.vip}/{a.vip.max_prefixlen}" for a in state.bgp.announcements if not a.gated}
    assert set(routes) == static
    exported = set(re.findall(r"^\s+([0-9a-f:.]+/(?:32|128)),?$", bird, re.M))
    assert exported == {f"{a.vip}/{a.vip.max_prefixlen}" for a in state.bgp.announcements}
    for line in bird.splitlines():
        assert line.isascii() and line.isprintable(), repr(line)


def assert_contained(state: DesiredState, files: dict[str, str]) -> None:
    for name, text in files.items():
        assert "PWNED" not in text, f"{name} carries injected text"
        assert "\x00" not in text and "\r" not in text
    keepalived, haproxy = files["keepalived.conf"], files["haproxy.cfg"]
    assert len(re.findall(r"^vrrp_instance ", keepalived, re.M)) == len(state.instances)
    assert len(re.findall(r"^virtual_server ", keepalived, re.M)) == len(state.virtual_servers)
    assert len(re.findall(r"^listen ", haproxy, re.M)) == len(state.listeners)
    assert not re.search(r"^\s*(script|notify\w*|vrrp_script)\b", keepalived, re.M)
    for line in (*keepalived.splitlines(), *haproxy.splitlines()):
        assert line.isascii() and line.isprintable(), repr(line)
    for rejection in state.rejections:
        assert "\n" not in str(rejection)


@settings(max_examples=400, deadline=None)
@given(plan=ATTACK_PLANS)
def test_hostile_input_never_reaches_a_rendered_file(plan: list[tuple[str, str]]) -> None:
    state, files = attacked(plan)
    assert_contained(state, files)
    # the attack was noticed and reported, not silently dropped or rendered
    assert state.rejections or all(w in {"node label", "endpoint node"} for w, _ in plan)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=ATTACK_PLANS)
def test_hostile_input_output_still_validates(
    plan: list[tuple[str, str]], checkers: Checkers
) -> None:
    state, files = attacked(plan)
    assert_contained(state, files)
    kept = checkers.keepalived(files["keepalived.conf"])
    assert kept.ok, kept.output
    ha = checkers.haproxy(files["haproxy.cfg"])
    assert ha.ok, ha.output


@settings(max_examples=200, deadline=None)
@given(plan=ATTACK_PLANS)
def test_hostile_input_never_reaches_bird_conf(plan: list[tuple[str, str]]) -> None:
    state, files = attacked(plan, BGP_SETTINGS)
    assert_bird_contained(state, files["bird.conf"])
    assert state.rejections or all(w in {"node label", "endpoint node"} for w, _ in plan)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=ATTACK_PLANS)
def test_hostile_input_bird_conf_still_validates(
    plan: list[tuple[str, str]], checkers: Checkers
) -> None:
    state, files = attacked(plan, BGP_SETTINGS)
    assert_bird_contained(state, files["bird.conf"])
    checked = checkers.bird(files["bird.conf"])
    assert checked.ok, checked.output


def test_everything_else_still_renders_next_to_a_rejection() -> None:
    clean, clean_files = attacked([])
    state, files = attacked([("configmap key", ATTACKS[0])])
    assert len(state.rejections) == len(clean.rejections) + 1
    assert state.virtual_servers == clean.virtual_servers
    assert files == clean_files

"""Mode bgp end to end: the real agent drives BIRD on two nodes, FRR is the router.

labkit.bgp_agents builds the lab (two control-plane nodes running ``vip-agent run`` in
static mode with BIRD, haproxy and keepalived supervised, a stand-in apiserver each, FRR
upstream, a client behind it).  What is checked is what the router does: its kernel FIB
(which nodes it forwards a VIP to) and its session counters, and what a client calling the
VIP through it gets.  The figures these tests print are the lab's; the benchmark
(bench/bgp_lab.py) measures them over many trials.

One lab serves the whole module (it takes ~5 s to build); each test starts from every
session up and every VIP announced, and puts back what it stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator

import psutil
import pytest

from labkit.bgp_agents import (
    BASE_VIPS,
    CONTROL_PLANE_VIP,
    LOCAL4,
    PORT,
    WEB4,
    WEB6,
    AgentBgpLab,
    peers,
)
from labkit.bgplab import RouteWatch, wait_for
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("bgp_ready")

BOTH = frozenset({"n1", "n2"})


@pytest.fixture(scope="module")
def module_lab(bgp_ready: None) -> Iterator[AgentBgpLab]:
    with AgentBgpLab() as lab:
        lab.wait_ready()
        yield lab


@pytest.fixture
def lab(module_lab: AgentBgpLab) -> AgentBgpLab:
    """The module's lab, every session up and the base VIPs announced (checked, not assumed)."""
    if module_lab.vips != BASE_VIPS:
        module_lab.set_vips(BASE_VIPS)
    module_lab.wait_ready()
    return module_lab


def established(lab: AgentBgpLab, node: str) -> tuple[int, int]:
    """The router's (sessions established, sessions dropped) counters for ``node``."""
    session = lab.bgp.session(node)
    return session.established, session.dropped


def gap(watch: RouteWatch, since: float, node_address: str) -> list[tuple[float, int]]:
    """Changes of the watched prefix after ``since`` in which ``node_address`` was missing."""
    return [(round(t, 3), len(h)) for t, h in watch.changes(since) if node_address not in h]


def restart_agent(lab: AgentBgpLab, name: str) -> None:
    agent = lab.agents[name]
    agent.start()
    lab.bgp.wait_established(name, timeout=60)


def test_each_node_announces_its_vips_and_the_router_spreads_clients_over_both(
    lab: AgentBgpLab, report: list[str]
) -> None:
    # the control-plane VIP and both Service VIPs from both nodes (ECMP); the IPv6 VIP over
    # the same IPv4 session; the Local-policy VIP only where its endpoint is
    for vip in (CONTROL_PLANE_VIP, WEB4, WEB6):
        assert lab.fib(vip) == BOTH, vip
    assert lab.fib(LOCAL4) == {"n1"}
    for vip in (WEB4, WEB6):
        answers = lab.bgp.calls(vip, PORT, count=40)
        assert answers["-"] == 0, answers
        assert set(answers) == BOTH, answers
        report.append(f"ECMP {vip}: {dict(answers)}")
    for name in BOTH:
        text = (lab.agents[name].node.dir / "etc" / "bird.conf").read_text()
        assert "lab-secret" in text  # the peer's MD5 password reached BIRD...
        assert "lab-secret" not in lab.agents[name].log_text()  # ...and never the log
        assert (lab.agents[name].node.dir / "etc" / "bird.conf").stat().st_mode & 0o077 == 0


def test_unhealthy_apiserver_withdraws_the_control_plane_vip_without_a_reload(
    lab: AgentBgpLab, report: list[str]
) -> None:
    before = established(lab, "n1")
    n1 = lab.agents["n1"]
    reloads = n1.log_text().count("bird: reloaded")
    try:
        n1.healthy(False)
        withdrawn = lab.wait_fib(CONTROL_PLANE_VIP, {"n2"}, timeout=5)
        # only the gated VIP goes: the Service VIPs stay on both nodes
        assert lab.fib(WEB4) == BOTH
    finally:
        n1.healthy(True)
    back = lab.wait_fib(CONTROL_PLANE_VIP, BOTH, timeout=10)
    assert established(lab, "n1") == before, "the session was reset"
    assert n1.log_text().count("bird: reloaded") == reloads, "the gate needed a reload"
    report.append(f"withdrawn {withdrawn:.3f} s after the apiserver failed, back {back:.3f} s")
    assert withdrawn < 2.0


def test_a_hundred_vip_changes_never_reset_the_session(lab: AgentBgpLab, report: list[str]) -> None:
    before = {name: established(lab, name) for name in BOTH}
    took = []
    for i in range(50):
        extra = f"192.0.2.{150 + i % 20}"
        start = time.monotonic()
        lab.set_vips({**BASE_VIPS, extra: "default/web"})
        lab.wait_fib(extra, BOTH, timeout=10)
        lab.set_vips(BASE_VIPS)
        lab.wait_fib(extra, (), timeout=10)
        took.append(time.monotonic() - start)
    assert {name: established(lab, name) for name in BOTH} == before
    assert lab.fib(WEB4) == BOTH
    report.append(f"100 changes, announce+withdraw p50 {sorted(took)[25]:.3f} s, sessions kept")


def test_agent_sigkill_and_bird_kill9_leave_the_routes_in_place(
    lab: AgentBgpLab, report: list[str]
) -> None:
    n1 = lab.agents["n1"]
    address = n1.node.address
    with RouteWatch(lab.bgp, f"{WEB4}/32") as watch:
        start = time.monotonic()
        # the agent dies: BIRD carries on alone, and the restarted agent adopts it
        bird = n1.bird_pid()
        n1.signal(signal.SIGKILL)
        time.sleep(1.0)
        restart_agent(lab, "n1")
        wait_for(lambda: "adopted running pid" in n1.log_text(), timeout=15, what="adoption")
        assert n1.bird_pid() == bird
        # BIRD dies: the agent restarts it with -R, the router keeps the routes as stale
        # until the new BIRD has announced them again (graceful restart)
        killed = time.monotonic()
        os.kill(bird or 0, signal.SIGKILL)
        wait_for(lambda: n1.bird_pid() not in (None, bird), timeout=15, what="BIRD restarted")
        lab.bgp.wait_established("n1", timeout=30)
        time.sleep(1.5)
        samples = watch.samples
        restarted = psutil.Process(n1.bird_pid() or 0).cmdline()
    assert gap(watch, start, address) == [], watch.changes(start)
    assert "-R" in restarted, restarted
    report.append(
        f"agent SIGKILL + BIRD kill -9: no gap in {samples} FIB samples; "
        f"BIRD back {time.monotonic() - killed:.1f} s"
    )


def test_agent_sigterm_withdraws_at_once(lab: AgentBgpLab, report: list[str]) -> None:
    n1 = lab.agents["n1"]
    try:
        assert n1.proc is not None
        stopped = time.monotonic()
        n1.proc.send_signal(signal.SIGTERM)
        withdrawn = lab.wait_fib(WEB4, {"n2"}, timeout=5)
        n1.proc.wait(timeout=15)
        took = time.monotonic() - stopped
        assert n1.proc.returncode == 0
        # everything it announced went, not only the one watched
        assert lab.fib(WEB6) == {"n2"} and lab.fib(CONTROL_PLANE_VIP) == {"n2"}
        assert lab.fib(LOCAL4) == frozenset()
        assert lab.bgp.calls(WEB4, PORT, count=20)["n2"] == 20
    finally:
        restart_agent(lab, "n1")
    report.append(f"SIGTERM: withdrawn at the router {withdrawn:.3f} s, agent gone {took:.3f} s")
    assert withdrawn < 1.0
    assert took < 2.0  # its daemons were adopted by the restart in the test before


def test_a_dead_node_is_withdrawn_by_bfd_and_clients_recover(
    lab: AgentBgpLab, report: list[str]
) -> None:
    n1 = lab.agents["n1"]
    try:
        cut = time.monotonic()
        n1.node.link(False)  # silent: no TCP close, no notification, only BFD can tell
        gone = lab.wait_fib(WEB4, {"n2"}, timeout=5)
        answers = lab.bgp.calls(WEB4, PORT, count=20)
        recovered = time.monotonic() - cut
        assert answers["n2"] == 20, answers
    finally:
        n1.node.link(True)
    report.append(f"node death: route gone {gone:.3f} s, 20/20 calls answered at {recovered:.3f} s")
    assert gone < 1.0


def test_a_broken_bird_template_keeps_the_running_config(
    lab: AgentBgpLab, tmp_path_factory: pytest.TempPathFactory
) -> None:
    n2 = lab.agents["n2"]
    templates = tmp_path_factory.mktemp("templates")
    shutil.copytree(ROOT / "templates", templates, dirs_exist_ok=True)
    live = n2.node.dir / "etc" / "bird.conf"
    try:
        n2.signal(signal.SIGTERM)
        n2.write_config(templates=str(templates), bgp_peers=peers(bfd=True))
        restart_agent(lab, "n2")
        lab.wait_fib(WEB4, BOTH)
        good, bird = live.read_text(), n2.bird_pid()
        template = templates / "bird.conf.j2"
        template.write_text(template.read_text() + "\nno_such_keyword {{ node }};\n")
        failed = live.with_name("bird.conf.failed")
        wait_for(failed.exists, timeout=15, what="bird.conf.failed written")
        assert "no_such_keyword" in failed.read_text()
        assert live.read_text() == good and n2.bird_pid() == bird
        assert lab.fib(WEB4) == BOTH
    finally:
        n2.signal(signal.SIGTERM)
        n2.write_config(bgp_peers=peers(bfd=True))
        restart_agent(lab, "n2")

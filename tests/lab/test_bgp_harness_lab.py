"""The BGP lab proven against real FRR 8.4 and BIRD 2.0.12, before the agent drives BIRD.

BIRD runs by hand here, from the reference configuration in labkit.bgplab (what the agent's
template has to match), against FRR as the upstream router.  Each test prints what it
measured (lines after the test's name, shown even without ``-s``), and the bounds asserted are
generous next to those figures: what is proven is the behaviour, the figures are reported.

What the agent side must respect, each shown by a test here:
- BFD on both sides, or a node that dies silently keeps its routes for the hold time;
  FRR withdraws within ~0.3 s of BFD going down.
- kill -9 of BIRD closes its TCP session at once: without graceful restart the router
  withdraws at once; with graceful restart it keeps the routes as stale (BFD or not), and a
  BIRD restarted with ``-R`` refreshes them without a gap.  Restarted *without* ``-R`` BIRD
  does not set the forwarding-state bit, FRR flushes the stale routes on the new OPEN, and
  the VIP is gone until BIRD announces it again.
- ``birdc configure`` and routes toggled in a kernel table BIRD learns from change what is
  announced within a tenth of a second without touching the session.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from labkit.bgplab import (
    BfdMode,
    BgpLab,
    Bird,
    Node,
    RouteWatch,
    reference_bird_conf,
    wait_for,
)

VIP4 = "192.0.2.100"
VIP6 = "2001:db8::100"
EXTRA_VIP = "192.0.2.101"
GATED4 = "192.0.2.10"
GATED6 = "2001:db8::10"
GATE_TABLE = 100
PORT = 8080


pytestmark = pytest.mark.usefixtures("bgp_ready")


def conf(
    node: Node,
    *,
    vips: tuple[str, ...] = (VIP4, VIP6),
    bfd: BfdMode = "on",
    graceful_restart: bool = True,
    password: str | None = None,
    gated: bool = False,
) -> str:
    return reference_bird_conf(
        router_id=node.address,
        address6=node.address6,
        vips=vips,
        bfd=bfd,
        graceful_restart=graceful_restart,
        password=password,
        gate_table=GATE_TABLE if gated else None,
        gated_vips=(GATED4, GATED6) if gated else (),
        log=node.dir / "bird-own.log",
    )


def start_bird(
    lab: BgpLab,
    name: str,
    *,
    bfd: BfdMode = "on",
    graceful_restart: bool = True,
    gated: bool = False,
) -> Bird:
    """The VIPs on the node's lo and BIRD announcing them; returns once the session is
    Established with BFD Up on both sides (when BFD is on) and the router forwards both VIPs
    to the node."""
    node = lab.nodes[name]
    node.add_vip(VIP4)
    node.add_vip(VIP6)
    bird = Bird(node)
    bird.start(conf(node, bfd=bfd, graceful_restart=graceful_restart, gated=gated))
    lab.wait_established(name, bird=bird, bfd=bfd != "off")
    wait_for(
        lambda: name in lab.fib_nodes(f"{VIP4}/32") & lab.fib_nodes(f"{VIP6}/128"),
        timeout=10,
        what=f"both VIPs via {name}",
    )
    return bird


def hops_without(node: Node) -> Callable[[frozenset[str]], bool]:
    """A RouteWatch condition: ``node`` is not among the next hops."""
    mine = {node.address, node.address6, node.link_local}
    return lambda hops: not hops & mine


def offsets(watch: RouteWatch, since: float) -> list[tuple[float, int]]:
    """The watch's changes as (seconds, number of next hops), for the report."""
    return [(round(t, 3), len(hops)) for t, hops in watch.changes(since)]


@pytest.mark.parametrize("bfd", ["on", "graceful"])
def test_cold_start_establishes_with_md5_and_bfd(bfd: BfdMode, report: list[str]) -> None:
    with BgpLab(("n1",), passwords={"n1": "lab-secret"}) as lab:
        node = lab.nodes["n1"]
        node.add_vip(VIP4)
        node.add_vip(VIP6)
        bird = Bird(node)
        with RouteWatch(lab, f"{VIP4}/32") as w4, RouteWatch(lab, f"{VIP6}/128") as w6:
            start = time.monotonic()
            bird.start(conf(node, bfd=bfd, password="lab-secret"))
            up = lab.wait_established("n1", bird=bird)
            wait_for(lambda: bool(w4.current() and w6.current()), timeout=10, what="VIP in FIB")
            routed = max(w4.first(start, bool) or 0.0, w6.first(start, bool) or 0.0)
        session = lab.session("n1")
        assert lab.router_routes(VIP4) == {node.address}
        assert lab.router_routes(VIP6) == {node.address6}
        assert lab.fib_nodes(f"{VIP4}/32") == lab.fib_nodes(f"{VIP6}/128") == {"n1"}
        # FRR re-binds its BFD session to the session's addresses when BGP first comes up;
        # when BIRD's BFD was already Up it sees Up -> Down and restarts BGP once.  Under
        # load bgpd may also reset a session that opened before it had applied the
        # address families ("No AFI/SAFI activated for peer", seen once in CI): once more.
        reset_for_afi = "AFI/SAFI" in (session.last_reset or "")
        assert session.established in (1, 2) or (session.established == 3 and reset_for_afi), (
            session
        )
        assert up < 10.0
        report.append(
            f"cold start (MD5, bfd {bfd}): Established with BFD Up {up:.2f} s after BIRD "
            f"started ({session.established} session(s)), v4+v6 VIP in the router FIB "
            f"after {routed:.2f} s"
        )


def test_two_nodes_announcing_one_vip_give_ecmp(report: list[str]) -> None:
    with BgpLab(("n1", "n2")) as lab:
        n1, n2 = lab.nodes["n1"], lab.nodes["n2"]
        for name in lab.nodes:
            start_bird(lab, name)
            lab.nodes[name].serve(PORT)
        wait_for(lambda: len(lab.fib_next_hops(f"{VIP6}/128")) == 2, timeout=10, what="ECMP")
        wait_for(lambda: len(lab.fib_next_hops(f"{VIP4}/32")) == 2, timeout=10, what="ECMP")
        assert lab.router_routes(VIP4) == {n1.address, n2.address}
        assert lab.router_routes(VIP6) == {n1.address6, n2.address6}
        assert all(p.multipath for p in lab.router_paths(VIP4))
        assert lab.fib_nodes(f"{VIP4}/32") == lab.fib_nodes(f"{VIP6}/128") == {"n1", "n2"}
        answers4 = lab.calls(VIP4, PORT, count=40)
        answers6 = lab.calls(VIP6, PORT, count=40)
        # the router hashes on ports (fib_multipath_hash_policy=1): both nodes answer
        assert set(answers4) == set(answers6) == {"n1", "n2"}, (answers4, answers6)
        report.append(f"ECMP: 40 calls per family answered by {dict(answers4)} / {dict(answers6)}")


def test_kill9_without_graceful_restart_withdraws_at_once(report: list[str]) -> None:
    with BgpLab(("n1", "n2")) as lab:
        birds = {name: start_bird(lab, name, graceful_restart=False) for name in lab.nodes}
        n1 = lab.nodes["n1"]
        lab.nodes["n2"].serve(PORT)
        wait_for(lambda: len(lab.fib_next_hops(f"{VIP4}/32")) == 2, timeout=10, what="ECMP")
        wait_for(lambda: len(lab.fib_next_hops(f"{VIP6}/128")) == 2, timeout=10, what="ECMP")
        with RouteWatch(lab, f"{VIP4}/32") as w4, RouteWatch(lab, f"{VIP6}/128") as w6:
            start = time.monotonic()
            birds["n1"].kill(signal.SIGKILL)
            gone = hops_without(n1)
            wait_for(lambda: gone(w4.current()) and gone(w6.current()), timeout=5, what="drop")
            t4, t6 = w4.first(start, gone), w6.first(start, gone)
        assert t4 is not None and t6 is not None
        assert max(t4, t6) < 1.0
        assert lab.fib_nodes(f"{VIP4}/32") == {"n2"}
        assert set(lab.calls(VIP4, PORT, count=10)) == {"n2"}
        report.append(
            f"kill -9 (GR off, BFD on): n1 left the router FIB after {t4:.3f} s (v4), "
            f"{t6:.3f} s (v6) [{lab.session('n1').last_reset}]; the kernel closes BIRD's "
            "TCP session, so this is not BFD's doing"
        )


def test_silent_node_is_withdrawn_by_bfd(report: list[str]) -> None:
    with BgpLab(("n1", "n2")) as lab:
        for name in lab.nodes:
            start_bird(lab, name)
        n1 = lab.nodes["n1"]
        wait_for(lambda: len(lab.fib_next_hops(f"{VIP4}/32")) == 2, timeout=10, what="ECMP")
        wait_for(lambda: len(lab.fib_next_hops(f"{VIP6}/128")) == 2, timeout=10, what="ECMP")
        with RouteWatch(lab, f"{VIP4}/32") as w4, RouteWatch(lab, f"{VIP6}/128") as w6:
            start = time.monotonic()
            n1.link(False)  # no FIN, no notification: only BFD (or the 9 s hold time) can tell
            gone = hops_without(n1)
            wait_for(lambda: gone(w4.current()) and gone(w6.current()), timeout=12, what="drop")
            t4, t6 = w4.first(start, gone), w6.first(start, gone)
        assert t4 is not None and t6 is not None
        session = lab.session("n1")
        # FRR 8.4 tells the (unreachable) peer Cease/BFD Down, so the reset reads as that
        assert "BFD" in session.last_reset + session.last_notification, session
        # BFD detection is 3 x 100 ms; the hold time would be 9 s.  Graceful restart is
        # negotiated here, yet FRR flushes at once: a BFD down stops the peer without
        # entering graceful-restart helper mode
        assert max(t4, t6) < 1.5
        report.append(
            f"silent node (cable cut, GR on, BFD 3x100 ms): n1 left the router FIB after "
            f"{t4:.3f} s (v4), {t6:.3f} s (v6)"
        )


@pytest.mark.parametrize("bfd", ["off", "on"])
def test_graceful_restart_keeps_the_route_through_a_bird_crash(
    bfd: BfdMode, report: list[str]
) -> None:
    with BgpLab(("n1",)) as lab:
        bird = start_bird(lab, "n1", bfd=bfd)
        node = lab.nodes["n1"]
        before = lab.session("n1").established
        wait_for(lambda: bool(lab.fib_next_hops(f"{VIP6}/128")), timeout=10, what="v6 route")
        with RouteWatch(lab, f"{VIP4}/32") as w4, RouteWatch(lab, f"{VIP6}/128") as w6:
            start = time.monotonic()
            bird.kill(signal.SIGKILL)
            wait_for(lambda: any(p.stale for p in lab.router_paths(VIP4)), timeout=5, what="stale")
            time.sleep(0.5)  # BFD (when on) has long gone down by now
            restarted = time.monotonic()
            bird.start(recover=True)
            lab.wait_established("n1", bird=bird, bfd=bfd != "off", settle=0.2)

            def refreshed() -> bool:
                paths = lab.router_paths(VIP4) + lab.router_paths(VIP6)
                return len(paths) == 2 and not any(p.stale for p in paths)

            wait_for(refreshed, timeout=15, interval=0.05, what="stale paths refreshed")
            refresh = time.monotonic() - restarted
            time.sleep(0.3)
        for watch in (w4, w6):
            # one state, one next hop, the whole time
            assert [len(hops) for _, hops in watch.changes(start)] == [1], offsets(watch, start)
        assert w4.samples > 100
        assert lab.session("n1").established == before + 1
        assert lab.fib_nodes(f"{VIP4}/32") == {node.name}
        report.append(
            f"graceful restart (bfd {bfd}): kill -9, bird -R 0.5 s later: no gap in "
            f"{w4.samples} FIB samples at 10 ms; paths fresh {refresh:.2f} s after the restart"
        )


def test_restart_without_recovery_flag_drops_the_route(report: list[str]) -> None:
    with BgpLab(("n1",)) as lab:
        bird = start_bird(lab, "n1", bfd="off")
        with RouteWatch(lab, f"{VIP4}/32") as w4:
            start = time.monotonic()
            bird.kill(signal.SIGKILL)
            wait_for(lambda: any(p.stale for p in lab.router_paths(VIP4)), timeout=5, what="stale")
            bird.start()  # no -R: the OPEN says "forwarding state not preserved"
            wait_for(lambda: not w4.current(), timeout=10, interval=0.01, what="flushed")
            wait_for(lambda: bool(w4.current()), timeout=15, interval=0.01, what="announced")
        lost = w4.first(start, lambda hops: not hops)
        back = w4.changes(start)[-1][0]
        assert lost is not None
        report.append(
            f"restart without -R: FRR flushed the stale route at {lost:.2f} s, BIRD announced it "
            f"again at {back:.2f} s: a {back - lost:.2f} s gap"
        )


def test_configure_adds_and_removes_a_vip_without_reset(report: list[str]) -> None:
    with BgpLab(("n1",)) as lab:
        bird = start_bird(lab, "n1")
        node = lab.nodes["n1"]
        before = lab.session("n1")
        added: list[float] = []
        removed: list[float] = []
        with RouteWatch(lab, f"{EXTRA_VIP}/32", interval=0.005) as watch:
            for _ in range(3):
                start = time.monotonic()
                bird.configure(conf(node, vips=(VIP4, VIP6, EXTRA_VIP)))
                wait_for(lambda: bool(watch.current()), timeout=5, interval=0.005, what="added")
                added.append(watch.first(start, bool) or 0.0)
                time.sleep(0.2)
                start = time.monotonic()
                bird.configure(conf(node))
                wait_for(lambda: not watch.current(), timeout=5, interval=0.005, what="removed")
                removed.append(watch.first(start, lambda hops: not hops) or 0.0)
                time.sleep(0.2)
        after = lab.session("n1")
        assert after.established == before.established and after.state == "Established"
        assert max(added + removed) < 0.5
        report.append(
            "birdc configure: extra VIP in the router FIB after "
            f"{', '.join(f'{t * 1000:.0f}' for t in added)} ms, gone after "
            f"{', '.join(f'{t * 1000:.0f}' for t in removed)} ms; session not reset"
        )


def test_kernel_table_gates_a_vip_without_reload(report: list[str]) -> None:
    with BgpLab(("n1",)) as lab:
        bird = start_bird(lab, "n1", gated=True)
        node = lab.nodes["n1"]
        before = lab.session("n1")
        times: dict[str, list[float]] = {}
        for vip, prefix in ((GATED4, f"{GATED4}/32"), (GATED6, f"{GATED6}/128")):
            with RouteWatch(lab, prefix, interval=0.005) as watch:
                for _ in range(3):
                    start = time.monotonic()
                    node.route("add", vip, table=GATE_TABLE)
                    wait_for(lambda: bool(watch.current()), timeout=5, interval=0.005, what="up")
                    times.setdefault(f"{vip} up", []).append(watch.first(start, bool) or 0.0)
                    time.sleep(0.2)
                    start = time.monotonic()
                    node.route("del", vip, table=GATE_TABLE)
                    wait_for(lambda: not watch.current(), timeout=5, interval=0.005, what="down")
                    gone = watch.first(start, lambda hops: not hops) or 0.0
                    times.setdefault(f"{vip} down", []).append(gone)
                    time.sleep(0.2)
        # a route in the gate table that is not a listed VIP is learned but never exported
        node.route("add", "192.0.2.99", table=GATE_TABLE)
        time.sleep(0.5)
        assert lab.router_paths("192.0.2.99") == []
        assert "192.0.2.99/32" in bird.birdc("show route table master4").stdout
        after = lab.session("n1")
        assert after.established == before.established and after.state == "Established"
        assert max(t for values in times.values() for t in values) < 0.5
        report.append(
            "kernel table gate: "
            + "; ".join(
                f"{what} {', '.join(f'{t * 1000:.0f}' for t in values)} ms"
                for what, values in times.items()
            )
            + "; session not reset"
        )

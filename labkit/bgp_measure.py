"""BGP mode measured where users see it: at the router and at a client behind it.

The lab is labkit.bgp_agents (two nodes running the real agent in mode bgp with BIRD, FRR
as the router, a client behind it).  The router's FIB is sampled every 10 ms
(labkit.bgplab.RouteWatch) and a client opens a TCP connection to a Service VIP every
10 ms (labkit/tcp_client.py, timeout 0.2 s).  Scenarios, each trial on node n1:

  unhealthy  n1's apiserver starts failing: until the router no longer forwards the
             control-plane VIP to n1; then healthy again: until it does once more
  death      n1's cable is cut (the node goes silent: no TCP close, no notification):
             until the router drops n1's route for the Service VIP, and until the client
             is answered again by a connection started after that; requests lost
  announce   a new VIP for a Service in the vip-configmap: until the router forwards it
             to both nodes; then removed: until it forwards it nowhere

``--bfd off`` runs the lab without BFD (the router notices a dead node at the hold time).

    python bench/bgp_lab.py [--trials 20] [--scenarios unhealthy,death,announce] [--bfd on|off]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from labkit.bgp_agents import BASE_VIPS, CONTROL_PLANE_VIP, PORT, WEB4, AgentBgpLab
from labkit.bgplab import PYTHON, RouteWatch
from labkit.netlab import interrupt_on_sigterm, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Results:
    samples: dict[str, list[float]] = field(default_factory=dict)
    lost: list[int] = field(default_factory=list)

    def add(self, what: str, seconds: float) -> None:
        self.samples.setdefault(what, []).append(seconds)

    def table(self) -> list[dict[str, Any]]:
        rows = []
        for what, values in self.samples.items():
            ordered = sorted(values)
            rows.append(
                {
                    "measure": what,
                    "trials": len(ordered),
                    "p50_s": round(statistics.median(ordered), 3),
                    "p95_s": round(ordered[max(0, round(len(ordered) * 0.95) - 1)], 3),
                    "max_s": round(ordered[-1], 3),
                }
            )
        if self.lost:
            rows.append({"measure": "death: client requests lost", "max": max(self.lost)})
        return rows


class Client:
    """labkit/tcp_client.py in the client namespace, and what it logged."""

    def __init__(self, lab: AgentBgpLab, vip: str) -> None:
        self.log = lab.root / "client.log"
        self.stop = lab.root / "client.stop"
        lab.bgp.client.spawn(
            [
                *(PYTHON, os.path.join(HERE, "tcp_client.py"), vip, str(PORT)),
                *("--log", str(self.log), "--stop-file", str(self.stop)),
            ]
        )

    def calls(self, since: float) -> list[tuple[float, bool]]:
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and float(parts[0]) >= since:
                out.append((float(parts[0]), parts[1] == "1"))
        return out

    def close(self) -> None:
        self.stop.touch()


def unhealthy(lab: AgentBgpLab, results: Results) -> None:
    n1 = lab.agents["n1"]
    with RouteWatch(lab.bgp, f"{CONTROL_PLANE_VIP}/32") as watch:
        mine = n1.node.address
        start = time.monotonic()
        n1.healthy(False)
        wait_for(lambda: mine not in watch.current(), timeout=10, what="withdrawn")
        withdrawn = watch.first(start, lambda hops: mine not in hops)
        back_from = time.monotonic()
        n1.healthy(True)
        wait_for(lambda: mine in watch.current(), timeout=10, what="announced again")
        back = watch.first(back_from, lambda hops: mine in hops)
    assert withdrawn is not None and back is not None
    results.add("unhealthy: withdrawn at the router", withdrawn)
    results.add("healthy again: announced at the router", back)
    time.sleep(0.5)  # past the prober's rise count before the next flip


def death(lab: AgentBgpLab, results: Results, client: Client) -> None:
    n1 = lab.agents["n1"]
    mine = {n1.node.address, n1.node.address6, n1.node.link_local}
    with RouteWatch(lab.bgp, f"{WEB4}/32") as watch:
        time.sleep(0.3)  # some calls before the fault
        cut = time.monotonic()
        n1.node.link(False)
        try:
            wait_for(lambda: not watch.current() & mine, timeout=30, what="n1's route gone")
            gone = watch.first(cut, lambda hops: not hops & mine)
            assert gone is not None

            def answered() -> float | None:
                return next((t for t, ok in client.calls(cut + gone) if ok), None)

            wait_for(lambda: answered() is not None, timeout=10, what="client answered")
            recovered = answered()
            assert recovered is not None
        finally:
            n1.node.link(True)
    lost = sum(1 for t, ok in client.calls(cut) if t <= recovered and not ok)
    results.add("death: route gone at the router", gone)
    results.add("death: client answered again", recovered - cut)
    results.lost.append(lost)
    lab.bgp.wait_established("n1", bfd=lab.bfd, timeout=60)
    lab.wait_fib(WEB4, {"n1", "n2"}, timeout=30)


def announce(lab: AgentBgpLab, results: Results, serial: int) -> None:
    extra = f"192.0.2.{150 + serial % 50}"
    with RouteWatch(lab.bgp, f"{extra}/32") as watch:
        start = time.monotonic()
        lab.set_vips({**BASE_VIPS, extra: "default/web"})
        wait_for(lambda: len(watch.current()) == 2, timeout=10, what="announced by both")
        added = watch.first(start, lambda hops: len(hops) == 2)
        removed_from = time.monotonic()
        lab.set_vips(BASE_VIPS)
        wait_for(lambda: not watch.current(), timeout=10, what="withdrawn by both")
        removed = watch.first(removed_from, lambda hops: not hops)
    assert added is not None and removed is not None
    results.add("announce: new Service VIP at the router from both nodes", added)
    results.add("announce: removed VIP gone from the router", removed)


def run(trials: int, scenarios: list[str], *, bfd: bool) -> Results:
    results = Results()
    with AgentBgpLab(bfd=bfd) as lab:
        lab.wait_ready()
        client = Client(lab, WEB4)
        try:
            for scenario in scenarios:
                for serial in range(trials):
                    if scenario == "unhealthy":
                        unhealthy(lab, results)
                    elif scenario == "death":
                        death(lab, results, client)
                    else:
                        announce(lab, results, serial)
                    print(f"  {scenario} {serial + 1}/{trials}", file=sys.stderr, flush=True)
        finally:
            client.close()
    return results


def main() -> None:
    interrupt_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--scenarios", default="unhealthy,death,announce")
    parser.add_argument("--bfd", choices=("on", "off"), default="on")
    args = parser.parse_args()
    started = time.time()
    results = run(args.trials, args.scenarios.split(","), bfd=args.bfd == "on")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {time.time() - started:.0f} s")
    print(
        "settings: two nodes, mode bgp, eBGP to FRR 8.4 (passive, MD5), hold 9 s, keepalive "
        f"3 s, BFD {args.bfd} (100 ms x 3), graceful restart; prober every 0.1 s, fall 2, "
        "rise 3; router FIB sampled every 10 ms, client TCP call every 10 ms (timeout 0.2 s)"
    )
    print(json.dumps(results.table(), indent=2))


if __name__ == "__main__":
    main()

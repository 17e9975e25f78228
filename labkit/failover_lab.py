"""The failover lab: how fast the control-plane VIP recovers, measured end to end.

Three node namespaces and a client on one bridge.  Every node runs the real agent in
static mode (no cluster) with its shipped defaults, which supervises real keepalived
(VRRPv3, unicast to the other two) and haproxy (apiserver frontend on VIP:8443 to all
three nodes), and a stand-in HTTPS apiserver on :6443 whose health the lab flips.  The
client asks https://VIP:8443/version every 20 ms (timeout 0.5 s) and logs each answer.

Scenarios, each trial injecting the fault on the current master:
  (a) its apiserver turns unhealthy (500 on every request)
  (b) its keepalived is killed with SIGKILL (the agent restarts it)
  (e) its keepalived's VRRP child is killed with SIGKILL (keepalived respawns it after
      0, 1, 2, 4 s; the agent releases the dead child's VIPs at once)
  (c) its link is cut (carrier lost: its keepalived goes FAULT and drops the VIP)
  (d) a partition and its heal: it is taken off the switch with its link up, so it
      keeps the VIP while the others elect a new master (split brain) until the heal;
      measured from the heal to exactly one holder (and checked to stay one for 2 s),
      and to the client being answered again
Time to recover = from the fault until the VIP is on a healthy node and the client's
next request succeeds.  Requests lost = failed client requests in that time.  Two
holders = the longest time the VIP was on two nodes at once (not counted in (d), where
the split brain is the scenario; in (c) the cut node cannot be reached, so its copy is
no split brain a client can see, only how long keepalived takes to notice the carrier).
``--family 6`` runs the same lab over IPv6 only.

    python bench/failover_lab.py [--trials 20] [--scenarios a,b,c,d,e] [--family 4|6]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.daemons.process import read_pid
from labkit.netlab import (
    PYTHON,
    Lab,
    VipWatch,
    agent_config,
    interrupt_on_sigterm,
    start_agent,
    wait_for,
)
from labkit.standin_apiserver import make_certificate

VIP = "192.0.2.10"
VIP6 = "2001:db8::10"
NODES = ("n1", "n2", "n3")
HERE = Path(__file__).resolve().parent


@dataclass
class Trial:
    scenario: str
    recover_s: float
    lost: int
    two_holders_s: float = 0.0
    heal_s: float | None = None
    client_s: float | None = None
    """(d): from the heal until the client is answered again (its ARP entry may still
    point at the node that stepped down, until the master announces the VIP again)."""


@dataclass
class Results:
    trials: list[Trial] = field(default_factory=list)

    def table(self) -> list[dict[str, Any]]:
        rows = []
        for scenario in sorted({t.scenario for t in self.trials}):
            subset = [t for t in self.trials if t.scenario == scenario]
            times = sorted(t.heal_s if scenario == "d" else t.recover_s for t in subset)
            times = [x for x in times if x is not None]
            rows.append(
                {
                    "scenario": scenario,
                    "measures": "heal to one master" if scenario == "d" else "fault to recovery",
                    "trials": len(subset),
                    "p50_s": round(statistics.median(times), 3),
                    "p95_s": round(times[max(0, round(len(times) * 0.95) - 1)], 3),
                    "max_s": round(max(times), 3),
                    "requests_lost_total": sum(t.lost for t in subset),
                    "requests_lost_max": max(t.lost for t in subset),
                }
            )
            if scenario != "d":
                rows[-1]["two_holders_max_s"] = round(max(t.two_holders_s for t in subset), 3)
            clients = sorted(t.client_s for t in subset if t.client_s is not None)
            if clients:
                rows[-1]["heal_to_client_p50_s"] = round(statistics.median(clients), 3)
                rows[-1]["heal_to_client_max_s"] = round(max(clients), 3)
        return rows


def _url(address: str, port: int, path: str) -> str:
    return f"https://{f'[{address}]' if ':' in address else address}:{port}{path}"


class FailoverLab:
    def __init__(self, lab: Lab, *, family: int = 4) -> None:
        """``family`` 6: the same lab over IPv6 only (node addresses, apiservers, VRRP
        adverts, the VIP and the client's requests)."""
        self.lab = lab
        self.vip = VIP6 if family == 6 else VIP
        own = {name: lab[name].address6 if family == 6 else lab[name].address for name in NODES}
        addresses = list(own.values())
        self.cert, self.key = make_certificate(lab.root / "pki", [*addresses, self.vip])
        for name in NODES:
            host = lab[name]
            (host.dir / "mode").write_text("200")
            host.spawn(
                [
                    *(PYTHON, str(HERE / "standin_apiserver.py"), "--bind", own[name]),
                    *("--port", "6443", "--cert", str(self.cert), "--key", str(self.key)),
                    *("--mode-file", str(host.dir / "mode")),
                ],
                log=host.dir / "standin.log",
            )
            config = agent_config(
                host,
                node_address=own[name],
                control_plane_vip=self.vip,
                control_plane_backends=addresses,
                unicast=True,
                unicast_peers=addresses,
                apiserver_url=_url(own[name], 6443, "/readyz"),
                apiserver_ca_file=str(self.cert),
            )
            start_agent(host, config)
        self.watch = VipWatch(lab, self.vip, NODES)
        wait_for(lambda: len(self.watch.current()) == 1, timeout=20, what="a first master")
        self.client_log = lab.root / "client.log"
        self.stop_file = lab.root / "client.stop"
        lab["cl"].spawn(
            [
                *(PYTHON, str(HERE / "https_client.py"), _url(self.vip, 8443, "/version")),
                *("--log", str(self.client_log), "--stop-file", str(self.stop_file)),
            ]
        )
        self.settle()

    def settle(self, timeout: float = 30) -> str:
        """Wait for one stable master (same single holder for 1 s) and a working client."""

        def stable() -> bool:
            holders = self.watch.current()
            since = self.watch.first_time(0, lambda h: h == holders)
            return len(holders) == 1 and since is not None and time.time() - since > 1.0

        wait_for(stable, timeout=timeout, interval=0.05, what="one stable master")
        self.answered(time.time(), timeout=40)
        return next(iter(self.watch.current()))

    def answered(self, since: float, timeout: float) -> float:
        """When the first client request started after ``since`` succeeded (waiting for
        it); on timeout, says who holds the VIP and where the client's ARP points."""
        try:
            wait_for(lambda: self.first_ok(since) is not None, timeout=timeout, what="client")
        except TimeoutError as err:
            raise TimeoutError(f"{err}; {self.diagnose()}") from None
        answered = self.first_ok(since)
        assert answered is not None
        return answered

    def diagnose(self) -> str:
        """Who holds the VIP, and where the client's ARP entry points."""
        macs = {}
        for name in NODES:
            link = self.lab[name].run("ip", "-j", "link", "show", "eth0").stdout
            macs[json.loads(link)[0]["address"]] = name
        neigh = self.lab["cl"].run("ip", "neigh", "show", self.vip).stdout.strip()
        pointed = next((n for mac, n in macs.items() if mac in neigh), "?")
        live = sorted(n for n in NODES if self.lab[n].has(self.vip))
        alive = self.watch.alive()
        return (
            f"holders={sorted(self.watch.current())} (live {live}, watcher alive {alive}) "
            f"client ARP: {neigh!r} (= {pointed})"
        )

    def requests(self, since: float) -> list[tuple[float, bool]]:
        out = []
        if not self.client_log.exists():
            return out
        for line in self.client_log.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and float(parts[0]) >= since:
                out.append((float(parts[0]), parts[1] == "1"))
        return out

    def first_ok(self, since: float) -> float | None:
        return next((t for t, ok in self.requests(since) if ok), None)

    def recovered(self, t0: float, bad: str, *, split: bool = False) -> tuple[float, int]:
        """Seconds from t0 until the VIP sits on a node other than ``bad`` (also on it,
        with ``split``: a cut-off master cannot be reached and cannot tell) and a request
        started after that succeeds; and the requests that failed meanwhile."""

        def good(holders: frozenset[str]) -> bool:
            others = holders - {bad}
            return bool(others) and (split or bad not in holders)

        def done() -> bool:
            moved = self.watch.first_time(t0, good)
            return moved is not None and self.first_ok(moved) is not None

        wait_for(done, timeout=30, interval=0.05, what="recovery")
        moved = self.watch.first_time(t0, good)
        assert moved is not None
        ok_at = self.first_ok(moved)
        assert ok_at is not None
        lost = sum(1 for t, ok in self.requests(t0) if t <= ok_at and not ok)
        return ok_at - t0, lost

    def released_and_taken(self, t0: float, bad: str) -> tuple[float, int]:
        """(e): seconds from t0 until ``bad`` has let the VIP go, one node holds it (any:
        the node whose VRRP child died may take it back once the child is respawned)
        and a request started after that succeeds; and the requests lost meanwhile."""

        def taken() -> float | None:
            released = self.watch.earliest(t0, lambda h: bad not in h)
            if released is None:
                return None
            return self.watch.earliest(released, lambda h: len(h) == 1)

        def done() -> bool:
            moved = taken()
            return moved is not None and self.first_ok(moved) is not None

        wait_for(done, timeout=30, interval=0.05, what="recovery")
        moved = taken()
        assert moved is not None
        ok_at = self.first_ok(moved)
        assert ok_at is not None
        lost = sum(1 for t, ok in self.requests(t0) if t <= ok_at and not ok)
        return ok_at - t0, lost

    def trial(self, scenario: str) -> Trial:
        started = time.time()
        trial = self._trial(scenario)
        if scenario != "d":
            trial.two_holders_s = self.watch.longest(started, lambda h: len(h) > 1)
        return trial

    def _trial(self, scenario: str) -> Trial:
        master = self.settle()
        host = self.lab[master]
        t0 = time.time()
        if scenario == "a":
            (host.dir / "mode").write_text("500")
            took, lost = self.recovered(t0, master)
            (host.dir / "mode").write_text("200")
            return Trial("a", took, lost)
        if scenario == "b":
            pid = read_pid(host.dir / "run" / "keepalived.pid")
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            took, lost = self.recovered(t0, master)
            wait_for(
                lambda: read_pid(host.dir / "run" / "keepalived.pid") not in (None, pid),
                timeout=60,
                what="keepalived restarted by the agent",
            )
            # let it run past the supervisor's crash-loop window, so the next kill is
            # restarted at once rather than after a growing backoff
            time.sleep(5.5)
            return Trial("b", took, lost)
        if scenario == "e":
            pid = read_pid(host.dir / "run" / "keepalived_vrrp.pid")
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            took, lost = self.released_and_taken(t0, master)
            wait_for(
                lambda: read_pid(host.dir / "run" / "keepalived_vrrp.pid") not in (None, pid),
                timeout=60,
                what="keepalived respawns its VRRP child",
            )
            # past keepalived's respawn-rate window (it doubles the delay of quick deaths)
            time.sleep(5.5)
            return Trial("e", took, lost)
        if scenario == "c":
            # carrier lost: the master's keepalived goes FAULT and drops the VIP itself
            host.link(False)
            took, lost = self.recovered(t0, master)
            host.link(True)
            return Trial("c", took, lost)
        # (d) partition without carrier loss: the cut-off master keeps the VIP while
        # the others elect a new one (a real split brain), until the heal
        host.partition(True)
        took, lost = self.recovered(t0, master, split=True)
        wait_for(lambda: len(self.watch.current()) == 2, timeout=5, what="split brain")
        time.sleep(0.5)
        healed = time.time()
        host.partition(False)
        wait_for(lambda: len(self.watch.current()) == 1, timeout=10, what="one master")
        time.sleep(2.0)  # and it stays that way
        single = self.watch.first_time(healed, lambda h: len(h) == 1)
        assert single is not None, "split brain came back after the heal"
        # the client's ARP entry may still point at the node that stepped down, until
        # the master announces the VIP again (garp_master_refresh)
        answered = self.answered(single, timeout=30)
        return Trial("d", took, lost, heal_s=single - healed, client_s=answered - healed)

    def close(self) -> None:
        self.stop_file.touch()
        self.watch.close()


def run(trials: int, scenarios: str = "a,b,c,d,e", *, family: int = 4) -> Results:
    results = Results()
    with Lab([*NODES, "cl"]) as lab:
        failover = FailoverLab(lab, family=family)
        try:
            for scenario in scenarios.split(","):
                for _ in range(trials):
                    trial = failover.trial(scenario)
                    print(f"  {trial}", file=sys.stderr, flush=True)
                    results.trials.append(trial)
        finally:
            failover.close()
    return results


def main() -> None:
    interrupt_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--scenarios", default="a,b,c,d,e")
    parser.add_argument("--family", type=int, choices=(4, 6), default=4)
    args = parser.parse_args()
    started = time.time()
    results = run(args.trials, args.scenarios, family=args.family)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {time.time() - started:.0f} s")
    print(
        "settings: shipped defaults (VRRPv3 unicast, control-plane advert_int 0.1 s, prober "
        "every 0.1 s, fall 2, rise 3, timeout 0.5 s; haproxy inter 500 ms, fastinter 200 ms, "
        f"fall 2); client GET every 20 ms, timeout 0.5 s; IPv{args.family}"
    )
    print(json.dumps(results.table(), indent=2))


if __name__ == "__main__":
    main()

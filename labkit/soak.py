"""The chaos soak: faults one at a time, for minutes, against three real agents.

    n1, n2, n3: vip-agent run (supervise: real keepalived, haproxy), a stand-in
                apiserver on :6443, a TCP responder on [::]:8080        ─┐
    cl:         https_client -> https://192.0.2.10:8443/version          ├─ br0
                tcp_client   -> 192.0.2.50:8080, [2001:db8::50]:8080     ─┘

Every node runs the real agent in static mode reading one shared manifests directory (the
cluster: three control-plane Nodes with IPv4 and IPv6 InternalIPs, a vip-configmap, the
Services and their EndpointSlices), with the control-plane VIP 192.0.2.10 in front of the
three stand-in apiservers, unicast VRRP and ``spread`` (one instance per service VIP).
The kernel has no IPVS, so keepalived runs VRRP only: a client of a service VIP is
answered by the responder of whichever node holds the VIP.  Three VIPs are *measured*
(192.0.2.10, 192.0.2.50, 2001:db8::50); up to five *extra* VIPs from 192.0.2.60-69 come
and go with the churn fault and are never measured.

A seeded ``random.Random`` picks one fault at a time (every kind once, shuffled, then at
random), its target (usually the node holding a random measured VIP) and how long it
lasts; the lab waits (30 s at most) until the system has recovered and pauses 0.5-3 s.

Faults (``KINDS``): the agent SIGKILLed or SIGTERMed (restarted 1-3 s later; after
SIGKILL the daemons keep running and are adopted, after SIGTERM they stop and the VIPs
move); keepalived's parent SIGKILLed or SIGTERMed, its VRRP child SIGKILLed; haproxy's
master SIGKILLed or SIGTERMed, a worker SIGKILLed; the apiserver answering 500 for 1-4 s;
the node's cable cut for 1-4 s (carrier lost); the node partitioned off the switch for
1-4 s (no carrier loss: a real split brain); churn of the extra VIPs (added, removed,
moved between Services); the stand-in apiserver SIGKILLed and started again 1 s later.

Recovery is measured from the *reference* moment: the heal for faults the harness ends
(agent restart, apiserver back to 200 or restarted, cable back, partition healed), the
injection for faults the system heals by itself (daemon kills, churn).  ``recover`` is,
as issue 15 defines it, the moment from which every measured VIP has exactly one holder
plus the time until every client has a successful call started after it.  ``settled``
is when the harness lets the next fault in: every daemon up again, every measured VIP
back on its preferred node for 1 s, the extra VIPs where the churn put them, every client
answered since.

Invariants, from VipWatch histories (5 ms) and the client logs:
  1. no measured VIP on two nodes for more than 2 s, except in link-cut and partition
     windows, whose two-holder stretches are recorded apart and must end within 2 s of
     the heal;
  2. no measured VIP without a holder for more than 3 s, or for more than VRRP's own
     master-down interval (3 adverts plus skew: 3.22 s with the shipped 1 s service
     adverts) plus 0.25 s where that is longer (``MAX_MISSING_S``): a master that goes
     silent (cut cable, killed VRRP child) cannot be replaced sooner.  Stretches over
     3 s are listed in the report either way;
  3. every client failure inside a fault window (injection to 3 s after recovery);
  4. after SIGTERM to every agent: no VIP left on any node, no keepalived, haproxy or
     agent process of the lab alive; after the lab closed, none of its namespaces;
  5. agent memory flat: an agent process that lived 60 s grew less than 15 MB from its
     RSS 30 s after it started to its last sample (sampled every 5 s);
  6. each extra VIP held by exactly one node if the last churn configured it, else none.
Not recovering within 30 s is reported as a violation too (``recovery``).

    python bench/soak.py [--minutes 30] [--seed N]
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import ipaddress
import json
import math
import os
import platform
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from agent.daemons.process import read_pid, verified_process
from labkit.bgplab import _RESPONDER
from labkit.failover_lab import _url
from labkit.netlab import (
    PYTHON,
    Host,
    Lab,
    VipWatch,
    agent_config,
    interrupt_on_sigterm,
    ip,
    start_agent,
    wait_for,
)
from labkit.objects import configmap, endpoint, endpoint_slice, node, port, service
from labkit.standin_apiserver import make_certificate

NODES = ("n1", "n2", "n3")
CLIENT = "cl"
CONTROL_PLANE_VIP = "192.0.2.10"
WEB4 = "192.0.2.50"
WEB6 = "2001:db8::50"
MEASURED = (CONTROL_PLANE_VIP, WEB4, WEB6)
EXTRA_POOL = tuple(f"192.0.2.{n}" for n in range(60, 70))
EXTRA_SERVICES = ("default/web", "default/extra1", "default/extra2", "default/extra3")
MAX_EXTRAS = 5
PORT = 8080
HERE = Path(__file__).resolve().parent

KINDS = (
    "agent-sigkill",
    "agent-sigterm",
    "keepalived-sigkill",
    "keepalived-sigterm",
    "vrrp-child-sigkill",
    "haproxy-master-sigkill",
    "haproxy-master-sigterm",
    "haproxy-worker-sigkill",
    "apiserver-unhealthy",
    "link-cut",
    "partition",
    "churn",
    "apiserver-restart",
)
SPLIT_KINDS = frozenset({"link-cut", "partition"})
"""Faults during which a VIP may be on two nodes a client cannot both reach (invariant 1)."""

MAX_TWO_HOLDERS_S = 2.0
MAX_SPLIT_AFTER_HEAL_S = 2.0
SERVICE_ADVERT_INT_S = 1.0
"""The shipped ``advert_int`` of service instances (the control plane's is 0.1 s)."""
MASTER_DOWN_S = 3 * SERVICE_ADVERT_INT_S + (256 - 200) / 256 * SERVICE_ADVERT_INT_S
"""RFC 5798: a backup takes over 3 adverts plus its skew after a master went silent (a
cut cable, a SIGKILLed VRRP child); the skew is largest at the lowest priority, 200."""
MAX_MISSING_S = max(3.0, MASTER_DOWN_S + 0.25)
"""Issue 15 asks for 3 s; a silent master's VIP is missing up to 3.22 s by VRRP's own
timers with the shipped 1 s adverts, so the bound is that plus 0.25 s for the 5 ms
sampling and scheduling.  Stretches over 3 s are listed in the report all the same."""
CLIENT_GRACE_S = 3.0
MAX_RSS_GROWTH_MB = 15.0
RECOVERY_TIMEOUT_S = 30.0
STABLE_S = 1.0
RSS_EVERY_S = 5.0
RSS_MIN_LIFE_S = 60.0
RSS_BASELINE_AFTER_S = 30.0


@dataclass
class Fault:
    kind: str
    target: str
    injected: float
    """Wall time of the injection (VipWatch and the clients log wall time too)."""
    detail: str = ""
    healed: float | None = None
    """When the harness ended the fault (None: the system heals it by itself)."""
    recovered: float | None = None
    """Issue 15's recovery: every measured VIP with one holder, every client answered."""
    settled: float | None = None
    """Back to normal: daemons up, VIPs home and stable, extras placed, clients answered."""
    gave_up: float | None = None
    stuck: str = ""
    lost: int = 0

    @property
    def reference(self) -> float:
        return self.healed if self.healed is not None else self.injected

    @property
    def window_end(self) -> float:
        """Client failures up to here belong to this fault (invariant 3): 3 s past its
        recovery, or past the moment it settled if that came later (a VIP going back to
        its preferred node is the fault's doing too)."""
        ends = (self.recovered, self.settled, self.gave_up, self.reference)
        return max(t for t in ends if t is not None) + CLIENT_GRACE_S

    @property
    def recover_s(self) -> float | None:
        return None if self.recovered is None else self.recovered - self.reference

    @property
    def settled_s(self) -> float | None:
        return None if self.settled is None else self.settled - self.reference


@dataclass(frozen=True)
class Violation:
    invariant: str
    at: float
    """Wall time."""
    message: str
    kind: str = ""
    """The fault whose window it fell in ("" if none)."""


@dataclass(frozen=True)
class Split:
    """A measured VIP on two nodes during a link-cut or partition window."""

    vip: str
    kind: str
    target: str
    seconds: float
    ended_after_heal_s: float


@dataclass(frozen=True)
class Memory:
    node: str
    pid: int
    lived_s: float
    baseline_mb: float | None
    last_mb: float
    growth_mb: float | None


@dataclass
class Results:
    seed: int
    duration_s: float = 0.0
    started: float = 0.0
    faults: list[Fault] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    splits: list[Split] = field(default_factory=list)
    memory: list[Memory] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    longest: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per measured VIP: the longest stretch with no holder, and on two nodes outside the
    link-cut and partition windows."""
    clients: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per client: calls made and calls failed while faults ran."""
    slow_takeovers: list[tuple[str, float, float, str]] = field(default_factory=list)
    """(vip, wall time, seconds, fault kind) of every stretch with no holder over 3 s."""

    def kinds_injected(self) -> set[str]:
        return {f.kind for f in self.faults}

    def table(self) -> dict[str, Any]:
        rows: dict[str, Any] = {}
        for kind in KINDS:
            subset = [f for f in self.faults if f.kind == kind]
            if subset:
                rows[kind] = _row(subset, [v for v in self.violations if v.kind == kind])
        rows["total"] = _row(self.faults, self.violations)
        return rows

    def report(self) -> dict[str, Any]:
        def rel(t: float) -> float:
            return round(t - self.started, 3)

        return {
            "seed": self.seed,
            "duration_s": round(self.duration_s, 1),
            "faults": self.table(),
            "violations": [
                {"invariant": v.invariant, "t_s": rel(v.at), "fault": v.kind, "what": v.message}
                for v in self.violations
            ],
            "clients": self.clients,
            "split_brain": {
                "stretches": len(self.splits),
                "longest_s": round(max((s.seconds for s in self.splits), default=0.0), 3),
                "latest_end_after_heal_s": round(
                    max((s.ended_after_heal_s for s in self.splits), default=0.0), 3
                ),
            },
            "longest_s": {
                vip: {k: round(v, 3) for k, v in figures.items()}
                for vip, figures in self.longest.items()
            },
            "no_holder_over_3s": [
                {"vip": vip, "t_s": rel(at), "seconds": round(seconds, 3), "fault": kind}
                for vip, at, seconds, kind in self.slow_takeovers
            ],
            "agent_rss": [
                {
                    "node": m.node,
                    "pid": m.pid,
                    "lived_s": round(m.lived_s),
                    "rss_at_30s_mb": None if m.baseline_mb is None else round(m.baseline_mb, 1),
                    "rss_last_mb": round(m.last_mb, 1),
                    "growth_mb": None if m.growth_mb is None else round(m.growth_mb, 1),
                }
                for m in self.memory
            ],
            "skipped": self.skipped,
        }


def _percentile(values: list[float], fraction: float) -> float | None:
    """Nearest rank: with few values the p99 is the largest, never an interpolation."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(fraction * len(ordered)) - 1)], 3)


def _row(faults: list[Fault], violations: list[Violation]) -> dict[str, Any]:
    recover = [f.recover_s for f in faults if f.recover_s is not None]
    settled = [f.settled_s for f in faults if f.settled_s is not None]
    return {
        "injected": len(faults),
        "recover_p50_s": _percentile(recover, 0.5),
        "recover_p99_s": _percentile(recover, 0.99),
        "settled_p50_s": _percentile(settled, 0.5),
        "settled_p99_s": _percentile(settled, 0.99),
        "requests_lost": sum(f.lost for f in faults),
        "violations": len(violations),
    }


class ClientLog:
    """One client's log, read incrementally: ``<time> <1|0> <detail>`` per call.

    ``offset`` turns the logged time into wall time (tcp_client logs CLOCK_MONOTONIC,
    which every namespace shares; https_client logs wall time already).
    """

    def __init__(self, name: str, path: Path, offset: float = 0.0) -> None:
        self.name = name
        self.path = path
        self.offset = offset
        self.times: list[float] = []
        self.oks: list[bool] = []
        self._position = 0
        self._partial = b""
        self._lock = threading.Lock()

    def refresh(self) -> None:
        with self._lock:
            try:
                with self.path.open("rb") as log:
                    log.seek(self._position)
                    data = log.read()
            except OSError:
                return
            self._position += len(data)
            lines = (self._partial + data).split(b"\n")
            self._partial = lines.pop()
            for line in lines:
                parts = line.split()
                if len(parts) >= 2:
                    self.times.append(float(parts[0]) + self.offset)
                    self.oks.append(parts[1] == b"1")

    def first_ok(self, since: float) -> float | None:
        """When the first successful call started at or after ``since``."""
        self.refresh()
        start = bisect.bisect_left(self.times, since)
        for index in range(start, len(self.times)):
            if self.oks[index]:
                return self.times[index]
        return None

    def failures(self, start: float, end: float) -> list[float]:
        self.refresh()
        first = bisect.bisect_left(self.times, start)
        last = bisect.bisect_right(self.times, end)
        return [self.times[i] for i in range(first, last) if not self.oks[i]]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Rig:
    """One node: its agent, stand-in apiserver, responder and the daemons the agent runs."""

    def __init__(self, soak: Soak, host: Host) -> None:
        self.soak = soak
        self.host = host
        self.name = host.name
        self.run_dir = host.dir / "run"
        self.keepalived_conf = host.dir / "etc" / "keepalived.conf"
        self.haproxy_cfg = host.dir / "etc" / "haproxy.cfg"
        self.mode_file = host.dir / "mode"
        self.mode_file.write_text("200")
        self.config = agent_config(
            host,
            control_plane_vip=CONTROL_PLANE_VIP,
            control_plane_backends=[soak.lab[n].address for n in NODES],
            unicast=True,
            unicast_peers=[a for n in NODES for a in (soak.lab[n].address, soak.lab[n].address6)],
            spread=True,
            apiserver_url=_url(host.address, 6443, "/readyz"),
            apiserver_ca_file=str(soak.cert),
            manifests=[str(soak.manifests)],
            real_server_check="none",
        )
        self.agent: subprocess.Popen[bytes] | None = None
        self.agent_started: dict[int, float] = {}
        self.standin: subprocess.Popen[bytes] | None = None
        self.responder = host.spawn(
            [PYTHON, "-I", "-c", _RESPONDER, self.name, str(PORT)],
            log=host.dir / "responder.log",
        )
        self.link_up = True
        self.bridged = True

    # --- processes the lab starts --------------------------------------------------
    def start_standin(self) -> None:
        log = self.host.dir / "standin.log"
        before = log.stat().st_size if log.exists() else 0
        self.standin = self.host.spawn(
            [
                *(PYTHON, str(HERE / "standin_apiserver.py"), "--bind", self.host.address),
                *("--port", "6443", "--cert", str(self.soak.cert), "--key", str(self.soak.key)),
                *("--mode-file", str(self.mode_file)),
            ],
            log=log,
        )
        wait_for(
            lambda: log.exists() and b"ready" in log.read_bytes()[before:],
            timeout=20,
            what=f"{self.name}: stand-in apiserver",
        )

    def start_agent(self) -> None:
        self.agent = start_agent(self.host, self.config)
        self.agent_started[self.agent.pid] = time.time()

    def agent_alive(self) -> bool:
        return self.agent is not None and self.agent.poll() is None

    # --- the daemons the agent runs ------------------------------------------------
    def keepalived(self) -> psutil.Process | None:
        return verified_process(
            self.run_dir / "keepalived.pid", exe="keepalived", config=self.keepalived_conf
        )

    def vrrp_child(self) -> psutil.Process | None:
        parent = self.keepalived()
        pid = read_pid(self.run_dir / "keepalived_vrrp.pid")
        if parent is None or pid is None:
            return None
        try:
            child = psutil.Process(pid)
            if child.ppid() != parent.pid or not _alive(child):
                return None
        except psutil.NoSuchProcess:
            return None
        return child

    def haproxy(self) -> psutil.Process | None:
        return verified_process(
            self.run_dir / "haproxy.pid", exe="haproxy", config=self.haproxy_cfg
        )

    def haproxy_workers(self) -> list[psutil.Process]:
        master = self.haproxy()
        if master is None:
            return []
        try:
            children = master.children()
        except psutil.NoSuchProcess:
            return []
        return [c for c in children if _alive(c) and c.name() == "haproxy"]

    def daemons(self) -> list[psutil.Process]:
        found = [self.keepalived(), self.vrrp_child(), self.haproxy(), *self.haproxy_workers()]
        return [p for p in found if p is not None]

    def down(self) -> str | None:
        """What of this node is not running (None: everything is)."""
        if not self.agent_alive():
            return "agent"
        if self.standin is None or self.standin.poll() is not None:
            return "stand-in apiserver"
        if self.vrrp_child() is None:
            return "keepalived (or its VRRP child)"
        if not self.haproxy_workers():
            return "haproxy (or its worker)"
        if not (self.link_up and self.bridged):
            return "link"
        return None


class Soak:
    """The lab set up, the fault loop, and the checks; see the module docstring."""

    def __init__(
        self, lab: Lab, *, seed: int, say: Callable[[str], None] = lambda line: None
    ) -> None:
        self.lab = lab
        self.rng = random.Random(seed)
        self.say = say
        self.results = Results(seed=seed)
        self.manifests = lab.root / "manifests"
        self.manifests.mkdir()
        addresses = [a for n in NODES for a in (lab[n].address, lab[n].address6)]
        self.cert, self.key = make_certificate(lab.root / "pki", [*addresses, CONTROL_PLANE_VIP])
        self.extras: dict[str, str] = {}
        self.write_cluster()
        self.rigs = {name: Rig(self, lab[name]) for name in NODES}
        self.watches: dict[str, VipWatch] = {}
        self.clients: list[ClientLog] = []
        self.stop_file = lab.root / "clients.stop"
        self.homes: dict[str, str] = {}
        self.seen_daemons: dict[int, tuple[str, float]] = {}
        """pid -> (what, create_time) of every daemon process seen: none may outlive the
        agents (invariant 4)."""
        self.rss: dict[int, list[tuple[float, float]]] = {}
        self._sampler_stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self._extras_checked = (0.0, "")

    # --- the cluster -----------------------------------------------------------------
    def write_cluster(self) -> None:
        """The manifests every agent reads, written atomically (temp file + rename)."""
        nodes = [self.lab[n] for n in NODES]
        vips = {WEB4: "default/web", WEB6: "default/web6", **self.extras}
        objects: list[dict[str, Any]] = [
            node(h.name, h.address, h.address6, control_plane=True) for h in nodes
        ]
        objects.append(configmap(vips))
        names = ["web", "web6", *(s.split("/", 1)[1] for s in EXTRA_SERVICES[1:])]
        for index, name in enumerate(names):
            objects.append(service(name, [port("tcp", PORT, PORT)]))
            objects.append(
                endpoint_slice(
                    name,
                    [port("tcp", PORT)],
                    [
                        endpoint(f"203.0.113.{10 * index + i}", node_name=h.name)
                        for i, h in enumerate(nodes, start=1)
                    ],
                )
            )
        tmp = self.manifests / ".cluster.yaml.tmp"
        tmp.write_text(yaml.safe_dump_all(objects), encoding="utf-8")
        tmp.rename(self.manifests / "cluster.yaml")

    # --- start and stop -----------------------------------------------------------------
    def start(self, *, run_for: float) -> None:
        for rig in self.rigs.values():
            rig.start_standin()
        for rig in self.rigs.values():
            wait_for(
                lambda rig=rig: b"ready" in (rig.host.dir / "responder.log").read_bytes(),
                timeout=20,
                what=f"{rig.name}: responder",
            )
            rig.start_agent()
        self.watches = VipWatch.several(self.lab, MEASURED, NODES)
        self._start_clients(run_for)
        self._sampler = threading.Thread(target=self._sample_rss, name="rss", daemon=True)
        self._sampler.start()
        self.homes = self.preferred_owners()
        self.say(f"preferred owners: {self.homes}")
        started = time.time()
        self.wait_settled(started, fault=None)
        self.results.started = time.time()

    def _start_clients(self, run_for: float) -> None:
        client = self.lab[CLIENT]
        limit = ("--max-seconds", str(int(run_for + 600)))
        stop = ("--stop-file", str(self.stop_file))
        https_log = self.lab.root / "client-https.log"
        client.spawn(
            [
                *(PYTHON, str(HERE / "https_client.py")),
                _url(CONTROL_PLANE_VIP, 8443, "/version"),
                *("--log", str(https_log), *stop, *limit),
            ]
        )
        self.clients.append(ClientLog("https 192.0.2.10:8443", https_log))
        offset = time.time() - time.monotonic()
        for vip in (WEB4, WEB6):
            log = self.lab.root / f"client-tcp-{vip.replace(':', '_')}.log"
            client.spawn(
                [
                    *(PYTHON, str(HERE / "tcp_client.py"), vip, str(PORT)),
                    *("--log", str(log), *stop, *limit, "--every", "0.02", "--timeout", "0.5"),
                ]
            )
            self.clients.append(ClientLog(f"tcp {_url(vip, PORT, '')[8:]}", log, offset))

    def preferred_owners(self) -> dict[str, str]:
        """Each measured VIP's preferred node: the highest priority of the instance holding
        it in the rendered keepalived.conf files (ties: the higher node address wins)."""
        wait_for(
            lambda: (
                all(
                    all(vip in r.keepalived_conf.read_text() for vip in MEASURED)
                    for r in self.rigs.values()
                    if r.keepalived_conf.exists()
                )
                and all(r.keepalived_conf.exists() for r in self.rigs.values())
            ),
            timeout=60,
            interval=0.2,
            what="every node rendered every measured VIP",
        )
        homes = {}
        for vip in MEASURED:
            ranked = []
            for rig in self.rigs.values():
                priority = _priority_of(rig.keepalived_conf.read_text(), vip)
                ranked.append((priority, int(ipaddress.ip_address(rig.host.address)), rig.name))
            homes[vip] = max(ranked)[2]
        return homes

    def close(self) -> None:
        self.stop_file.touch()
        self._sampler_stop.set()
        if self._sampler is not None:
            self._sampler.join(timeout=10)
        for watch in self.watches.values():
            watch.close()

    # --- observation -------------------------------------------------------------
    def _sample_rss(self) -> None:
        for _ in range(10_000_000):
            for rig in self.rigs.values():
                proc = rig.agent
                if proc is None or proc.poll() is not None:
                    continue
                with contextlib.suppress(psutil.Error):
                    rss = psutil.Process(proc.pid).memory_info().rss / 2**20
                    self.rss.setdefault(proc.pid, []).append((time.time(), rss))
            if self._sampler_stop.wait(RSS_EVERY_S):
                return

    def extras_placed(self) -> str | None:
        """Why the extra VIPs are not where the last churn put them (None: they are)."""
        held: dict[str, list[str]] = {vip: [] for vip in EXTRA_POOL}
        for rig in self.rigs.values():
            for address in rig.host.addresses():
                if address in held:
                    held[address].append(rig.name)
        for vip, holders in held.items():
            if vip in self.extras and len(holders) != 1:
                return f"extra {vip} ({self.extras[vip]}) held by {holders}"
            if vip not in self.extras and holders:
                return f"removed extra {vip} still on {holders}"
        return None

    def not_settled(self, since: float) -> str | None:
        """Why the lab is not back to normal after ``since`` (None: it is)."""
        now = time.time()
        for rig in self.rigs.values():
            down = rig.down()
            if down is not None:
                return f"{rig.name}: {down} not running"
        home_since = since
        for vip, watch in self.watches.items():
            home = frozenset({self.homes[vip]})
            stable = watch.first_time(since, lambda h, home=home: h == home)
            if stable is None or now - stable < STABLE_S:
                holders = sorted(watch.current())
                return f"{vip} on {holders}, not on {self.homes[vip]} for {STABLE_S}s"
            home_since = max(home_since, stable)
        for client in self.clients:
            if client.first_ok(home_since) is None:
                return f"client {client.name} not answered since"
        checked_at, why = self._extras_checked
        if now - checked_at > 0.5:
            why = self.extras_placed() or ""
            self._extras_checked = (now, why)
        return why or None

    def wait_settled(self, since: float, *, fault: Fault | None) -> bool:
        """Wait (bounded) until the lab is back to normal; record the daemons seen."""
        deadline = since + RECOVERY_TIMEOUT_S
        why: str | None = "not checked"
        for _ in range(int(RECOVERY_TIMEOUT_S / 0.1) + 600):
            why = self.not_settled(since)
            if why is None or time.time() > deadline:
                break
            time.sleep(0.1)
        now = time.time()
        self._remember_daemons()
        if fault is None:
            if why is not None:
                raise TimeoutError(f"the lab did not settle: {why}")
            return True
        if why is None:
            fault.settled = now
        else:
            fault.gave_up, fault.stuck = now, why
            self.results.violations.append(
                Violation(
                    "recovery",
                    now,
                    f"{fault.kind} on {fault.target}: not back to normal within "
                    f"{RECOVERY_TIMEOUT_S:.0f}s: {why}",
                    fault.kind,
                )
            )
        one = max(
            (w.first_time(fault.reference, lambda h: len(h) == 1) or now)
            for w in self.watches.values()
        )
        answered = [c.first_ok(one) for c in self.clients]
        if all(t is not None for t in answered):
            fault.recovered = max(t for t in answered if t is not None)
        return why is None

    def _remember_daemons(self) -> None:
        for rig in self.rigs.values():
            for proc in rig.daemons():
                with contextlib.suppress(psutil.Error):
                    self.seen_daemons[proc.pid] = (f"{rig.name} {proc.name()}", proc.create_time())

    # --- faults ----------------------------------------------------------------------
    def pick_target(self, kind: str) -> str | None:
        """Usually the holder of a random measured VIP, else any node; None if the process
        the fault needs is not running there (mid-restart: the caller picks again)."""
        vip = self.rng.choice(MEASURED)
        anyone = self.rng.choice(NODES)
        holder = self.rng.random() < 0.75
        holders = self.watches[vip].current()
        target = next(iter(holders)) if holder and len(holders) == 1 else anyone
        rig = self.rigs[target]
        needs: dict[str, Callable[[], object]] = {
            "keepalived-sigkill": rig.keepalived,
            "keepalived-sigterm": rig.keepalived,
            "vrrp-child-sigkill": rig.vrrp_child,
            "haproxy-master-sigkill": rig.haproxy,
            "haproxy-master-sigterm": rig.haproxy,
            "haproxy-worker-sigkill": rig.haproxy_workers,
        }
        if kind in needs and not needs[kind]():
            return None
        if kind.startswith("agent-") and not rig.agent_alive():
            return None
        return target

    def inject(self, kind: str) -> Fault | None:
        """One fault: inject, hold, heal, wait until settled. None if no target was found."""
        target: str | None = "-"
        if kind != "churn":
            for _ in range(20):
                target = self.pick_target(kind)
                if target is not None:
                    break
                time.sleep(0.25)
            else:
                self.results.skipped.append(kind)
                return None
        assert target is not None
        fault = Fault(kind, target, injected=time.time())
        try:
            self._inject(fault)
        finally:
            # whatever happened, leave no fault in place
            if target in self.rigs:
                self._heal_everything(self.rigs[target])
        self.wait_settled(fault.reference, fault=fault)
        return fault

    def _inject(self, fault: Fault) -> None:
        kind = fault.kind
        if kind == "churn":
            fault.detail = self.churn()
            return
        rig = self.rigs[fault.target]
        if kind.startswith("agent-"):
            assert rig.agent is not None
            sig = signal.SIGKILL if kind == "agent-sigkill" else signal.SIGTERM
            rig.agent.send_signal(sig)
            try:
                rig.agent.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.violation("4", time.time(), f"agent {rig.name} ignored SIGTERM for 20s")
                rig.agent.kill()
                rig.agent.wait(timeout=10)
            time.sleep(self.rng.uniform(1.0, 3.0))
            rig.start_agent()
            fault.healed = time.time()
            return
        if kind in ("apiserver-unhealthy", "link-cut", "partition"):
            hold = self.rng.uniform(1.0, 4.0)
            fault.detail = f"for {hold:.1f}s"
            if kind == "apiserver-unhealthy":
                rig.mode_file.write_text("500")
            elif kind == "link-cut":
                rig.link_up = False
                rig.host.link(False)
            else:
                rig.bridged = False
                rig.host.partition(True)
            time.sleep(hold)
            self._heal_everything(rig)
            fault.healed = time.time()
            return
        if kind == "apiserver-restart":
            assert rig.standin is not None
            rig.standin.send_signal(signal.SIGKILL)
            rig.standin.wait(timeout=10)
            time.sleep(1.0)
            rig.start_standin()
            fault.healed = time.time()
            return
        procs: dict[str, Callable[[], psutil.Process | None]] = {
            "keepalived-sigkill": rig.keepalived,
            "keepalived-sigterm": rig.keepalived,
            "vrrp-child-sigkill": rig.vrrp_child,
            "haproxy-master-sigkill": rig.haproxy,
            "haproxy-master-sigterm": rig.haproxy,
            "haproxy-worker-sigkill": lambda: next(iter(rig.haproxy_workers()), None),
        }
        proc = procs[kind]()
        if proc is None:
            fault.detail = "not running at the injection"
            return
        fault.injected = time.time()
        fault.detail = f"pid {proc.pid}"
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGTERM if kind.endswith("sigterm") else signal.SIGKILL)

    def _heal_everything(self, rig: Rig) -> None:
        """Undo the windowed faults on ``rig`` (idempotent)."""
        if rig.mode_file.read_text() != "200":
            rig.mode_file.write_text("200")
        if not rig.link_up:
            rig.host.link(True)
            rig.link_up = True
        if not rig.bridged:
            rig.host.partition(False)
            rig.bridged = True

    def churn(self) -> str:
        """Add, remove or move 1-3 extra VIPs (never a measured one); what it did."""
        done = []
        for _ in range(self.rng.randint(1, 3)):
            choices = []
            if len(self.extras) < MAX_EXTRAS:
                choices.append("add")
            if self.extras:
                choices += ["remove", "move"]
            action = self.rng.choice(choices)
            if action == "add":
                vip = self.rng.choice([v for v in EXTRA_POOL if v not in self.extras])
                self.extras[vip] = self.rng.choice(EXTRA_SERVICES)
                done.append(f"+{vip}->{self.extras[vip]}")
            elif action == "remove":
                vip = self.rng.choice(sorted(self.extras))
                del self.extras[vip]
                done.append(f"-{vip}")
            else:
                vip = self.rng.choice(sorted(self.extras))
                self.extras[vip] = self.rng.choice(
                    [s for s in EXTRA_SERVICES if s != self.extras[vip]]
                )
                done.append(f"{vip}->{self.extras[vip]}")
        self._extras_checked = (0.0, "")
        self.write_cluster()
        return " ".join(done)

    def loop(self, duration_s: float) -> None:
        """Faults until ``duration_s`` has passed, every kind at least once (shuffled first)."""
        schedule = list(KINDS)
        self.rng.shuffle(schedule)
        started = time.monotonic()
        for count in range(100_000):
            if count < len(schedule):
                kind = schedule[count]
            elif time.monotonic() - started < duration_s:
                kind = self.rng.choice(KINDS)
            else:
                break
            fault = self.inject(kind)
            if fault is not None:
                self.results.faults.append(fault)
                self._tell(fault)
            time.sleep(self.rng.uniform(0.5, 3.0))
        self.results.duration_s = time.time() - self.results.started

    def _tell(self, fault: Fault) -> None:
        def seconds(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}s"

        at = fault.injected - self.results.started
        line = (
            f"[{at:7.1f}s {_utc(fault.injected)}] {fault.kind} on {fault.target} {fault.detail}: "
            f"recovered {seconds(fault.recover_s)}, settled {seconds(fault.settled_s)}"
        )
        if fault.gave_up is not None:
            line += f"; NOT SETTLED: {fault.stuck}"
        self.say(line)

    # --- the checks ------------------------------------------------------------------
    def fault_at(self, t: float) -> Fault | None:
        """The fault whose window holds ``t`` (the latest injected, if several)."""
        found = None
        for fault in self.results.faults:
            if fault.injected <= t <= fault.window_end:
                found = fault
        return found

    def violation(self, invariant: str, at: float, message: str) -> None:
        fault = self.fault_at(at)
        kind = fault.kind if fault is not None else ""
        self.results.violations.append(Violation(invariant, at, message, kind))

    def check_holders(self, start: float, end: float) -> None:
        """Invariants 1 and 2, from the VipWatch histories between ``start`` and ``end``."""
        for vip, watch in self.watches.items():
            longest = self.results.longest.setdefault(vip, {"no_holder": 0.0, "two_holders": 0.0})
            for first, last in _stretches(watch.history, start, end, lambda h: len(h) > 1):
                split = next(
                    (
                        f
                        for f in self.results.faults
                        if f.kind in SPLIT_KINDS
                        and f.injected <= first <= (f.healed or f.injected) + MAX_SPLIT_AFTER_HEAL_S
                    ),
                    None,
                )
                if split is not None:
                    healed = split.healed or split.injected
                    self.results.splits.append(
                        Split(vip, split.kind, split.target, last - first, last - healed)
                    )
                    if last - healed > MAX_SPLIT_AFTER_HEAL_S:
                        self.violation(
                            "1",
                            first,
                            f"{vip} on two nodes until {last - healed:.2f}s after the "
                            f"{split.kind} of {split.target} healed",
                        )
                    continue
                longest["two_holders"] = max(longest["two_holders"], last - first)
                if last - first > MAX_TWO_HOLDERS_S:
                    self.violation("1", first, f"{vip} on two nodes for {last - first:.2f}s")
            for first, last in _stretches(watch.history, start, end, lambda h: not h):
                longest["no_holder"] = max(longest["no_holder"], last - first)
                if last - first > 3.0:
                    fault = self.fault_at(first)
                    self.results.slow_takeovers.append(
                        (vip, first, last - first, fault.kind if fault else "")
                    )
                if last - first > MAX_MISSING_S:
                    self.violation("2", first, f"{vip} held by no node for {last - first:.2f}s")

    def check_clients(self, start: float, end: float) -> None:
        """Invariant 3, and each fault's requests lost."""
        for client in self.clients:
            outside: list[float] = []
            failed = client.failures(start, end)
            calls = bisect.bisect_right(client.times, end) - bisect.bisect_left(client.times, start)
            self.results.clients[client.name] = {"calls": calls, "failed": len(failed)}
            for t in failed:
                fault = self.fault_at(t)
                if fault is not None:
                    fault.lost += 1
                else:
                    outside.append(t)
            for burst in _bursts(outside, gap=1.0):
                self.violation(
                    "3",
                    burst[0],
                    f"{client.name}: {len(burst)} failed calls outside any fault window "
                    f"(over {burst[-1] - burst[0]:.2f}s)",
                )

    def check_memory(self) -> None:
        """Invariant 5: RSS growth of every agent process that lived long enough.  Every
        sample goes to ``agent-rss.json`` in the lab directory, for the trend."""
        series = {
            f"{rig.name} {pid}": [
                (round(t - started, 1), round(rss, 2)) for t, rss in self.rss.get(pid, [])
            ]
            for rig in self.rigs.values()
            for pid, started in rig.agent_started.items()
        }
        (self.lab.root / "agent-rss.json").write_text(json.dumps(series), encoding="utf-8")
        for rig in self.rigs.values():
            for pid, started in rig.agent_started.items():
                samples = self.rss.get(pid, [])
                if not samples:
                    continue
                lived = samples[-1][0] - started
                baseline = next(
                    (rss for t, rss in samples if t - started >= RSS_BASELINE_AFTER_S), None
                )
                last = samples[-1][1]
                growth = None if baseline is None else last - baseline
                self.results.memory.append(Memory(rig.name, pid, lived, baseline, last, growth))
                if lived >= RSS_MIN_LIFE_S and growth is not None and growth > MAX_RSS_GROWTH_MB:
                    self.violation(
                        "5",
                        samples[-1][0],
                        f"agent {rig.name} pid {pid} grew {growth:.1f} MB "
                        f"({baseline:.1f} -> {last:.1f}) in {lived:.0f}s",
                    )

    def check_extras(self) -> None:
        """Invariant 6: the extra VIPs where the last churn put them (given 30 s)."""
        why: str | None = None
        for _ in range(int(RECOVERY_TIMEOUT_S / 0.25)):
            why = self.extras_placed()
            if why is None:
                return
            time.sleep(0.25)
        self.violation("6", time.time(), why or "")

    def finish(self) -> None:
        """Invariants 6, 1, 2, 3, 5; then SIGTERM every agent and invariant 4 (processes,
        addresses; the namespaces are checked by :func:`run` after the lab closed)."""
        self.check_extras()
        end = time.time()
        self.check_holders(self.results.started, end)
        self.check_clients(self.results.started, end)
        self._sampler_stop.set()
        self.check_memory()
        self._remember_daemons()
        agents = [r.agent for r in self.rigs.values() if r.agent is not None]
        for proc in agents:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in agents:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.violation("4", time.time(), f"agent pid {proc.pid} ignored SIGTERM for 20s")
        stopped = time.time()
        for rig in self.rigs.values():
            left = sorted(set(rig.host.addresses()) & {*MEASURED, *EXTRA_POOL})
            if left:
                self.violation("4", stopped, f"{rig.name} still has {left} after SIGTERM")
        for pid, (what, created) in sorted(self.seen_daemons.items()):
            # A daemon the agent adopted after a SIGKILL is init's child: once it exits it
            # may stay a zombie until init reaps it, holding no address and no socket.
            with contextlib.suppress(psutil.NoSuchProcess):
                proc = psutil.Process(pid)
                if proc.create_time() == created and _alive(proc):
                    self.violation("4", stopped, f"{what} pid {pid} outlived its agent")
        for rig in self.rigs.values():
            for pid in rig.agent_started:
                with contextlib.suppress(psutil.NoSuchProcess):
                    if _alive(psutil.Process(pid)):
                        self.violation("4", stopped, f"agent {rig.name} pid {pid} still alive")
            for daemon in (rig.keepalived(), rig.haproxy()):
                if daemon is not None:
                    self.violation("4", stopped, f"{rig.name}: {daemon.name()} still running")


_INSTANCE = re.compile(r"^vrrp_instance (\S+) \{$(.*?)^\}$", re.M | re.S)


def _priority_of(conf: str, vip: str) -> int:
    """The priority of the instance that lists ``vip`` in a rendered keepalived.conf."""
    for match in _INSTANCE.finditer(conf):
        body = match[2]
        if re.search(rf"^\s+{re.escape(vip)}/\d+ dev ", body, re.M):
            found = re.search(r"^\s+priority (\d+)$", body, re.M)
            if found:
                return int(found[1])
    raise LookupError(f"{vip} in no instance")


def _utc(wall: float) -> str:
    """HH:MM:SS.ss in UTC, as the agents' logs stamp their lines."""
    return time.strftime("%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 100):02d}"


def _stretches(
    history: list[tuple[float, frozenset[str]]],
    start: float,
    end: float,
    condition: Callable[[frozenset[str]], bool],
) -> list[tuple[float, float]]:
    """The (first, last) wall times of each unbroken stretch in [start, end] where
    ``condition`` held, from a VipWatch history (a list of changes)."""
    out: list[tuple[float, float]] = []
    ends = [stamp for stamp, _ in history[1:]] + [end]
    opened: float | None = None
    for (stamp, holders), until in zip(history, ends, strict=True):
        first, last = max(stamp, start), min(until, end)
        if last <= first:
            continue
        if condition(holders):
            opened = first if opened is None else opened
        elif opened is not None:
            out.append((opened, first))
            opened = None
    if opened is not None:
        out.append((opened, end))
    return out


def _bursts(times: Iterable[float], *, gap: float) -> list[list[float]]:
    """Times grouped into bursts: a new burst after a pause longer than ``gap``."""
    out: list[list[float]] = []
    for t in times:
        if out and t - out[-1][-1] <= gap:
            out[-1].append(t)
        else:
            out.append([t])
    return out


def _namespaces_left(prefix: str) -> list[str]:
    listed = ip("netns", "list", check=False).stdout.split("\n")
    names = [line.split()[0] for line in listed if line.strip()]
    return [n for n in names if n.startswith(f"{prefix}-")]


def run(duration_s: float, seed: int, *, say: Callable[[str], None] | None = None) -> Results:
    """The soak: set up, ``duration_s`` of faults (at least one of each kind), the checks."""
    tell = say or (lambda line: print(line, file=sys.stderr, flush=True))
    with Lab([*NODES, CLIENT]) as lab:
        soak = Soak(lab, seed=seed, say=tell)
        prefix = lab.prefix
        try:
            soak.start(run_for=duration_s)
            tell(
                f"settled at {_utc(soak.results.started)} UTC (the agents' log time); "
                f"faults for {duration_s:.0f}s (seed {seed}); lab in {lab.root}"
            )
            soak.loop(duration_s)
            soak.finish()
        finally:
            soak.close()
            lab.keep = lab.keep or bool(soak.results.violations)  # their logs
    left = _namespaces_left(prefix)
    if left:
        soak.violation("4", time.time(), f"namespaces left after the lab closed: {left}")
    return soak.results


SETTINGS = (
    "agent shipped defaults plus: unicast to every node's IPv4 and IPv6 address, spread, "
    "manifests (3 control-plane Nodes, 192.0.2.50 -> default/web, 2001:db8::50 -> "
    "default/web6, extras from 192.0.2.60-69); control-plane advert_int 0.1 s, service "
    "advert_int 1 s; no IPVS (VRRP only); clients: https GET every 20 ms (timeout 0.5 s), "
    "TCP connect every 20 ms (timeout 0.5 s) to each service VIP"
)


def main() -> None:
    interrupt_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int(time.time())
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores", flush=True)
    print(f"seed: {seed}", flush=True)
    print(f"settings: {SETTINGS}", flush=True)
    started = time.time()
    results = run(args.minutes * 60, seed)
    print(f"duration: {time.time() - started:.0f} s ({results.duration_s:.0f} s of faults)")
    print(json.dumps(results.report(), indent=2))


if __name__ == "__main__":
    main()

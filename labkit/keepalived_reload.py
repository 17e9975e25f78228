"""keepalived apply latency, and proof that reloads which leave VRRP alone never move a VIP.

Two nodes in network namespaces on a bridge run real keepalived (supervised by the
agent's own daemon code).  The master is reloaded N times with configurations whose
virtual servers change (endpoints added and removed) but whose VRRP section does not.
Throughout, a poller reads both nodes' addresses every 5 ms and keepalived's notify
FIFO reports every VRRP state change.  Apply latency is measured from "render done"
to "keepalived confirmed the reload" (apply: temp write + fsync + keepalived -t + swap,
then SIGHUP and wait for "Reload complete").

    python bench/keepalived_reload.py [--reloads 1000]       (root: it creates namespaces)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from agent.apply import Target, apply
from agent.assets import template_dirs
from agent.core import render
from agent.core.snapshot import Snapshot
from agent.core.translate import priority_for, translate
from agent.daemons.keepalived import Keepalived, check_keepalived
from agent.settings import Settings
from labkit.netlab import Lab, interrupt_on_sigterm, wait_for
from labkit.objects import configmap, endpoint, endpoint_slice, port, service

VIP = "192.0.2.50"


def cluster(i: int) -> Snapshot:
    """Variant i: a different set of ready endpoints every time, same VIP."""
    endpoints = [endpoint(f"203.0.113.{1 + (i + k) % 200}") for k in range(1 + i % 4)]
    return Snapshot.from_objects(
        [
            configmap({VIP: "default/web"}),
            service("web", [port("http", 80, 8080), port("dns", 53, 53, "UDP")]),
            endpoint_slice("web", [port("http", 8080), port("dns", 53, protocol="UDP")], endpoints),
        ]
    )


def settings(node: str, root: Path) -> Settings:
    return Settings(
        node_name=node,
        interface="eth0",
        advert_int=0.1,
        real_server_check="none",
        vrrp_notify_fifo=str(root / "vrrp.fifo"),
        keepalived_reload_interval=0,
    )


class Watch:
    """Addresses of both nodes every 5 ms, and the master's VRRP states from its FIFO."""

    def __init__(self, lab: Lab, master: str, backup: str, fifo: Path) -> None:
        self.lab, self.master, self.backup = lab, lab[master], lab[backup]
        self.polls = self.master_missing = self.backup_had = 0
        self.states: list[str] = []
        self.stop = threading.Event()
        fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # RDWR: never EOF while writers come and go
        self.fifo = os.fdopen(fd, "rb", buffering=0)
        # transitions from before the measurement (BACKUP at start-up) do not count
        with contextlib.suppress(BlockingIOError):
            self.fifo.read(1 << 20)
        self.threads = [
            threading.Thread(target=self._poll, daemon=True),
            threading.Thread(target=self._read_fifo, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _poll(self) -> None:
        for _ in range(10_000_000):
            if self.stop.wait(0.005):
                return
            self.polls += 1
            if not self.master.has(VIP):
                self.master_missing += 1
            if self.backup.has(VIP):
                self.backup_had += 1

    def _read_fifo(self) -> None:
        buffer = b""
        for _ in range(10_000_000):
            if self.stop.wait(0.01):
                return
            try:
                chunk = self.fifo.read(65536)
            except BlockingIOError:
                continue
            buffer += chunk or b""
            *lines, buffer = buffer.split(b"\n")
            self.states.extend(line.decode() for line in lines if line.startswith(b"INSTANCE"))

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=5)
        self.fifo.close()


def run(reloads: int) -> dict[str, Any]:
    with Lab(["ka", "kb"]) as lab:
        # the preferred master is the node with the higher rendezvous priority
        ranked = sorted(lab.hosts, key=lambda n: priority_for(n, "services_v4"), reverse=True)
        master, backup = ranked
        renderer = render.Renderer(template_dirs(None))
        daemons: dict[str, Keepalived] = {}
        targets: dict[str, Target] = {}
        for name, host in lab.hosts.items():
            run_dir = host.dir / "run"
            run_dir.mkdir(parents=True, exist_ok=True)
            os.mkfifo(run_dir / "vrrp.fifo")
            config = host.dir / "keepalived.conf"
            targets[name] = Target(
                name="keepalived.conf",
                path=config,
                mode=0o600,
                validate=lambda p, ns=host.ns: check_keepalived(p, netns=ns),
            )
            state = translate(cluster(0), settings(name, run_dir), node_name=name, interface="eth0")
            files = renderer.render(state)
            assert apply([targets[name]], files).ok
            daemons[name] = Keepalived(
                binary="keepalived",
                config=config,
                run_dir=run_dir,
                ipvs=os.path.exists("/proc/net/ip_vs"),
                prefix=["ip", "netns", "exec", host.ns],
            )
            daemons[name].start()
        wait_for(lambda: lab[master].has(VIP), timeout=15, what="master holds the VIP")
        time.sleep(0.5)
        watch = Watch(lab, master, backup, lab[master].dir / "run" / "vrrp.fifo")
        latencies: list[float] = []
        failures = 0
        master_settings = settings(master, lab[master].dir / "run")
        try:
            for i in range(1, reloads + 1):
                state = translate(cluster(i), master_settings, node_name=master, interface="eth0")
                files = renderer.render(state)
                start = time.perf_counter()
                result = apply([targets[master]], files)
                outcome = daemons[master].reload()
                latencies.append(time.perf_counter() - start)
                if not (result.ok and outcome.ok and result.changed):
                    failures += 1
            time.sleep(0.5)
        finally:
            watch.close()
            for daemon in daemons.values():
                daemon.stop()
        latencies.sort()
        return {
            "reloads": reloads,
            "failed_reloads": failures,
            "apply_p50_ms": round(statistics.median(latencies) * 1000, 1),
            "apply_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
            "apply_max_ms": round(latencies[-1] * 1000, 1),
            "polls": watch.polls,
            "master_missing_vip_polls": watch.master_missing,
            "backup_had_vip_polls": watch.backup_had,
            "master_state_changes": [s for s in watch.states if "MASTER" not in s],
        }


def main() -> None:
    # a timeout's SIGTERM unwinds through the lab's clean-up like Ctrl-C does
    interrupt_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reloads", type=int, default=1000)
    args = parser.parse_args()
    result = run(args.reloads)
    cores = os.cpu_count()
    print(f"machine: {platform.machine()}, {cores} cores; keepalived reloads with VRRP unchanged")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

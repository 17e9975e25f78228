"""haproxy reloads under constant load: failed connections per reload, and apply latency.

Three namespaces on a bridge: a client (labkit/loadgen.py: short connections in a loop and
long-lived ones), the load balancer (haproxy in master-worker mode, run by the agent's
own daemon code, holding the VIP), and a backend (labkit/echo_server.py, PROXY-aware).
The agent's pipeline renders a PROXY VIP whose endpoints alternate between one and two
servers, so every round changes haproxy.cfg; each change goes through apply (haproxy -c,
atomic swap) and a confirmed master-CLI reload.  Old workers keep serving their
connections (``expose-fd listeners`` hands the listening sockets to the new worker).

    python bench/haproxy_reload.py [--reloads 1000]          (root: it creates namespaces)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from agent.apply import Target, apply
from agent.assets import template_dirs
from agent.core import render
from agent.core.snapshot import Snapshot
from agent.core.translate import translate
from agent.daemons.haproxy import Haproxy, check_haproxy
from agent.settings import Settings
from labkit.netlab import PYTHON, Lab, interrupt_on_sigterm, ip, wait_for
from labkit.objects import configmap, endpoint, endpoint_slice, port, service

VIP = "192.0.2.53"
HERE = Path(__file__).resolve().parent


def cluster(i: int, backends: list[str]) -> Snapshot:
    endpoints = [endpoint(a) for a in (backends if i % 2 else backends[:1])]
    return Snapshot.from_objects(
        [
            configmap({VIP: "default/echo:PROXY"}),
            service("echo", [port("tcp", 80, 8080)]),
            endpoint_slice("echo", [port("tcp", 8080)], endpoints),
        ]
    )


def servers_up(haproxy: Haproxy) -> int:
    """How many servers haproxy's current worker reports UP (0 while it is starting)."""
    try:
        # "@1": the master CLI passes the command to the current worker
        rows = haproxy.master_command("@1 show stat").splitlines()
    except OSError:
        return 0
    if not rows or not rows[0].startswith("# "):
        return 0
    header = rows[0][2:].split(",")
    svname, status = header.index("svname"), header.index("status")
    fields = [row.split(",") for row in rows[1:] if row]
    return sum(1 for f in fields if f[svname] not in ("FRONTEND", "BACKEND") and f[status] == "UP")


def run(
    reloads: int, *, long_lived: int = 8, short_workers: int = 4, long_lifetime: float = 1e9
) -> dict[str, Any]:
    with Lab(["lb", "be", "cl"]) as lab:
        lb, be, cl = lab["lb"], lab["be"], lab["cl"]
        extra = "198.51.100.99"
        ip("-n", be.ns, "addr", "add", f"{extra}/24", "dev", "eth0")
        ip("-n", lb.ns, "addr", "add", f"{VIP}/32", "dev", "eth0")  # as keepalived would
        backends = [be.address, extra]
        echo_log = lab.root / "echo.log"
        echo = be.spawn(
            [PYTHON, str(HERE / "echo_server.py"), be.address, "8080", extra, "8080"], log=echo_log
        )
        run_dir = lb.dir / "run"
        settings = Settings(
            node_name="lb",
            interface="eth0",
            haproxy_stats_socket=str(run_dir / "haproxy.sock"),
            haproxy_hard_stop_after=120,
        )
        target = Target(
            name="haproxy.cfg",
            path=lb.dir / "haproxy.cfg",
            mode=0o640,
            validate=check_haproxy,
        )

        renderer = render.Renderer(template_dirs(None))

        def files(i: int) -> dict[str, str]:
            state = translate(cluster(i, backends), settings, node_name="lb", interface="eth0")
            return renderer.render(state)

        assert apply([target], files(0)).ok
        haproxy = Haproxy(
            binary="haproxy",
            config=target.path,
            run_dir=run_dir,
            prefix=["ip", "netns", "exec", lb.ns],
        )
        # haproxy's own lines (servers going DOWN, reload notices) are kept with the
        # result: when connections fail, they say why
        haproxy_log = lab.root / "haproxy.log"
        handler = logging.FileHandler(haproxy_log)
        daemon_log = logging.getLogger("vip-agent.daemons")
        daemon_log.addHandler(handler)
        daemon_log.setLevel(logging.INFO)
        # the backend listens before haproxy starts: a first health check refused by a
        # backend still starting marks the server DOWN until `rise` checks pass (seconds,
        # with default timings), which a loaded machine turned into failed connections
        wait_for(
            lambda: echo.poll() is None and "ready" in echo_log.read_text(),
            timeout=10,
            what="backend listening",
        )
        haproxy.start()
        wait_for(lambda: haproxy.master_socket.exists(), timeout=10, what="haproxy master")
        wait_for(
            lambda: servers_up(haproxy) == 1,
            timeout=10,
            what="haproxy's server UP",
        )
        stop_file = lab.root / "stop"
        out = lab.root / "loadgen.json"
        load = cl.spawn(
            [
                *(PYTHON, str(HERE / "loadgen.py"), VIP, "80", "--stop-file", str(stop_file)),
                *("--short-workers", str(short_workers), "--long-lived", str(long_lived)),
                *("--long-lifetime", str(long_lifetime)),
            ],
            log=out,
        )
        time.sleep(1.0)  # load running before the first reload
        latencies: list[float] = []
        failed = 0
        try:
            for i in range(1, reloads + 1):
                rendered = files(i)
                start = time.perf_counter()
                result = apply([target], rendered)
                outcome = haproxy.reload()
                latencies.append(time.perf_counter() - start)
                if not (result.ok and result.changed and outcome.ok):
                    failed += 1
                time.sleep(0.02)
            time.sleep(1.0)
        finally:
            stop_file.touch()
            load.wait(timeout=30)
            haproxy.stop()
            daemon_log.removeHandler(handler)
            handler.close()
        text = out.read_text().strip().splitlines()
        stats = json.loads(text[-1])
        notable = [
            line.strip()
            for line in haproxy_log.read_text(errors="replace").splitlines()
            if "DOWN" in line or "ALERT" in line or "no server" in line
        ]
        latencies.sort()
        return {
            "reloads": reloads,
            "failed_reloads": failed,
            "apply_p50_ms": round(statistics.median(latencies) * 1000, 1),
            "apply_p99_ms": round(latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000, 1),
            **stats,
            "haproxy_alerts": notable[:10],
            "failed_per_1000_reloads": round(
                (stats["short_failed"] + stats["long_lived_reset"]) * 1000 / reloads, 2
            ),
        }


def main() -> None:
    interrupt_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reloads", type=int, default=1000)
    parser.add_argument("--long-lifetime", type=float, default=3.0)
    args = parser.parse_args()
    result = run(args.reloads, long_lifetime=args.long_lifetime)
    version = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split("\n")[
        0
    ]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {version}")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""What the daemons themselves cost per reload, by the size of the configuration.

For N Services (one port, four endpoints each; the render_bench cluster, 5 nodes, spread
and unicast), the agent's own render is written and the real daemon reloads it, in a
scratch network namespace that has eth0 (this kernel has no IPVS, so keepalived runs VRRP
only: it still parses every virtual_server block):

  * keepalived: SIGHUP until its "Reload complete" (agent.daemons.keepalived.Keepalived),
    with N NAT virtual servers;
  * haproxy: a master-CLI reload until a new worker runs (agent.daemons.haproxy.Haproxy),
    with N PROXY listeners (the same Services with ``:PROXY`` in the vip-configmap);
  * and each file's own check (keepalived -t, haproxy -c), for comparison.

Each reload alternates between two renders that differ in one endpoint, so every reload
really changes something; median and max over ``--reloads``.

    python bench/daemon_reload_cost.py [--sizes 10,1000,5000] [--reloads 10]   (root)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from render_bench import cluster  # noqa: E402

from agent.assets import template_dirs  # noqa: E402
from agent.core import render  # noqa: E402
from agent.core.snapshot import Snapshot  # noqa: E402
from agent.core.translate import translate  # noqa: E402
from agent.daemons.haproxy import Haproxy, check_haproxy  # noqa: E402
from agent.daemons.keepalived import Keepalived, check_keepalived  # noqa: E402
from agent.settings import Settings  # noqa: E402
from labkit.checkers import ScratchNamespace  # noqa: E402


def files(n: int, *, proxy: bool, variant: int, run: Path) -> dict[str, str]:
    objects = cluster(n)["items"]
    assert isinstance(objects, list)
    for obj in objects:
        if obj["kind"] == "ConfigMap" and proxy:
            obj["data"] = {k: f"{v}:PROXY" for k, v in obj["data"].items()}
        if obj["kind"] == "EndpointSlice" and obj["metadata"]["name"] == "svc-0-abcde":
            obj["endpoints"][0]["addresses"] = [f"198.18.0.{1 + variant}"]
    settings = Settings(
        node_name="node-0",
        interface="eth0",
        spread=True,
        unicast=True,
        real_server_check="none",
        haproxy_stats_socket=str(run / "haproxy.sock"),
        vrrp_notify_fifo=str(run / "vrrp.fifo"),
    )
    state = translate(
        Snapshot.from_objects(objects), settings, node_name="node-0", interface="eth0"
    )
    return render.Renderer(template_dirs(None)).render(state)


def timed(values: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(values) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


def keepalived(n: int, reloads: int, netns: str, work: Path) -> dict[str, Any]:
    run = work / "ka-run"
    variants = [files(n, proxy=False, variant=v, run=run)["keepalived.conf"] for v in (0, 1)]
    config = work / "keepalived.conf"
    config.write_text(variants[0])
    checks = []
    for text in variants:
        config.write_text(text)
        started = time.monotonic()
        assert check_keepalived(config, netns=netns).ok
        checks.append(time.monotonic() - started)
    daemon = Keepalived(
        binary="keepalived",
        config=config,
        run_dir=run,
        ipvs=False,
        prefix=["ip", "netns", "exec", netns],
        confirm_timeout=60,
    )
    daemon.start()
    try:
        took = []
        for i in range(reloads):
            config.write_text(variants[(i + 1) % 2])
            outcome = daemon.reload()
            assert outcome.ok, outcome
            took.append(outcome.seconds)
            time.sleep(0.2)
    finally:
        daemon.stop()
    return {"daemon": "keepalived", "services": n, "reload": timed(took), "check": timed(checks)}


def haproxy(n: int, reloads: int, netns: str, work: Path) -> dict[str, Any]:
    run = work / "ha-run"
    run.mkdir(exist_ok=True)
    variants = [files(n, proxy=True, variant=v, run=run)["haproxy.cfg"] for v in (0, 1)]
    config = work / "haproxy.cfg"
    checks = []
    for text in variants:
        config.write_text(text)
        started = time.monotonic()
        assert check_haproxy(config).ok
        checks.append(time.monotonic() - started)
    daemon = Haproxy(
        binary="haproxy",
        config=config,
        run_dir=run,
        prefix=["ip", "netns", "exec", netns],
        confirm_timeout=120,
    )
    daemon.start()
    failed = ""
    try:
        took = []
        for i in range(reloads):
            config.write_text(variants[(i + 1) % 2])
            outcome = daemon.reload()
            if not outcome.ok:
                # e.g. 5,000 listeners with 20,000 checks under a hard RLIMIT_NOFILE of
                # 20,000: haproxy needs 25,239 and did not even start (start() does not
                # wait for it); this bench renders without a limit, as a dry run does
                failed = f"{outcome.detail} (see haproxy's log; RLIMIT_NOFILE {fd_limits()})"
                break
            took.append(outcome.seconds)
            time.sleep(0.5)
    finally:
        daemon.stop()
    listeners = variants[0].count("\nlisten ")
    row: dict[str, Any] = {"daemon": "haproxy", "services": n, "listeners": listeners}
    if failed:
        return {**row, "reload": "failed", "why": failed, "check": timed(checks)}
    return {**row, "reload": timed(took), "check": timed(checks)}


def fd_limits() -> str:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return f"soft {soft}, hard {hard}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10,1000,5000")
    parser.add_argument("--reloads", type=int, default=10)
    args = parser.parse_args()
    netns = ScratchNamespace(f"vipagent-rc-{os.getpid()}")
    rows = []
    try:
        netns.ensure_links(["eth0"])
        for n in (int(x) for x in args.sizes.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                rows.append(keepalived(n, args.reloads, netns.name, Path(tmp)))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                rows.append(haproxy(n, args.reloads, netns.name, Path(tmp)))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        netns.delete()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; reloads per size: {args.reloads}"
    )
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

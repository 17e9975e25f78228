"""Watch-to-file latency and agent RSS against a real kube-apiserver 1.20 + etcd.

What runs
    * a private kube-apiserver 1.20.2 + etcd (labkit/apiserver.py; needs
      scripts/build-kube-apiserver), with its default watch caches ON as in production, and
      a /16 service range so 5,000 Services get ClusterIPs;
    * N Services (one TCP port, named) x core/v1 Endpoints with 4 ready addresses (1.20
      serves no EndpointSlice v1, so the agent watches Endpoints), a vip-configmap entry
      per Service (NAT), and 5 Nodes; loaded with concurrent creates, time-bounded;
    * the agent pipeline in a child process (so its RSS is its own): KubeSource (from a
      kubeconfig, the real client path) -> agent.reconcile.Agent (passes at most once per
      ``--window``) -> translate -> render -> apply into a temp dir, ``--spread
      --unicast``, 5 nodes, with the real checkers as ``vip-agent run`` has them
      (``keepalived -t`` in a scratch network namespace that has eth0, ``haproxy -c``,
      both checking what changed: agent.validate.Incremental); ``--no-validate`` accepts
      every file instead.  With ``--reload`` a real keepalived (VRRP only: this kernel
      has no IPVS) runs on the written file in that namespace and each change is also
      timed to keepalived's confirmed reload.

What is measured
    * latency: from the moment the API server's answer to a patch has been read (the change
      is accepted) to the moment the new keepalived.conf is on disk (validated, os.replace
      done, seen through the child's Observer.applied), for ``--changes`` sequential
      changes, in turn an Endpoints address change, a Service port change (random
      Services) and a vip-configmap change (a VIP added, or removed again: who owns
      which VIP is decided again and the VRRP section changes), with the stages: watch
      delivery (answer -> first notify), wait for the pass, translate, render + validate
      + apply, for all and by kind;
    * a burst: ``--burst`` Endpoints changes sent as fast as the API server takes them
      (8 clients): how many passes the agent made and how long after the last change was
      accepted the file held every one of them;
    * agent RSS (current and peak) once settled at 1,000 and at 5,000 Services, for the
      long-running agent that grew with the cluster and for a fresh agent started at 5,000.

    python bench/watch_bench.py [--services 1000] [--grow-to 5000] [--changes 200]
                                [--burst 1000] [--reload] [--no-validate]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ipaddress
import json
import os
import platform
import queue
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NAMESPACE = "bench"
NODES = 5
V4_POOLS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
NODE_ADDRESSES = {ipaddress.ip_address(f"198.51.100.{200 + k}") for k in range(NODES)}
# never a Node's address: the agent refuses those as VIPs (issue 11), and the bench would
# wait for virtual servers that are rightly never written
V4_HOSTS = [h for net in V4_POOLS for h in list(net.hosts())[1:] if h not in NODE_ADDRESSES]
CHANGE_POOL = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544 benchmarking addresses
CHANGE_POOL6 = ipaddress.ip_network("2001:db8:3::/112")
# the VIP the vip-configmap changes add and remove (for an IPv4 Service: NAT keeps the
# family); the pools above leave out each network's first host
ADDED_VIP = "203.0.113.1"


def vip(i: int) -> str:
    if i < len(V4_HOSTS):
        return str(V4_HOSTS[i])
    return str(ipaddress.ip_address("2001:db8:0:1::") + i)


def endpoint_ips(i: int) -> list[str]:
    if ipaddress.ip_address(vip(i)).version == 4:
        return [str(ipaddress.ip_address("10.0.0.0") + i * 4 + j + 1) for j in range(4)]
    return [str(ipaddress.ip_address("2001:db8:2::") + i * 4 + j) for j in range(4)]


def service(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"svc-{i}", "namespace": NAMESPACE},
        "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]},
    }


def endpoints(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": f"svc-{i}", "namespace": NAMESPACE},
        "subsets": [
            {
                "addresses": [
                    {"ip": ip, "nodeName": f"node-{j % NODES}"}
                    for j, ip in enumerate(endpoint_ips(i))
                ],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            }
        ],
    }


# --- the agent, in a child process ---------------------------------------------------


def child(args: argparse.Namespace) -> None:
    """Run the agent pipeline; print one JSON line per reconcile; answer 'rss' on stdin."""
    import psutil

    from agent.apply import Target
    from agent.assets import template_dirs
    from agent.core.model import DesiredState
    from agent.core.snapshot import Snapshot
    from agent.daemons import CONFIG_FILES, Daemon, ReloadOutcome
    from agent.daemons.haproxy import check_haproxy
    from agent.daemons.keepalived import Keepalived, check_keepalived
    from agent.reconcile import Agent
    from agent.settings import Settings
    from agent.sources.kube import KubeSource
    from agent.validate import CheckResult, Incremental, Validator

    settings = Settings(
        kubeconfig=args.kubeconfig,
        configmap=f"{NAMESPACE}/vip-configmap",
        coalesce_seconds=args.window,
        spread=True,
        unicast=True,
    )
    out = Path(args.out)
    lock = threading.Lock()
    marks: dict[str, float | None] = {"notify": None, "snapshot": None, "rendered": None}

    def emit(record: dict[str, Any]) -> None:
        with lock:
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()

    class TimedSource(KubeSource):
        def start(self, notify: Any) -> None:
            def timed() -> None:
                if marks["notify"] is None:
                    marks["notify"] = time.monotonic()
                notify()

            super().start(timed)

        def snapshot(self) -> Snapshot:
            marks["snapshot"] = time.monotonic()
            return super().snapshot()

    class Observer:
        def reconciled(self, seconds: float, ok: bool) -> None:
            return None

        def rendered(self, state: DesiredState) -> None:
            marks["rendered"] = time.monotonic()

        def applied(self, changed: frozenset[str], errors: Any) -> None:
            now = time.monotonic()
            emit(
                {
                    "applied": now,
                    "changed": sorted(changed),
                    "notify": marks["notify"],
                    "snapshot": marks["snapshot"],
                    "rendered": marks["rendered"],
                }
            )
            marks["notify"] = None

        def reloaded(self, daemon: str, outcome: ReloadOutcome) -> None:
            emit({"reloaded": time.monotonic(), "daemon": daemon, "ok": outcome.ok})

    def validators() -> tuple[Validator, Validator]:
        if not args.validate:
            accept = lambda _p: CheckResult(True, "")  # noqa: E731
            return accept, accept
        spec = {f.name: f for f in CONFIG_FILES}

        def keepalived(path: Path) -> CheckResult:
            return check_keepalived(path, netns=args.netns)

        ka, ha = spec["keepalived.conf"], spec["haproxy.cfg"]
        assert ka.split is not None and ha.split is not None
        return (
            Incremental(keepalived, ka.split, ka.alone, unneeded=ka.unneeded),
            Incremental(check_haproxy, ha.split, ha.alone, unneeded=ha.unneeded),
        )

    daemons: dict[str, Daemon] = {}
    if args.reload:
        daemons["keepalived"] = Keepalived(
            binary="keepalived",
            config=out / "keepalived.conf",
            run_dir=out / "run",
            ipvs=False,
            prefix=["ip", "netns", "exec", args.netns],
            confirm_timeout=30.0,
        )
    source = TimedSource.from_settings(settings)
    check_ka, check_ha = validators()
    agent = Agent(
        settings=settings,
        source=source,
        daemons=daemons,
        targets=[
            Target("keepalived.conf", out / "keepalived.conf", 0o600, check_ka),
            Target("haproxy.cfg", out / "haproxy.cfg", 0o640, check_ha),
        ],
        template_dirs=lambda: template_dirs(None),
        node_name="node-0",
        interface="eth0",
        observer=Observer(),
    )
    stop = threading.Event()

    def commands() -> None:
        for line in sys.stdin:
            if line.strip() == "rss":
                snap = source.snapshot()
                info = psutil.Process().memory_info()
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                emit(
                    {
                        "rss": info.rss,
                        "peak": peak,
                        "services": len(snap.services),
                        "endpoints": len(snap.endpoints),
                        "error": source.error,
                    }
                )
        stop.set()

    threading.Thread(target=commands, daemon=True).start()
    agent.run(stop)
    agent.shutdown()


class Child:
    def __init__(self, kubeconfig: Path, out: Path, args: argparse.Namespace, netns: str) -> None:
        argv = [sys.executable, __file__, "--child", "--kubeconfig", str(kubeconfig)]
        argv += ["--out", str(out), "--window", str(args.window), "--netns", netns]
        argv += [] if args.validate else ["--no-validate"]
        argv += ["--reload"] if args.reload else []
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.out = out
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def next(self, timeout: float) -> dict[str, Any]:
        return self.lines.get(timeout=timeout)

    def wait_for_file(self, marker: str, timeout: float, present: bool = True) -> dict[str, Any]:
        """The first 'applied' record after which keepalived.conf contains ``marker`` (or,
        ``present`` false, no longer does)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{marker!r} not on disk within {timeout:g}s")
            record = self.next(remaining)
            if "applied" not in record:
                continue
            if (marker in (self.out / "keepalived.conf").read_text()) == present:
                return record

    def wait_for_reload(self, after: float, timeout: float) -> float:
        """When keepalived's reload of a file applied at ``after`` was confirmed."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no keepalived reload within {timeout:g}s")
            record = self.next(remaining)
            if record.get("daemon") == "keepalived" and record["reloaded"] >= after:
                if not record["ok"]:
                    raise RuntimeError("keepalived reload failed")
                return float(record["reloaded"])

    def rss(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("rss\n")
        self.proc.stdin.flush()
        while True:
            record = self.next(30)
            if "rss" in record:
                return record

    def settle(self, services: int, timeout: float) -> dict[str, Any]:
        """Wait until the agent sees ``services`` Services and a second passes with no apply."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.rss()
            if info["services"] >= services:
                try:
                    while True:
                        self.next(2.0)  # drain applies until two quiet seconds
                except queue.Empty:
                    return self.rss()
            time.sleep(0.5)
        raise TimeoutError(f"agent did not see {services} Services within {timeout:g}s")

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- the parent ----------------------------------------------------------------------


def load(api: Any, start: int, stop: int, deadline: float, workers: int = 8) -> float:
    """Create Services and Endpoints start..stop-1 concurrently; seconds taken."""
    from labkit.apiserver import post_all

    began = time.monotonic()
    base = f"/api/v1/namespaces/{NAMESPACE}"
    post_all(
        api,
        [
            ((f"{base}/services", service(i)), (f"{base}/endpoints", endpoints(i)))
            for i in range(start, stop)
        ],
        deadline=deadline,
        workers=workers,
    )
    return time.monotonic() - began


def set_configmap(api: Any, count: int) -> None:
    data = {vip(i).replace(":", "-"): f"{NAMESPACE}/svc-{i}" for i in range(count)}
    path = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
    body = {"metadata": {"name": "vip-configmap", "namespace": NAMESPACE}, "data": data}
    try:
        api.request("POST", path, body=body)
    except Exception:
        api.request("PUT", f"{path}/vip-configmap", body=body)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Changes:
    """The changes the parent makes; state kept across runs so each one really changes."""

    def __init__(self, api: Any, rng: random.Random) -> None:
        self.api = api
        self.rng = rng
        self.pool = iter(CHANGE_POOL.hosts())
        self.pool6 = iter(CHANGE_POOL6.hosts())
        self.ports: dict[int, int] = {}

    def make(self, n: int, count: int) -> tuple[str, str, bool]:
        """Change a random IPv4 Service (n % 3 == 0: its Endpoints, 1: its port) or the
        vip-configmap (2: add a VIP for it, or remove the one added last time); (kind,
        marker in the file, whether the marker appears or goes)."""
        base = f"/api/v1/namespaces/{NAMESPACE}"
        merge = "application/merge-patch+json"
        i = self.rng.choice([i for i in range(count) if ipaddress.ip_address(vip(i)).version == 4])
        if n % 3 == 2:
            # an admission change: who owns which VIP is decided again, VRRP changes
            key = ADDED_VIP.replace(":", "-")
            # what the ConfigMap holds now (the bench rewrites it as the cluster grows)
            data = self.api.request("GET", f"{base}/configmaps/vip-configmap").get("data") or {}
            adding = key not in data
            value = f"{NAMESPACE}/svc-{i}" if adding else None
            self.api.request(
                "PATCH",
                f"{base}/configmaps/vip-configmap",
                body={"data": {key: value}},
                content_type=merge,
            )
            return "vip-configmap", f"virtual_server {ADDED_VIP} ", adding
        if n % 3 == 0:
            new_ip = str(next(self.pool))
            body = {
                "subsets": [
                    {
                        "addresses": [
                            {"ip": ip, "nodeName": "node-1"}
                            for ip in (new_ip, *endpoint_ips(i)[1:])
                        ],
                        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                    }
                ]
            }
            self.api.request("PATCH", f"{base}/endpoints/svc-{i}", body=body, content_type=merge)
            return "Endpoints", f"real_server {new_ip} 8080", True
        port = 81 if self.ports.get(i, 80) == 80 else 80
        self.ports[i] = port
        spec = service(i)["spec"]
        spec["ports"][0]["port"] = port
        self.api.request(
            "PATCH", f"{base}/services/svc-{i}", body={"spec": spec}, content_type=merge
        )
        return "Service", f"virtual_server {vip(i)} {port} {{", True


def burst(api: Any, child: Child, changes: Changes, count: int, size: int) -> None:
    """``size`` Endpoints changes as fast as the API server takes them; the agent's passes
    and how long after the last one was accepted the file held them all."""
    base = f"/api/v1/namespaces/{NAMESPACE}"
    merge = "application/merge-patch+json"
    picks = changes.rng.sample(range(count), min(size, count))
    markers = []
    bodies = []
    for i in picks:
        # the new address of the VIP's family (an IPv6 VIP takes IPv6 real servers)
        v4 = ipaddress.ip_address(vip(i)).version == 4
        new_ip = str(next(changes.pool if v4 else changes.pool6))
        markers.append(f"real_server {new_ip} 8080")
        bodies.append(
            (
                i,
                {
                    "subsets": [
                        {
                            "addresses": [
                                {"ip": ip, "nodeName": "node-1"}
                                for ip in (new_ip, *endpoint_ips(i)[1:])
                            ],
                            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                        }
                    ]
                },
            )
        )

    def send(item: tuple[int, dict[str, Any]]) -> float:
        i, body = item
        api.request("PATCH", f"{base}/endpoints/svc-{i}", body=body, content_type=merge)
        return time.monotonic()

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        accepted = list(pool.map(send, bodies))
    last = max(accepted)
    # Every pass that ended after the burst started, until two quiet seconds: the final
    # state is installed by the last one that changed keepalived.conf.  (The file is
    # read once, at the end: records queue up while the burst is sent, and the file on
    # disk when a record is read is not the file that record installed.)
    passes, done = 0, float("nan")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            record = child.next(2.0)
        except queue.Empty:
            break
        if "applied" not in record or record["applied"] < started:
            continue
        passes += 1
        if "keepalived.conf" in record["changed"]:
            done = record["applied"]
    text = (child.out / "keepalived.conf").read_text()
    missing = [m for m in markers if m not in text]
    print(
        f"  burst of {len(bodies)} Endpoints changes sent in {last - started:.2f} s: "
        f"{passes} passes; the last change to the file {done - last:.3f} s after the "
        f"last was accepted; {len(missing)} missing"
    )


def measure(child: Child, changes: Changes, count: int, runs: int, reload: bool) -> None:
    totals: list[float] = []
    reloads: list[float] = []
    reloads_by_kind: dict[str, list[float]] = {}
    stages: dict[str, list[float]] = {"watch": [], "coalesce": [], "translate": [], "render": []}
    kinds: dict[str, list[float]] = {"Endpoints": [], "Service": [], "vip-configmap": []}
    by_kind: dict[str, list[tuple[float, float]]] = {}
    for n in range(runs + 6):  # the first 6 warm up
        kind, marker, present = changes.make(n, count)
        accepted = time.monotonic()
        record = child.wait_for_file(marker, timeout=30, present=present)
        reloaded = child.wait_for_reload(record["applied"], timeout=60) if reload else None
        if n >= 6:
            total = record["applied"] - accepted
            totals.append(total)
            kinds[kind].append(total)
            if reloaded is not None:
                reloads.append(reloaded - accepted)
                reloads_by_kind.setdefault(kind, []).append(reloaded - accepted)
            if record["notify"] and record["snapshot"] and record["rendered"]:
                stages["watch"].append(record["notify"] - accepted)
                stages["coalesce"].append(record["snapshot"] - record["notify"])
                stages["translate"].append(record["rendered"] - record["snapshot"])
                stages["render"].append(record["applied"] - record["rendered"])
                translated = record["rendered"] - record["snapshot"]
                by_kind.setdefault(kind, []).append(
                    (translated, record["applied"] - record["rendered"])
                )
        # after a quiet moment: past keepalived's reload throttle (1 s) when it reloads
        time.sleep(1.1 if reload else changes.rng.uniform(0.2, 0.3))
    ms = 1000.0

    def p50_99(values: list[float]) -> str:
        p50, p99 = percentile(values, 50) * ms, percentile(values, 99) * ms
        return f"p50 {p50:.0f} ms, p99 {p99:.0f} ms"

    gap = "1.1 s" if reload else "0.2-0.3 s"
    print(f"  {len(totals)} changes ({len(kinds['Endpoints'])} Endpoints, ", end="")
    print(f"{len(kinds['Service'])} Service, {len(kinds['vip-configmap'])} vip-configmap: ", end="")
    print(f"a VIP added or removed), one at a time, {gap} apart")
    print(f"  change accepted -> validated file on disk: {p50_99(totals)}, ", end="")
    print(f"max {max(totals) * ms:.0f} ms")
    if reloads:
        print(f"  change accepted -> keepalived reload confirmed: {p50_99(reloads)}")
    for kind, values in kinds.items():
        split = by_kind.get(kind, [])
        translate = percentile([t for t, _ in split], 50) * ms if split else float("nan")
        rest = percentile([r for _, r in split], 50) * ms if split else float("nan")
        print(
            f"    {kind:>13} changes: {p50_99(values)} (p50 translate {translate:.0f} ms, "
            f"render + validate + apply {rest:.0f} ms)"
        )
        if kind in reloads_by_kind:
            print(f"    {'':>13}   -> keepalived reload confirmed: {p50_99(reloads_by_kind[kind])}")
    print("  stages (p50 / p99 ms):")
    for name, label in (
        ("watch", "watch delivery (answer -> notify)"),
        ("coalesce", "wait for the pass (notify -> reconcile)"),
        ("translate", "snapshot + translate"),
        ("render", "render + validate + apply"),
    ):
        values = stages[name]
        p50, p99 = percentile(values, 50) * ms, percentile(values, 99) * ms
        print(f"    {label:<40} {p50:7.1f} / {p99:7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--grow-to", type=int, default=5000)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument(
        "--window", type=float, default=0.1, help="least seconds between two passes"
    )
    parser.add_argument("--burst", type=int, default=1000, help="changes in the burst (0: none)")
    parser.add_argument("--reload", action="store_true", help="time keepalived's reloads too")
    parser.add_argument("--no-validate", dest="validate", action="store_false")
    parser.add_argument("--netns", help=argparse.SUPPRESS)
    parser.add_argument("--load-timeout", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kubeconfig", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from labkit.checkers import ScratchNamespace

    # keepalived -t refuses a file whose interfaces do not exist: it checks in here
    netns = ScratchNamespace(f"vipagent-wb-{os.getpid()}")
    netns.ensure_links(["eth0"])
    try:
        run(args, netns.name)
    finally:
        netns.delete()


def run(args: argparse.Namespace, netns: str) -> None:
    from agent.sources.kube import KubeApi
    from labkit.apiserver import ApiServer

    rng = random.Random(args.seed)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    with (
        ApiServer(watch_cache_sizes={}, service_cluster_ip_range="10.96.0.0/16") as server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        print(
            "kube-apiserver 1.20.2 + etcd on 127.0.0.1 (watch cache on), started in "
            f"{server.start_seconds:.1f} s"
        )
        api = KubeApi(server.api_client())
        changes = Changes(api, rng)
        api.request("POST", "/api/v1/namespaces", body={"metadata": {"name": NAMESPACE}})
        for k in range(NODES):
            node = {
                "metadata": {"name": f"node-{k}", "labels": {}},
                "status": {
                    "addresses": [
                        {"type": "InternalIP", "address": f"198.51.100.{200 + k}"},
                        {"type": "InternalIP", "address": f"2001:db8:1::{200 + k}"},
                    ]
                },
            }
            api.request("POST", "/api/v1/nodes", body=node)
        deadline = time.monotonic() + args.load_timeout
        took = load(api, 0, args.services, deadline)
        set_configmap(api, args.services)
        print(f"loaded {args.services} Services + Endpoints (4 addresses each) in {took:.1f} s")
        kubeconfig = server.kubeconfig(Path(tmp) / "kubeconfig")
        out = Path(tmp) / "out-a"
        out.mkdir()
        agent = Child(kubeconfig, out, args, netns)
        try:
            started = time.monotonic()
            first = agent.settle(args.services, timeout=120)
            print(
                f"agent: first sync + render of {first['services']} Services settled in "
                f"{time.monotonic() - started:.1f} s; RSS {first['rss'] / 1e6:.0f} MB "
                f"(peak {first['peak'] / 1e6:.0f} MB)"
            )
            checks = "keepalived -t / haproxy -c on what changed" if args.validate else "none"
            print(
                f"latency at {args.services} Services, passes at most every "
                f"{args.window * 1000:.0f} ms, checks: {checks}, spread + unicast, 5 nodes:"
            )
            measure(agent, changes, args.services, args.changes, args.reload)
            if args.burst:
                burst(api, agent, changes, args.services, args.burst)
            if args.grow_to > args.services:
                took = load(api, args.services, args.grow_to, deadline)
                set_configmap(api, args.grow_to)
                print(f"grew to {args.grow_to} Services in {took:.1f} s while the agent ran")
                grown = agent.settle(args.grow_to, timeout=300)
                print(
                    f"agent that grew with the cluster, at {grown['services']} Services: "
                    f"RSS {grown['rss'] / 1e6:.0f} MB (peak {grown['peak'] / 1e6:.0f} MB)"
                )
        finally:
            agent.stop()
        if args.grow_to > args.services:
            out_b = Path(tmp) / "out-b"
            out_b.mkdir()
            fresh = Child(kubeconfig, out_b, args, netns)
            try:
                started = time.monotonic()
                info = fresh.settle(args.grow_to, timeout=300)
                print(
                    f"fresh agent at {info['services']} Services: settled in "
                    f"{time.monotonic() - started:.1f} s, RSS {info['rss'] / 1e6:.0f} MB "
                    f"(peak {info['peak'] / 1e6:.0f} MB)"
                )
                print(f"latency at {args.grow_to} Services:")
                measure(fresh, changes, args.grow_to, args.changes, args.reload)
                if args.burst:
                    burst(api, fresh, changes, args.grow_to, args.burst)
            finally:
                fresh.stop()


if __name__ == "__main__":
    main()

"""Dry-run render time and peak RSS on generated clusters.

For each size N it writes a cluster of N Services x 4 ready endpoints (each with a VIP in
the vip-configmap, NAT, one TCP port) plus 5 nodes, as one `kubectl get -o yaml` List, then
runs `vip-agent render --dry-run` in a fresh process (the way an operator runs it) and
reports wall time, the interpreter start-up it includes, and the child's peak RSS, once
for `-o yaml` input and once for `-o json` input (the same objects).  For JSON input each
dry run is paired with the floor, a fresh Python doing nothing but ``json.load`` of the
same file, run right after it, and the ratio of the two (both beyond interpreter
start-up) is the median of the pairs': in wall time, and in CPU time, which a busy
neighbour on a shared machine sways less.

With ``--stages N`` it also times each stage of the JSON dry run in one fresh process
(imports, a bare ``json.load`` of the input for comparison, reading it into a snapshot,
translate, render), the median of N such processes.

With ``--kubectl`` it measures a third input besides: the same cluster as a real
kube-apiserver 1.20 holds it, printed by the real kubectl 1.20 (``kubectl get
nodes,services,endpointslices,configmaps -A -o json``), the input an operator actually
has.  The generated objects carry only the fields the agent reads; the API server adds the
rest (uid, resourceVersion, creationTimestamp, clusterIPs, ...), and kubectl indents.  The
EndpointSlices are discovery.k8s.io/v1beta1 (1.20 serves no v1), and
``metadata.managedFields`` is left out, as kubectl 1.21 and later print it (1.20 still
printed them, which would make the file several times larger and its parse slower).  The
files rendered must be byte for byte those of the generated input.  Needs the
kube-apiserver build (scripts/build-kube-apiserver) and etcd.

    python bench/render_bench.py [--sizes 100,1000,5000] [--repeat 3] [--stages 0] [--kubectl]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # labkit, for --kubectl

# VIPs never collide with the Nodes' addresses (198.51.100.200-204, 2001:db8:1::200-204) or
# the endpoints (203.0.113.0/24, 2001:db8:2::/64): the agent would refuse them, and the
# figure would measure a broken cluster
V4_POOLS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/25")]


V4_HOSTS = [h for net in V4_POOLS for h in list(net.hosts())[1:]]


def vip(i: int) -> str:
    if i < len(V4_HOSTS):
        return str(V4_HOSTS[i])
    return str(ipaddress.ip_address("2001:db8:0:1::") + i)


def cluster(n: int) -> dict[str, object]:
    items: list[dict[str, object]] = []
    for k in range(5):
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": f"node-{k}", "labels": {}},
                "status": {
                    "addresses": [
                        {"type": "InternalIP", "address": f"198.51.100.{200 + k}"},
                        {"type": "InternalIP", "address": f"2001:db8:1::{200 + k}"},
                    ]
                },
            }
        )
    data: dict[str, str] = {}
    for i in range(n):
        name = f"svc-{i}"
        address = vip(i)
        family = ipaddress.ip_address(address).version
        data[address.replace(":", "-")] = f"bench/{name}"
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": "bench"},
                "spec": {
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]
                },
            }
        )
        if family == 4:
            eps = [f"203.0.113.{1 + (i * 4 + j) % 250}" for j in range(4)]
        else:
            eps = [str(ipaddress.ip_address("2001:db8:2::") + i * 4 + j) for j in range(4)]
        items.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name}-abcde",
                    "namespace": "bench",
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": f"IPv{family}",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [
                    {"addresses": [e], "conditions": {"ready": True}, "nodeName": f"node-{j}"}
                    for j, e in enumerate(eps)
                ],
            }
        )
    items.append(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "vip-configmap", "namespace": "kube-system"},
            "data": data,
        }
    )
    return {"apiVersion": "v1", "kind": "List", "items": items}


# `vip-agent` as an installed console script runs it
AGENT = "import sys; sys.argv[0] = 'vip-agent'; from agent.cli import entry; entry()"
# what a render imports (the command line loads the render's modules only for it)
RENDER_IMPORTS = (
    "import agent.cli, agent.assets, agent.apply, agent.core.render, agent.core.translate, "
    "agent.daemons.spec, agent.sources.manifests"
)


# Where a dry run's time goes, stage by stage, in one fresh process: the same calls as
# `vip-agent render --dry-run` (agent.cli._render_once) less writing the files.
STAGES = """
import gc, json, sys, time
t0 = time.perf_counter()
from agent.assets import template_cache, template_dirs
from agent.cli import load_settings, node_name_of
from agent.core import render as render_mod
from agent.core.translate import translate
from agent.daemons import config_files_for
from agent.daemons.spec import outputs
from agent.sources.manifests import load_snapshot
t1 = time.perf_counter()
gc.disable()
path = sys.argv[1]
with open(path) as f:
    json.load(f)
t2 = time.perf_counter()
flags = dict(manifests=(path,), node_name="node-0", interface="eth0", spread=True,
             unicast=True)
settings = load_settings(None, flags)
snapshot = load_snapshot(settings.manifests)
t3 = time.perf_counter()
state = translate(snapshot, settings, node_name=node_name_of(settings),
                  interface=settings.interface)
t4 = time.perf_counter()
render_mod.Renderer(template_dirs(settings.templates), once=True,
                    bytecode_cache=template_cache()).render(
    state, outputs(config_files_for(settings)))
t5 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "json.load": t2 - t1, "read": t3 - t2,
                  "translate": t4 - t3, "render": t5 - t4}))
"""


def stages(path: Path, repeat: int) -> dict[str, float]:
    """Median seconds per stage over ``repeat`` fresh processes."""
    runs = []
    for _ in range(repeat):
        done = subprocess.run(
            [sys.executable, "-c", STAGES, str(path)], capture_output=True, text=True, check=True
        )
        runs.append(json.loads(done.stdout))
    return {stage: statistics.median(run[stage] for run in runs) for stage in runs[0]}


class Run(NamedTuple):
    wall: float
    cpu: float
    """user + system seconds"""
    peak_rss: int
    """bytes"""


def _ratio(run: float, floor: float) -> float:
    # a small input's floor is within the start-up's jitter, even below it: count it as
    # 1 ms rather than divide by nothing
    return run / max(floor, 0.001)


PLURALS = {"Node": "nodes", "Service": "services", "ConfigMap": "configmaps"}


def as_v1beta1(slice_obj: dict[str, Any]) -> dict[str, Any]:
    """An EndpointSlice of ``cluster`` as kube-apiserver 1.20 takes it: discovery.k8s.io/v1beta1,
    where an endpoint's node is its ``kubernetes.io/hostname`` topology (1.20 drops
    ``nodeName`` unless a feature gate is on)."""
    endpoints = [
        {
            "addresses": e["addresses"],
            "conditions": e["conditions"],
            "topology": {"kubernetes.io/hostname": e["nodeName"]},
        }
        for e in slice_obj["endpoints"]
    ]
    return {**slice_obj, "apiVersion": "discovery.k8s.io/v1beta1", "endpoints": endpoints}


def kubectl_listing(n: int, deadline: float) -> dict[str, Any]:
    """``cluster(n)`` created in a real kube-apiserver 1.20, as kubectl prints it back."""
    from agent.sources.kube import KubeApi
    from labkit.apiserver import ApiServer, kube_dir, post_all, wait_until

    items = cluster(n)["items"]
    assert isinstance(items, list)
    with (
        ApiServer(service_cluster_ip_range="10.96.0.0/16") as server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        api = KubeApi(server.api_client())
        api.request("POST", "/api/v1/namespaces", body={"metadata": {"name": "bench"}})
        # the API server makes kube-system itself, a moment after it is ready
        wait_until(
            lambda: _exists(api, "/api/v1/namespaces/kube-system"),
            timeout=max(1.0, deadline - time.monotonic()),
            what="namespace kube-system",
        )
        post_all(api, [[_post(obj)] for obj in items], deadline=deadline)
        kubeconfig = server.kubeconfig(Path(tmp) / "kubeconfig")
        printed = subprocess.run(
            [
                *(str(kube_dir() / "kubectl"), "--kubeconfig", str(kubeconfig)),
                *("get", "nodes,services,endpointslices,configmaps", "-A", "-o", "json"),
            ],
            capture_output=True,
            check=True,
            timeout=max(1.0, deadline - time.monotonic()),
        )
    listing: dict[str, Any] = json.loads(printed.stdout)
    for item in listing["items"]:
        item["metadata"].pop("managedFields", None)
    return listing


def _post(obj: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Where ``obj`` of ``cluster`` is created in kube-apiserver 1.20, and the body."""
    kind, meta = obj["kind"], obj["metadata"]
    where = f"/namespaces/{meta['namespace']}" if "namespace" in meta else ""
    if kind == "EndpointSlice":
        return f"/apis/discovery.k8s.io/v1beta1{where}/endpointslices", as_v1beta1(obj)
    return f"/api/v1{where}/{PLURALS[kind]}", obj


def _exists(api: Any, path: str) -> bool:
    from agent.sources.kube import ApiError

    try:
        api.request("GET", path)
    except ApiError:
        return False
    return True


def run_once(argv: list[str], *, code: int = 0) -> Run:
    """``argv`` in a fresh process: its wall time, and its own CPU time and peak RSS; it
    must exit with ``code``, or what is timed is some other path (an error's)."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert child.stderr is not None
    errors = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != code:
        raise SystemExit(
            f"{argv} exited {child.returncode}, not {code}: {errors.decode(errors='replace')}"
        )
    return Run(elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--stages",
        type=int,
        default=0,
        metavar="N",
        help="also time each stage of the JSON dry run, median of N fresh processes",
    )
    parser.add_argument(
        "--generate", nargs=3, metavar=("N", "FORMAT", "PATH"), help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--kubectl",
        action="store_true",
        help="also measure on the same cluster as kubectl prints it from a real kube-apiserver",
    )
    args = parser.parse_args()
    if args.generate:
        n, fmt, out_path = args.generate
        if fmt == "kubectl":
            # kubectl indents by 4 (Go's json.MarshalIndent), as json.dumps does here
            listing = kubectl_listing(int(n), deadline=time.monotonic() + 600)
            text = json.dumps(listing, indent=4) + "\n"
        elif fmt == "yaml":
            text = yaml.safe_dump(cluster(int(n)), sort_keys=False)
        else:
            text = json.dumps(cluster(int(n)))
        Path(out_path).write_text(text, encoding="utf-8")
        return
    # An installed agent has its bytecode (pip compiles it; a checkout's first run writes
    # it): compile it now, or with PYTHONDONTWRITEBYTECODE set (as on CI machines) every
    # run would compile the agent's modules again and time that instead
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "agent")], check=True)
    bare = [run_once([sys.executable, "-c", "pass"]) for _ in range(5)]
    startup, startup_cpu = min(r.wall for r in bare), min(r.cpu for r in bare)
    imports = min(run_once([sys.executable, "-c", RENDER_IMPORTS]).wall for _ in range(3))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        f"interpreter start-up: {startup * 1000:.0f} ms; with imports: {imports * 1000:.0f} ms "
        "(the agent's bytecode compiled first, as an installed package has it)"
    )
    print(
        f"{'services':>9} {'input':>6} {'MB':>5} {'wall p50 s':>11} {'beyond start-up s':>18} "
        f"{'peak RSS MB':>12} {'json.load s':>12} {'x json.load':>12} {'CPU x':>6}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        formats = ("yaml", "json", "kubectl") if args.kubectl else ("yaml", "json")
        # what the generated JSON renders: the kubectl input must render the same, or the
        # two would not time the same work
        rendered_from_json: dict[str, bytes] = {}
        for n, fmt in ((int(s), f) for s in args.sizes.split(",") for f in formats):
            path = Path(tmp) / f"cluster-{n}.{fmt}"
            # Generated in a child: this process stays small, because a fork of a large
            # parent counts the parent's pages in the child's peak RSS (it survives exec).
            subprocess.run(
                [sys.executable, __file__, "--generate", str(n), fmt, str(path)], check=True
            )
            out = Path(tmp) / f"out-{n}-{fmt}"
            argv = [
                *(sys.executable, "-c", AGENT, "render", "--dry-run"),
                *("--manifests", str(path), "--node-name", "node-0", "--interface", "eth0"),
                *("--spread", "--unicast", "--output-dir", str(out)),
            ]  # fmt: skip
            load = [sys.executable, "-c", f"import json; json.load(open({str(path)!r}))"]
            runs, floors = [], []
            for _ in range(args.repeat):
                runs.append(run_once(argv))
                if fmt != "yaml":
                    floors.append(run_once(load))
            files = {f.name: f.read_bytes() for f in out.iterdir()}
            if fmt == "kubectl" and files != rendered_from_json:
                raise SystemExit(f"{n} Services as kubectl prints them render other files")
            rendered_from_json = files if fmt == "json" else rendered_from_json
            wall = statistics.median(r.wall for r in runs)
            rss = max(r.peak_rss for r in runs)
            size = path.stat().st_size / 1e6
            floor = ""
            if floors:
                pairs = list(zip(runs, floors, strict=True))
                parse = statistics.median(f.wall for f in floors) - startup
                ratio = statistics.median(
                    _ratio(r.wall - startup, f.wall - startup) for r, f in pairs
                )
                cpu_ratio = statistics.median(
                    _ratio(r.cpu - startup_cpu, f.cpu - startup_cpu) for r, f in pairs
                )
                floor = f"{parse:>12.3f} {ratio:>12.1f} {cpu_ratio:>6.1f}"
            print(
                f"{n:>9} {fmt:>6} {size:>5.1f} {wall:>11.3f} {wall - startup:>18.3f} "
                f"{rss / 1e6:>12.1f} {floor}"
            )
            if fmt == "json" and args.stages:
                parts = stages(path, args.stages)
                shown = ", ".join(f"{k} {v * 1000:.0f}" for k, v in parts.items())
                print(f"{'':>9} stages, ms (median of {args.stages}, one process each): {shown}")


if __name__ == "__main__":
    main()

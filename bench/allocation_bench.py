"""Allocation latency: a LoadBalancer Service created -> its pool address written.

A private kube-apiserver 1.20.2 + etcd (labkit/apiserver.py) and three real agents
(labkit/cluster_agents.py: ``vip-agent run --daemons none``, shipped Lease timings unless
told otherwise) share a pool.  Two bursts of Services are created as fast as the API
server takes them:

  1. a burst with a settled Lease holder;
  2. the holder is SIGKILLed and a burst is created at once: what a user sees when the
     allocating agent dies (the next one takes over after the lease duration).

Latency per Service: from the API server's answer to the create, to the watch event that
shows the ``kube-vip.io/loadbalancerIPs`` annotation (the address as every agent then
sees it).

    python bench/allocation_bench.py [--services 100] [--lease-duration 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.core.translate import ANNOTATION_LB_IPS
from agent.sources.kube import ApiError, KubeApi
from labkit import objects
from labkit.apiserver import ApiServer
from labkit.cluster_agents import ClusterAgent, ClusterAgents


class Seen:
    """Watches the namespace's Services and notes when each first carries an address."""

    def __init__(self, api: KubeApi, ns: str) -> None:
        self.api, self.ns = api, ns
        self.at: dict[str, float] = {}
        self.addresses: dict[str, str] = {}
        self._stop = threading.Event()
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        path = f"/api/v1/namespaces/{self.ns}/services"
        listed = self.api.request("GET", path)
        version = listed["metadata"]["resourceVersion"]
        query = [("watch", "1"), ("resourceVersion", version), ("timeoutSeconds", "600")]
        with self.api.watch(path, query, read_timeout=630) as stream:
            self.ready.set()
            for event in stream:
                obj = event.get("object") or {}
                name = (obj.get("metadata") or {}).get("name")
                address = ((obj.get("metadata") or {}).get("annotations") or {}).get(
                    ANNOTATION_LB_IPS
                )
                if name and address and name not in self.at:
                    self.at[name] = time.monotonic()
                    self.addresses[name] = address
                if self._stop.is_set():
                    return

    def wait(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(n in self.at for n in names):
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()


def lease_holder(api: KubeApi, ns: str) -> str | None:
    try:
        lease = api.request(
            "GET", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/vip-agent-ipam"
        )
    except ApiError:
        return None
    return (lease.get("spec") or {}).get("holderIdentity")


def burst(api: KubeApi, ns: str, prefix: str, count: int) -> dict[str, float]:
    created: dict[str, float] = {}
    for i in range(count):
        name = f"{prefix}-{i:03d}"
        body = objects.service(name, [objects.port("http", 80)], namespace=ns, type="LoadBalancer")
        api.request("POST", f"/api/v1/namespaces/{ns}/services", body=body)
        created[name] = time.monotonic()
    return created


def report(label: str, created: dict[str, float], seen: Seen) -> dict[str, Any]:
    latencies = sorted(seen.at[n] - t for n, t in created.items() if n in seen.at)
    missing = len(created) - len(latencies)
    if not latencies:
        print(f"{label}: nothing allocated ({missing} missing)")
        return {"label": label, "missing": missing}
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    row = {
        "label": label,
        "count": len(latencies),
        "missing": missing,
        "p50_ms": round(q[49] * 1000),
        "p99_ms": round(q[98] * 1000),
        "max_ms": round(latencies[-1] * 1000),
    }
    print(
        f"{label}: {row['count']} allocated, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
        f"max {row['max_ms']} ms, {missing} not allocated"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--lease-duration", type=float, default=5.0)
    parser.add_argument("--lease-renew-deadline", type=float, default=3.0)
    parser.add_argument("--lease-retry-period", type=float, default=1.0)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        f"3 agents (--daemons none, real keepalived -t / haproxy -c), Lease duration "
        f"{args.lease_duration} s, renew deadline {args.lease_renew_deadline} s, retry "
        f"{args.lease_retry_period} s; bursts of {args.services} Services"
    )
    with (
        ApiServer(service_cluster_ip_range="10.96.0.0/16") as server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        api = KubeApi(server.api_client())
        ns = "bench"
        api.request("POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})
        nodes = [f"node-{i}" for i in range(1, 4)]
        for i, name in enumerate(nodes):
            api.request("POST", "/api/v1/nodes", body=objects.node(name, f"198.51.100.{11 + i}"))
        api.request(
            "POST",
            f"/api/v1/namespaces/{ns}/configmaps",
            body=objects.configmap({f"cidr-{ns}": "203.0.113.0/24"}, namespace=ns, name="kubevip"),
        )
        settings = {
            "configmap": f"{ns}/vip-configmap",
            "pool_configmap": f"{ns}/kubevip",
            "lease": f"{ns}/vip-agent-ipam",
            "lease_duration": args.lease_duration,
            "lease_renew_deadline": args.lease_renew_deadline,
            "lease_retry_period": args.lease_retry_period,
        }
        agents = [
            ClusterAgent(apiserver=server, node_name=n, root=Path(tmp), settings=settings)
            for n in nodes
        ]
        with ClusterAgents(agents) as running:
            deadline = time.monotonic() + 30
            while lease_holder(api, ns) is None and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(2)  # every agent listed and watching
            seen = Seen(api, ns)
            seen.ready.wait(10)
            first = burst(api, ns, "steady", args.services)
            seen.wait(list(first), timeout=60)
            report("burst, settled Lease holder", first, seen)
            holder = running.holder(lease_holder(api, ns))
            assert holder is not None
            holder.kill()
            second = burst(api, ns, "takeover", args.services)
            seen.wait(list(second), timeout=60)
            report("burst right after the holder's SIGKILL", second, seen)
            addresses = list(seen.addresses.values())
            print(f"addresses distinct: {len(set(addresses)) == len(addresses)} ({len(addresses)})")
            by_address: dict[str, list[str]] = {}
            for name, address in seen.addresses.items():
                by_address.setdefault(address, []).append(name)
            twice = {a: n for a, n in by_address.items() if len(n) > 1}
            if twice:
                print(f"given twice: {dict(list(twice.items())[:5])}")
            seen.stop()


if __name__ == "__main__":
    main()

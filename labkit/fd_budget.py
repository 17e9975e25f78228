"""A cluster of many PROXY listeners, for haproxy's file descriptor budget.

``proxy_objects(n)`` is ``n`` PROXY listeners: LoadBalancer Services ``svc-0``,
``svc-1``... (``svc-0`` the oldest), two ports each (80 and 81) on their own VIP in
192.0.2.0/24, 198.51.100.0/24 and 203.0.113.0/24, four checked servers each: an
``n``-listener haproxy.cfg needs ``5 n`` descriptors before its first connection, and
when they do not all fit the newest Services lose their listeners first.
"""

from __future__ import annotations

from typing import Any

from agent.core.snapshot import Snapshot
from labkit.objects import endpoint, endpoint_slice, port, service

BACKENDS = ["198.51.100.201", "198.51.100.202", "198.51.100.203", "198.51.100.204"]


def vip(i: int) -> str:
    """The VIP of ``svc-<i>``."""
    net = ("192.0.2", "198.51.100", "203.0.113")[i // 150]
    return f"{net}.{1 + i % 150}"


def proxy_objects(listeners: int) -> list[dict[str, Any]]:
    objs = []
    for i in range((listeners + 1) // 2):
        name = f"svc-{i}"
        ports = [port("a", 80, 8080), port("b", 81, 8081)][: min(2, listeners - 2 * i)]
        svc = service(
            name,
            ports,
            annotations={"kube-vip.io/loadbalancerIPs": vip(i), "vip-agent.io/method": "PROXY"},
            type="LoadBalancer",
        )
        # a minute apart, in order: admission takes Services oldest first
        svc["metadata"].update(
            uid=f"uid-{name}", creationTimestamp=f"2024-01-01T{i // 60:02d}:{i % 60:02d}:00Z"
        )
        objs.append(svc)
        eports = [port(p["name"], p["targetPort"]) for p in ports]
        objs.append(endpoint_slice(name, eports, [endpoint(a) for a in BACKENDS]))
    return objs


def proxy_cluster(listeners: int) -> Snapshot:
    return Snapshot.from_objects(proxy_objects(listeners))

"""A cluster of many PROXY listeners, for haproxy's file descriptor budget.

``proxy_cluster(n)`` is ``n`` PROXY listeners (two ports on each of ``ceil(n / 2)`` VIPs
in 192.0.2.0/24, 198.51.100.0/24 and 203.0.113.0/24), four checked servers each: an
``n``-listener haproxy.cfg needs ``5 n`` descriptors before its first connection.
"""

from __future__ import annotations

from agent.core.snapshot import Snapshot
from labkit.objects import configmap, endpoint, endpoint_slice, port, service

BACKENDS = ["198.51.100.201", "198.51.100.202", "198.51.100.203", "198.51.100.204"]


def _vip(i: int) -> str:
    net = ("192.0.2", "198.51.100", "203.0.113")[i // 150]
    return f"{net}.{1 + i % 150}"


def proxy_cluster(listeners: int) -> Snapshot:
    objs = []
    data = {}
    for i in range((listeners + 1) // 2):
        name = f"svc-{i}"
        ports = [port("a", 80, 8080), port("b", 81, 8081)][: min(2, listeners - 2 * i)]
        data[_vip(i)] = f"default/{name}:PROXY"
        objs.append(service(name, ports))
        eports = [port(p["name"], p["targetPort"]) for p in ports]
        objs.append(endpoint_slice(name, eports, [endpoint(a) for a in BACKENDS]))
    return Snapshot.from_objects([configmap(data), *objs])

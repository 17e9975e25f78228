"""The real agent in BGP mode on every node of labkit.bgplab, against FRR as the router.

    node ns n1: vip-agent run (mode bgp) -> BIRD, haproxy; stand-in apiserver; responder
    node ns n2: the same                                  \\
                                                           router ns (FRR, AS 64500) - client

Each node runs ``vip-agent run`` in static mode (no API server: the cluster is a manifests
directory all nodes read, as they would share one cluster), supervising its own BIRD,
haproxy and keepalived.  The agent's prober asks the node's stand-in apiserver (whose
health a test flips) and gates the control-plane VIP through the kernel table BIRD learns
from.  A TCP responder on each node answers with the node's name on every VIP, so a client
call through the router shows which node served it.

The cluster: both nodes are control-plane nodes; the control-plane VIP 192.0.2.10; Service
``default/web`` on 192.0.2.100 and ``default/web6`` on 2001:db8::100 (every node
announces: ECMP); ``default/local`` on 192.0.2.101 with ``externalTrafficPolicy: Local``
and its only ready endpoint on n1.  ``set_vips`` rewrites the vip-configmap (what an
operator's edit does); every agent sees it through its file watch.

Documentation addresses and ASNs only; every process is stopped by pid and every namespace
deleted when the lab closes (BgpLab does both).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from agent.daemons.process import read_pid
from labkit.bgplab import NODE_ASN, PYTHON, ROUTER_ADDRESS, ROUTER_ASN, BgpLab, Node
from labkit.netlab import wait_for
from labkit.objects import configmap, endpoint, endpoint_slice, node, port, service
from labkit.standin_apiserver import make_certificate

CONTROL_PLANE_VIP = "192.0.2.10"
WEB4 = "192.0.2.100"
WEB6 = "2001:db8::100"
LOCAL4 = "192.0.2.101"
PORT = 8080
PASSWORD = "lab-secret"
GATE_TABLE = 8810
HERE = Path(__file__).resolve().parent

BASE_VIPS = {WEB4: "default/web", WEB6: "default/web6", LOCAL4: "default/local"}


def cluster(nodes: Sequence[Node], vips: Mapping[str, str]) -> list[dict[str, Any]]:
    """Nodes, the vip-configmap ``vips`` and the Services it names, as manifests."""
    objects: list[dict[str, Any]] = [
        node(n.name, n.address, n.address6, control_plane=True) for n in nodes
    ]
    objects.append(configmap(dict(vips)))
    web_ports = [port("tcp", PORT, PORT)]
    names = sorted({ref.split("/", 1)[1] for ref in vips.values()} | {"web", "web6", "local"})
    for name in names:
        spec: dict[str, Any] = {}
        if name == "local":
            spec["externalTrafficPolicy"] = "Local"
        objects.append(service(name, web_ports, **spec))
        on = [nodes[0]] if name == "local" else list(nodes)
        objects.append(
            endpoint_slice(
                name,
                [port("tcp", PORT)],
                [endpoint(f"203.0.113.{20 + n.index}", node_name=n.name) for n in on],
            )
        )
    return objects


def peers(*, bfd: bool) -> list[dict[str, Any]]:
    """The router, as a YAML bgp_peers entry (MD5: the router demands the password)."""
    return [{"address": ROUTER_ADDRESS, "as": ROUTER_ASN, "password": PASSWORD, "bfd": bfd}]


class AgentNode:
    """One node's agent, stand-in apiserver and responder."""

    def __init__(self, lab: AgentBgpLab, node: Node) -> None:
        self.lab = lab
        self.node = node
        self.name = node.name
        self.run_dir = node.dir / "run"
        self.mode_file = node.dir / "apiserver.mode"
        self.mode_file.write_text("200")
        self.config = node.dir / "config.yaml"
        self.log = node.dir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, **overrides: Any) -> None:
        values: dict[str, Any] = {
            "kubernetes": False,
            "manifests": [str(self.lab.manifests)],
            "node_name": self.name,
            "node_address": self.node.address,
            "interface": "eth0",
            "run_dir": str(self.run_dir),
            "keepalived_config": str(self.node.dir / "etc" / "keepalived.conf"),
            "haproxy_config": str(self.node.dir / "etc" / "haproxy.cfg"),
            "bird_config": str(self.node.dir / "etc" / "bird.conf"),
            "metrics_address": "127.0.0.1:0",
            "mode": "bgp",
            "bgp_local_as": NODE_ASN,
            "bgp_peers": peers(bfd=True),
            "bgp_gate_table": GATE_TABLE,
            "control_plane_vip": CONTROL_PLANE_VIP,
            "control_plane_backends": [n.address for n in self.lab.bgp.nodes.values()],
            "apiserver_url": f"https://{self.node.address}:6443/readyz",
            "apiserver_ca_file": str(self.lab.cert),
            "real_server_check": "none",
        }
        values.update(overrides)
        self.config.write_text(yaml.safe_dump(values), encoding="utf-8")

    def start(self) -> subprocess.Popen[bytes]:
        self.proc = self.node.spawn(
            [PYTHON, "-m", "agent", "run", "--config", str(self.config)], log=self.log
        )
        return self.proc

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=15)

    def bird_pid(self) -> int | None:
        return read_pid(self.run_dir / "bird.pid")

    def healthy(self, ok: bool) -> None:
        """Flip the stand-in apiserver this node's prober asks."""
        self.mode_file.write_text("200" if ok else "500")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class AgentBgpLab:
    """BgpLab with the agent on every node; see the module docstring."""

    def __init__(self, nodes: Sequence[str] = ("n1", "n2"), *, bfd: bool = True) -> None:
        self.bfd = bfd
        self.bgp = BgpLab(nodes, passwords={n: PASSWORD for n in nodes}, bfd=bfd)
        try:
            self.root = self.bgp.root
            self.manifests = self.root / "manifests"
            self.manifests.mkdir()
            lab_nodes = list(self.bgp.nodes.values())
            self.cert, self.key = make_certificate(
                self.root / "pki", [*(n.address for n in lab_nodes), CONTROL_PLANE_VIP]
            )
            self.vips: dict[str, str] = dict(BASE_VIPS)
            self.set_vips(self.vips)
            self.agents = {n.name: AgentNode(self, n) for n in lab_nodes}
            for agent in self.agents.values():
                agent.node.spawn(
                    [
                        *(PYTHON, str(HERE / "standin_apiserver.py")),
                        *("--bind", agent.node.address, "--port", "6443"),
                        *("--cert", str(self.cert), "--key", str(self.key)),
                        *("--mode-file", str(agent.mode_file)),
                    ],
                    log=agent.node.dir / "standin.log",
                )
                agent.node.serve(PORT)
                agent.write_config(bgp_peers=peers(bfd=bfd))
                agent.start()
        except BaseException:
            self.bgp.close(failed=True)
            raise

    def set_vips(self, vips: Mapping[str, str]) -> None:
        """Rewrite the cluster with this vip-configmap (atomically: a rename)."""
        self.vips = dict(vips)
        text = yaml.safe_dump_all(cluster(list(self.bgp.nodes.values()), self.vips))
        tmp = self.manifests / ".cluster.yaml.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.rename(self.manifests / "cluster.yaml")

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Every session Established (with BFD up, if on), every base VIP at the router."""
        for name in self.agents:
            self.bgp.wait_established(name, bfd=self.bfd, timeout=timeout)
        everyone = frozenset(self.agents)
        for vip in (CONTROL_PLANE_VIP, WEB4, WEB6):
            self.wait_fib(vip, everyone, timeout=timeout)
        self.wait_fib(LOCAL4, frozenset({next(iter(self.agents))}), timeout=timeout)

    def fib(self, vip: str) -> frozenset[str]:
        """The nodes the router forwards ``vip`` to now."""
        return self.bgp.fib_nodes(_host_prefix(vip))

    def wait_fib(self, vip: str, nodes: Iterable[str], *, timeout: float = 30.0) -> float:
        want = frozenset(nodes)
        return wait_for(
            lambda: self.fib(vip) == want, timeout=timeout, interval=0.02, what=f"{vip} -> {want}"
        )

    def close(self, *, failed: bool = False) -> None:
        for agent in self.agents.values() if hasattr(self, "agents") else ():
            if agent.proc is not None and agent.proc.poll() is None:
                agent.proc.send_signal(signal.SIGTERM)
                try:
                    agent.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    agent.proc.kill()
        self.bgp.close(failed=failed)

    def __enter__(self) -> AgentBgpLab:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(failed=exc_type is not None)


def _host_prefix(vip: str) -> str:
    return f"{vip}/128" if ":" in vip else f"{vip}/32"

"""Real ``vip-agent run`` processes against a real kube-apiserver: what agents do to the
cluster (allocation, Events, ingress, the Lease), for tests/kube and bench/.

Each agent is its own process with its own node name, run directory and files, in
``--daemons none`` mode (files are rendered and checked by the real ``keepalived -t``
and ``haproxy -c``, nothing is started: VRRP is the namespace labs' business).  They run
in the host's network namespace, because the test API server listens on its loopback;
``--daemons none`` changes no address or route there.  Every process is stopped by pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from pyroute2 import IPRoute

from labkit.apiserver import ApiServer


def default_route_interface() -> str:
    """The interface of the host's default route (keepalived -t needs one that exists)."""
    with IPRoute() as ipr:
        for route in ipr.get_routes(family=socket.AF_INET):
            if route["dst_len"] == 0 and route.get_attr("RTA_OIF"):
                links = ipr.get_links(route.get_attr("RTA_OIF"))
                if links:
                    return str(links[0].get_attr("IFLA_IFNAME"))
    return "eth0"


class ClusterAgent:
    """One ``vip-agent run --daemons none`` process for one node."""

    def __init__(
        self,
        *,
        apiserver: ApiServer,
        node_name: str,
        root: Path,
        settings: dict[str, Any],
        token: str | None = None,
    ) -> None:
        self.node_name = node_name
        self.dir = root / node_name
        self.dir.mkdir(parents=True, exist_ok=True)
        run = self.dir / "run"
        self.config = self.dir / "config.yaml"
        values: dict[str, Any] = {
            "node_name": node_name,
            "kubeconfig": str(apiserver.kubeconfig(self.dir / "kubeconfig", token)),
            "daemons": "none",
            "interface": default_route_interface(),
            "run_dir": str(run),
            "keepalived_config": str(self.dir / "etc" / "keepalived.conf"),
            "haproxy_config": str(self.dir / "etc" / "haproxy.cfg"),
            "metrics_address": "127.0.0.1:0",
            "coalesce_seconds": 0.05,
            **settings,
        }
        self.config.write_text(yaml.safe_dump(values), encoding="utf-8")
        self.log = self.dir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ClusterAgent:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the agent dies without releasing anything (a crash, a power cut)."""
        if self.proc is not None and self.alive:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, as systemd or the kubelet stops it; SIGKILL after 10 s."""
        if self.proc is None or not self.alive:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def keepalived_conf(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "etc" / "keepalived.conf").read_text(encoding="utf-8")
        return ""

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(encoding="utf-8", errors="replace")
        return ""


class ClusterAgents:
    """Several agents; every process is stopped when the block ends."""

    def __init__(self, agents: list[ClusterAgent]) -> None:
        self.agents = {a.node_name: a for a in agents}

    def __enter__(self) -> ClusterAgents:
        for agent in self.agents.values():
            agent.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for agent in self.agents.values():
            agent.stop()

    def __getitem__(self, node: str) -> ClusterAgent:
        return self.agents[node]

    def holder(self, identity: str | None) -> ClusterAgent | None:
        """The agent whose Lease holder identity is ``identity`` (``<node>_<random>``)."""
        if not identity:
            return None
        return self.agents.get(identity.rpartition("_")[0])

"""Network namespaces joined by a bridge: real hosts for real VRRP, on one machine.

    client ns ─┐
    node ns 1 ─┼─ br0 (in the switch ns)
    node ns 2 ─┘

Each host has ``eth0`` with an address in 198.51.100.0/24; VIPs live in 192.0.2.0/24,
reached on-link.  Only documentation addresses, only namespaces this lab created.
Everything the lab starts is stopped by pid, and its namespaces are deleted, when the
lab closes (also on test failure: use it as a context manager).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

SUBNET = "198.51.100"
PYTHON = sys.executable


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def wait_for(
    condition: Callable[[], bool], *, timeout: float, interval: float = 0.02, what: str = ""
) -> float:
    """Poll until ``condition`` holds; seconds it took. Bounded in time and in count."""
    start = time.monotonic()
    for _ in range(int(timeout / interval) + 1):
        if condition():
            return time.monotonic() - start
        time.sleep(interval)
    raise TimeoutError(f"not within {timeout}s: {what or condition}")


class Host:
    def __init__(self, lab: Lab, name: str, index: int) -> None:
        self.lab = lab
        self.name = name
        self.ns = f"{lab.prefix}-{name}"
        self.address = f"{SUBNET}.{index}"
        self.port = f"{lab.prefix}p{index}"[-15:]
        self.dir = lab.root / name
        self.dir.mkdir(parents=True, exist_ok=True)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, *argv], capture_output=True, text=True, check=check
        )

    def spawn(
        self, argv: Sequence[str], log: Path | None = None, **kw: Any
    ) -> subprocess.Popen[bytes]:
        out = open(log or os.devnull, "ab")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            **kw,
        )
        out.close()
        self.lab.processes.append(proc)
        return proc

    def addresses(self, ifname: str = "eth0") -> set[str]:
        done = ip("-n", self.ns, "-j", "addr", "show", "dev", ifname, check=False)
        if done.returncode != 0 or not done.stdout.strip():
            return set()
        return {a["local"] for link in json.loads(done.stdout) for a in link.get("addr_info", [])}

    def has(self, vip: str) -> bool:
        return vip in self.addresses()

    def link(self, up: bool) -> None:
        """Cut or restore this host's cable (its port on the bridge)."""
        ip("-n", self.lab.switch, "link", "set", self.port, "up" if up else "down")


class Lab:
    def __init__(self, hosts: Sequence[str], *, root: Path | None = None) -> None:
        self.prefix = f"va{os.getpid() % 100000}{len(hosts)}"
        self.switch = f"{self.prefix}-sw"
        self.root = root or Path(tempfile.mkdtemp(prefix="vip-agent-lab-"))
        self.processes: list[subprocess.Popen[bytes]] = []
        self.hosts: dict[str, Host] = {}
        ip("netns", "add", self.switch)
        try:
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
            for index, name in enumerate(hosts, start=11):
                self._add(name, index)
        except BaseException:
            self.close()
            raise

    def _add(self, name: str, index: int) -> None:
        host = Host(self, name, index)
        ip("netns", "add", host.ns)
        ip("-n", host.ns, "link", "add", "eth0", "type", "veth", "peer", "name", host.port)
        ip("-n", host.ns, "link", "set", host.port, "netns", self.switch)
        ip("-n", self.switch, "link", "set", host.port, "master", "br0", "up")
        ip("-n", host.ns, "link", "set", "lo", "up")
        ip("-n", host.ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip("-n", host.ns, "link", "set", "eth0", "up")
        # VIPs (192.0.2.0/24) are on-link for every host, as on one L2 segment
        ip("-n", host.ns, "route", "add", "192.0.2.0/24", "dev", "eth0")
        self.hosts[name] = host

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        # daemons that outlived their agent (the SIGKILL tests) are found by their pidfiles
        for pidfile in self.root.glob("*/run/*.pid"):
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
        for host in self.hosts.values():
            ip("netns", "del", host.ns, check=False)
        ip("netns", "del", self.switch, check=False)


def agent_config(host: Host, **settings: Any) -> Path:
    """A config file for ``vip-agent run`` on ``host``: every path under the host's dir."""
    run = host.dir / "run"
    values: dict[str, Any] = {
        "kubernetes": False,
        "node_name": host.name,
        "node_address": host.address,
        "interface": "eth0",
        "run_dir": str(run),
        "keepalived_config": str(host.dir / "etc" / "keepalived.conf"),
        "haproxy_config": str(host.dir / "etc" / "haproxy.cfg"),
        "health_file": str(run / "apiserver.health"),
        "haproxy_stats_socket": str(run / "haproxy.sock"),
        "vrrp_notify_fifo": str(run / "vrrp.fifo"),
        "metrics_address": "127.0.0.1:0",
    }
    values.update(settings)
    path = host.dir / "config.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def start_agent(host: Host, config: Path, *extra: str) -> subprocess.Popen[bytes]:
    return host.spawn(
        [PYTHON, "-m", "agent", "run", "--config", str(config), *extra],
        log=host.dir / "agent.log",
    )


@contextlib.contextmanager
def lab(*hosts: str) -> Iterator[Lab]:
    with Lab(hosts) as built:
        yield built

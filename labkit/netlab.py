"""Network namespaces joined by a bridge: real hosts for real VRRP, on one machine.

    client ns ─┐
    node ns 1 ─┼─ br0 (in the switch ns)
    node ns 2 ─┘

Each host has ``eth0`` with an address in 198.51.100.0/24 and one in 2001:db8:1::/64;
VIPs live in 192.0.2.0/24 and 2001:db8::/64, reached on-link.  Only documentation
addresses, only namespaces this lab created.
Everything the lab starts is stopped by pid, and its namespaces are deleted, when the
lab closes (also on test failure: use it as a context manager); its directory goes too,
unless the ``with`` block raised or the lab was asked to ``keep`` it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

SUBNET = "198.51.100"
SUBNET6 = "2001:db8:1:"
PYTHON = sys.executable


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def interrupt_on_sigterm() -> None:
    """SIGTERM (a timeout killing a benchmark) unwinds like Ctrl-C, so labs clean up.

    Only in this process: pyroute2 forks helpers to open sockets in namespaces, and a
    helper that inherited the handler printed a KeyboardInterrupt traceback when its
    parent ended it.
    """
    main_pid = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != main_pid:
            os._exit(128 + signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


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
        self.address6 = f"{SUBNET6}:{index}"
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
        """Cut or restore this host's cable: its eth0 loses carrier, as when a cable is pulled."""
        ip("-n", self.lab.switch, "link", "set", self.port, "up" if up else "down")

    def partition(self, isolated: bool) -> None:
        """Take this host off the switch while its link stays up (a partition further
        away than its own cable: no carrier loss, so keepalived cannot tell)."""
        if isolated:
            ip("-n", self.lab.switch, "link", "set", self.port, "nomaster")
        else:
            ip("-n", self.lab.switch, "link", "set", self.port, "master", "br0")


class Lab:
    def __init__(
        self,
        hosts: Sequence[str],
        *,
        root: Path | None = None,
        prefix: str | None = None,
        keep: bool = False,
    ) -> None:
        self.prefix = prefix or f"va{os.getpid() % 100000}{len(hosts)}"
        self.switch = f"{self.prefix}-sw"
        self.owns_root = root is None
        """A lab dir this lab made goes when it closes (as BgpLab's does), unless ``keep``
        is set or the ``with`` block raised: then its logs stay for whoever looks into the
        failure."""
        self.keep = keep
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
        # no duplicate address detection: the address is usable at once, as the IPv4 one
        ip("-n", host.ns, "addr", "add", f"{host.address6}/64", "dev", "eth0", "nodad")
        ip("-n", host.ns, "link", "set", "eth0", "up")
        # VIPs (192.0.2.0/24, 2001:db8::/64) are on-link for every host, as on one L2 segment
        ip("-n", host.ns, "route", "add", "192.0.2.0/24", "dev", "eth0")
        ip("-n", host.ns, "route", "add", "2001:db8::/64", "dev", "eth0")
        self.hosts[name] = host

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.keep = self.keep or exc_type is not None
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
        if self.owns_root and not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)
        elif self.owns_root:
            print(f"lab: logs kept in {self.root}", file=sys.stderr)


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


class VipWatch:
    """Who holds a VIP, sampled every ``interval`` over persistent netlink sockets
    (pyroute2 NetNS: about 0.2 ms a look, so 5 ms sampling costs little CPU).

    The sockets are made and used only in the watcher's own thread: pyroute2 enters a
    namespace through a helper process per thread, which must not be shared.
    :meth:`several` watches several VIPs with one thread and one look per namespace for
    all of them (three watches of their own cost about 60 % of a core, mostly parsing).
    """

    def __init__(
        self,
        lab: Lab,
        vip: str,
        names: Sequence[str],
        interval: float = 0.005,
        *,
        _start: bool = True,
    ) -> None:
        self.vip = vip
        self.interval = interval
        self.namespaces = {name: lab[name].ns for name in names}
        self.history: list[tuple[float, frozenset[str]]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._watches = [self]
        """Every watch this one's thread samples (itself first)."""
        self._thread = threading.Thread(target=self._run, daemon=True)
        if _start:
            self._start()

    @classmethod
    def several(
        cls, lab: Lab, vips: Sequence[str], names: Sequence[str], interval: float = 0.005
    ) -> dict[str, VipWatch]:
        """One watch per VIP, all sampled by one thread; closing any closes them all."""
        watches = {vip: cls(lab, vip, names, interval, _start=False) for vip in vips}
        first, *rest = watches.values()
        first._watches = list(watches.values())
        for watch in rest:
            watch._stop, watch._ready, watch._thread = first._stop, first._ready, first._thread
        first._start()
        return watches

    def _start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("VIP watcher did not start")

    @staticmethod
    def _held(sockets: dict[str, Any]) -> dict[str, set[str]]:
        """Every address in each namespace, from one dump per namespace."""
        held: dict[str, set[str]] = {}
        for name, sock in sockets.items():
            held[name] = set()
            for msg in sock.get_addr():
                held[name].update((msg.get_attr("IFA_LOCAL"), msg.get_attr("IFA_ADDRESS")))
        return held

    def _record(self, stamp: float, holders: frozenset[str]) -> None:
        with self._lock:
            if not self.history or self.history[-1][1] != holders:
                self.history.append((stamp, holders))

    def _run(self) -> None:
        from pyroute2 import NetNS

        sockets = {name: NetNS(ns) for name, ns in self.namespaces.items()}
        try:
            for _ in range(100_000_000):
                held = self._held(sockets)
                stamp = time.time()
                for watch in self._watches:
                    watch._record(
                        stamp, frozenset(n for n, found in held.items() if watch.vip in found)
                    )
                self._ready.set()
                if self._stop.wait(self.interval):
                    return
        finally:
            for sock in sockets.values():
                with contextlib.suppress(Exception):
                    sock.close()

    def current(self) -> frozenset[str]:
        with self._lock:
            return self.history[-1][1] if self.history else frozenset()

    def first_time(self, since: float, condition: Callable[[frozenset[str]], bool]) -> float | None:
        """Wall time from which ``condition`` has held without a break (clipped to ``since``)."""
        with self._lock:
            history = list(self.history)
        found: float | None = None
        for stamp, holders in history:
            if not condition(holders):
                found = None
            elif found is None:
                found = stamp
        return None if found is None else max(found, since)

    def earliest(self, since: float, condition: Callable[[frozenset[str]], bool]) -> float | None:
        """The first wall time at or after ``since`` when ``condition`` held."""
        with self._lock:
            history = list(self.history)
        ends = [stamp for stamp, _ in history[1:]] + [time.time()]
        for (stamp, holders), end in zip(history, ends, strict=True):
            if end > since and condition(holders):
                return max(stamp, since)
        return None

    def longest(self, since: float, condition: Callable[[frozenset[str]], bool]) -> float:
        """The longest stretch after ``since`` during which ``condition`` held (seconds)."""
        with self._lock:
            history = list(self.history)
        ends = [stamp for stamp, _ in history[1:]] + [time.time()]
        longest, run = 0.0, 0.0
        for (stamp, holders), end in zip(history, ends, strict=True):
            if end <= since:
                continue
            if condition(holders):
                run += end - max(stamp, since)
                longest = max(longest, run)
            else:
                run = 0.0
        return longest

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def scrape(host: Host, path: str = "/metrics") -> tuple[int, str]:
    """(HTTP status, body) of ``path`` on the agent's port, from inside the namespace."""
    port_file = host.dir / "run" / "metrics.port"
    if not port_file.exists():
        return 0, ""
    port = int(port_file.read_text())
    done = host.run(
        "curl",
        "-s",
        "-m",
        "5",
        "-w",
        "\n%{http_code}",
        f"http://127.0.0.1:{port}{path}",
        check=False,
    )
    body, _, code = done.stdout.rpartition("\n")
    return int(code or 0), body


def sample(body: str, name: str, **labels: str) -> float | None:
    """The value of one sample in the text exposition format."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in body.splitlines():
        match = re.match(r"^([a-z_:]+)(\{[^}]*\})? (\S+)$", line)
        if not match or match[1] != name:
            continue
        got = ",".join(sorted((match[2] or "{}")[1:-1].split(","))) if match[2] else ""
        if got == wanted:
            return float(match[3])
    return None

"""A routed lab for the BGP mode: FRR as the upstream router, BIRD (or the agent) on nodes.

    node ns n1 ─┐                                   ┌─ client ns
    node ns n2 ─┼─ br0 (switch ns) ─ eth0 [router ns: FRR] eth1 ───┘
    ...        ─┘   198.51.100.0/24                 203.0.113.0/24
                    2001:db8:100::/64               2001:db8:200::/64

The router (198.51.100.1, AS 64500) runs zebra, bfdd and bgpd started by the lab, never by
systemd: each daemon has its pid file, log and vty socket in the lab's directory and reads no
file under /etc/frr.  Nodes (198.51.100.11, .12, ... in AS 64501) peer with it over IPv4, one
session carrying IPv4 and IPv6 unicast.  The router is *passive* (it never connects), so who
opens the session, and when, is decided by the node alone: start-up is deterministic.  VIPs
come from 192.0.2.0/24 and 2001:db8::/64; zebra installs the best paths (ECMP, up to 8) into
the router namespace's kernel, and the client behind the router reaches a VIP through it.

Only documentation addresses, only namespaces this lab made; forwarding is switched on inside
the router namespace only (no host sysctl, address or route is ever touched).  Every process
the lab starts is stopped by pid and every namespace deleted when it closes, also when a test
fails (use it as a context manager); the lab directory is kept only after a failure, for its
logs.

``BgpLab`` is the lab, ``Bird`` runs a hand-written BIRD on a node (the agent will run its own
later), ``RouteWatch`` samples the router's FIB for one prefix in the background, and
``reference_bird_conf`` renders the minimal BIRD 2.0.12 configuration this lab was proven
with: what the agent's template has to match.

Two FRR 8.4 start-up behaviours shape the waits here:
- bgpd refuses a peer's connections until a second after a configuration load ends (its
  "config-pending hold"); the lab returns only once every peer waits in Active.
- bgpd registers each neighbor's BFD session unbound and re-binds it (source address,
  interface) when BGP first establishes.  When BFD was already Up, one side sees Up -> Down
  and the first session drops once; ``wait_established`` waits past that.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import itertools
import json
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from labkit.netlab import ip, wait_for

__all__ = [
    "CLIENT_ADDRESS",
    "CLIENT_ADDRESS6",
    "FRR_BIN",
    "FRR_DAEMONS",
    "NODE_ASN",
    "ROUTER_ADDRESS",
    "ROUTER_ADDRESS6",
    "ROUTER_ASN",
    "BfdMode",
    "BgpLab",
    "BgpPath",
    "Bird",
    "Node",
    "RouteWatch",
    "Session",
    "frr_conf",
    "reference_bird_conf",
    "wait_for",
]

NODE_NET = "198.51.100"
NODE_NET6 = "2001:db8:100::"
ROUTER_ADDRESS = f"{NODE_NET}.1"
ROUTER_ADDRESS6 = f"{NODE_NET6}1"
CLIENT_ROUTER = "203.0.113.1"
CLIENT_ROUTER6 = "2001:db8:200::1"
CLIENT_ADDRESS = "203.0.113.10"
CLIENT_ADDRESS6 = "2001:db8:200::10"
ROUTER_ASN = 64500
NODE_ASN = 64501
FRR_BIN = Path("/usr/lib/frr")
FRR_DAEMONS = ("zebra", "bfdd", "bgpd")
PYTHON = sys.executable

_serial = itertools.count()

BfdMode = Literal["on", "off", "graceful"]

# A TCP responder for a node: answers every connection with the node's name, then closes.
# One dual-stack socket on [::] (IPV6_V6ONLY off) takes the IPv4 and the IPv6 VIPs.
_RESPONDER = """
import socket, sys
name = sys.argv[1].encode() + b"\\n"
srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
srv.bind(("::", int(sys.argv[2])))
srv.listen(512)
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    try:
        conn.sendall(name)
    except OSError:
        pass
    conn.close()
"""

# The client side: COUNT fresh connections (new source ports, so the router's L4 ECMP hash
# spreads them), one line of output per call: the node's name, or "-" when it failed.
_CALLER = """
import socket, sys
vip, port, count, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
for _ in range(count):
    try:
        with socket.create_connection((vip, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            print(conn.makefile().readline().strip() or "-", flush=True)
    except OSError:
        print("-", flush=True)
"""


def frr_conf(
    neighbors: Sequence[str],
    *,
    passwords: Mapping[str, str] | None = None,
    bfd: bool = True,
    bfd_interval_ms: int = 100,
    bfd_multiplier: int = 3,
    keepalive: int = 3,
    hold: int = 9,
    maximum_paths: int = 8,
    debug: bool = False,
) -> str:
    """The router's integrated frr.conf (applied with ``vtysh -f``, as FRR's own init does).

    One passive peer-group for every node: FRR never dials, so a session exists only once a
    node's speaker connects.  Graceful restart stays in FRR's default helper mode (it keeps
    a restarting node's routes as stale until its End-of-RIB).
    """
    passwords = passwords or {}
    lines = [
        "frr defaults traditional",
        "log timestamp precision 3",
        # session and BFD transitions with millisecond stamps: what a failed test needs
        "debug bgp neighbor-events",
        "debug bgp bfd",
        "debug bfd peer",
        "!",
    ]
    if debug:
        lines += [
            "debug bgp updates in",
            "debug bgp zebra",
            "debug bgp graceful-restart",
            "debug bfd zebra",
            "!",
        ]
    if bfd:
        lines += [
            "bfd",
            " profile nodes",
            f"  receive-interval {bfd_interval_ms}",
            f"  transmit-interval {bfd_interval_ms}",
            f"  detect-multiplier {bfd_multiplier}",
            " exit",
            "exit",
            "!",
        ]
    lines += [
        f"router bgp {ROUTER_ASN}",
        f" bgp router-id {ROUTER_ADDRESS}",
        " no bgp ebgp-requires-policy",
        " bgp log-neighbor-changes",
        " neighbor NODES peer-group",
        f" neighbor NODES remote-as {NODE_ASN}",
        " neighbor NODES passive",
        f" neighbor NODES timers {keepalive} {hold}",
    ]
    if bfd:
        lines += [" neighbor NODES bfd", " neighbor NODES bfd profile nodes"]
    for address in neighbors:
        lines.append(f" neighbor {address} peer-group NODES")
        if address in passwords:
            lines.append(f" neighbor {address} password {passwords[address]}")
    lines += [
        " !",
        " address-family ipv4 unicast",
        f"  maximum-paths {maximum_paths}",
        " exit-address-family",
        " !",
        " address-family ipv6 unicast",
        "  neighbor NODES activate",
        f"  maximum-paths {maximum_paths}",
        " exit-address-family",
        "exit",
        "!",
    ]
    return "\n".join(lines) + "\n"


def reference_bird_conf(
    *,
    router_id: str,
    address6: str,
    vips: Iterable[str] = (),
    bfd: BfdMode = "on",
    graceful_restart: bool = True,
    password: str | None = None,
    gate_table: int | None = None,
    gated_vips: Iterable[str] = (),
    keepalive: int = 3,
    hold: int = 9,
    bfd_interval_ms: int = 100,
    fast_connect: bool = True,
    log: Path | None = None,
) -> str:
    """A minimal BIRD 2.0.12 configuration for one node, written by hand and proven here.

    ``vips`` are announced unconditionally (static blackhole host routes); ``gated_vips``
    only while a route for them is present in kernel table ``gate_table`` (the agent gates
    the control-plane VIP that way: ``ip route add VIP/32 dev lo table N`` flips it without
    a reconfiguration).  The export filters accept exactly the listed host routes and
    nothing else.
    """
    static = sorted((ipaddress.ip_interface(v).ip for v in vips), key=_version_first)
    gated = [ipaddress.ip_interface(v).ip for v in gated_vips]
    exported = sorted({*static, *gated}, key=_version_first)
    by_family: dict[int, list[str]] = {4: [], 6: []}
    for address in exported:
        by_family[address.version].append(f"{address}/{address.max_prefixlen}")
    lines = []
    if log is not None:
        lines += [f'log "{log}" all;', "debug protocols { states, events, packets, routes };"]
    lines += [
        f"router id {router_id};",
        "",
        "protocol device {",
        "  scan time 10;",
        "}",
        "",
    ]
    for version in (4, 6):
        routes = [a for a in static if a.version == version]
        if routes:
            lines.append(f"protocol static vips{version} {{")
            lines.append(f"  ipv{version};")
            lines += [f"  route {a}/{a.max_prefixlen} blackhole;" for a in routes]
            lines += ["}", ""]
    if gate_table is not None:
        for version in (4, 6):
            lines += [
                f"protocol kernel gate{version} {{",
                f"  kernel table {gate_table};",
                "  learn;",
                "  scan time 10;",
                f"  ipv{version} {{ import all; export none; }};",
                "}",
                "",
            ]
    for version in (4, 6):
        nets = by_family[version]
        lines.append(f"filter vip_export{version} {{")
        if nets:
            lines.append(f"  if net ~ [ {', '.join(nets)} ] then accept;")
        lines += ["  reject;", "}", ""]
    if bfd != "off":
        lines += [
            "protocol bfd {",
            '  interface "eth0" {',
            f"    interval {bfd_interval_ms} ms;",
            "    multiplier 3;",
            "  };",
            "}",
            "",
        ]
    lines += [
        "protocol bgp uplink {",
        f"  local {router_id} as {NODE_ASN};",
        f"  neighbor {ROUTER_ADDRESS} as {ROUTER_ASN};",
        f"  hold time {hold};",
        f"  keepalive time {keepalive};",
    ]
    if fast_connect:
        # BIRD waits 5 s before its first connect by default and 120 s between failed
        # attempts; the router is passive, so these decide how soon a session comes up
        lines += [
            "  connect delay time 1;",
            "  connect retry time 1;",
            "  error wait time 1, 10;",
        ]
    lines += [
        f"  graceful restart {'on' if graceful_restart else 'off'};",
        f"  bfd {bfd};",
    ]
    if password is not None:
        lines.append(f'  password "{password}";')
    lines += [
        "  ipv4 {",
        "    import none;",
        "    export filter vip_export4;",
        "  };",
        # an IPv6 channel on an IPv4 session: BIRD would take eth0's preferred IPv6 address
        # (a direct session); naming it keeps the next hop fixed whatever else eth0 holds.
        # BIRD adds eth0's link-local address, and FRR installs that one in its FIB
        "  ipv6 {",
        "    import none;",
        "    export filter vip_export6;",
        f"    next hop address {address6};",
        "  };",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _version_first(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, int]:
    return address.version, int(address)


@dataclass(frozen=True)
class BgpPath:
    """One path the router's BGP RIB holds for a prefix."""

    next_hop: str
    peer: str
    valid: bool
    best: bool
    multipath: bool
    stale: bool


@dataclass(frozen=True)
class Session:
    """The router's view of one neighbor, from ``show bgp neighbors json``."""

    state: str
    established: int
    dropped: int
    last_reset: str
    last_notification: str


def _check_pid(pid: int, marker: str) -> bool:
    """Is ``pid`` still the process we started?  Its command line names our lab directory
    (a pid from a stale file may have been reused by anything)."""
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes], timeout: float = 5) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


class _Namespace:
    """A network namespace of this lab and the processes started inside it."""

    def __init__(self, lab: BgpLab, ns: str) -> None:
        self.lab = lab
        self.ns = ns

    def run(
        self, *argv: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, *argv],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def spawn(
        self, argv: Sequence[str], *, log: Path | None = None, pipe: bool = False
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the namespace; ``ip netns exec`` execs it, so the Popen's pid
        is the program's own pid and signals reach it directly."""
        out = open(log or os.devnull, "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *argv],
            stdout=subprocess.PIPE if pipe else out,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )
        out.close()
        self.lab.processes.append(proc)
        return proc

    def sysctl(self, *settings: str) -> None:
        """Per-namespace sysctls only (``net.*`` under ``ip netns exec`` is this namespace's)."""
        self.run("sysctl", "-q", "-w", *settings)


class Node(_Namespace):
    """One node: ``eth0`` on the switch, a default route via the router."""

    def __init__(self, lab: BgpLab, name: str, index: int) -> None:
        super().__init__(lab, f"{lab.prefix}-{name}")
        self.name = name
        self.index = index
        self.address = f"{NODE_NET}.{index}"
        self.address6 = f"{NODE_NET6}{index}"
        self.port = f"{lab.prefix}p{index}"[-15:]
        self.dir = lab.root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.link_local: str | None = None

    def find_link_local(self) -> bool:
        done = ip("-n", self.ns, "-j", "-6", "addr", "show", "dev", "eth0", "scope", "link")
        for link in json.loads(done.stdout or "[]"):
            for addr in link.get("addr_info", []):
                if "local" in addr:
                    self.link_local = addr["local"]
        return self.link_local is not None

    def add_vip(self, vip: str) -> None:
        """The VIP on ``lo`` (what the agent does), so the node answers for it."""
        address = ipaddress.ip_address(vip)
        ip("-n", self.ns, "addr", "add", f"{vip}/{address.max_prefixlen}", "dev", "lo")

    def route(self, action: Literal["add", "del"], vip: str, *, table: int) -> None:
        """``ip route add|del VIP/32 dev lo table N``: the agent's gate for a VIP."""
        address = ipaddress.ip_address(vip)
        family = "-6" if address.version == 6 else "-4"
        prefix = f"{vip}/{address.max_prefixlen}"
        ip("-n", self.ns, family, "route", action, prefix, "dev", "lo", "table", str(table))

    def serve(self, port: int) -> subprocess.Popen[bytes]:
        """A TCP responder on [::]:port answering with this node's name (the VIP owner)."""
        proc = self.spawn([PYTHON, "-I", "-c", _RESPONDER, self.name, str(port)], pipe=True)
        assert proc.stdout is not None
        readable, _, _ = select.select([proc.stdout], [], [], 10)
        if not readable or proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"responder on {self.name} did not start")
        return proc

    def link(self, up: bool) -> None:
        """Cut or restore this node's cable at the switch (the whole node goes silent)."""
        ip("-n", self.lab.switch, "link", "set", self.port, "up" if up else "down")


class Bird:
    """A BIRD 2 process on a node, run in the foreground (its pid is ours to signal)."""

    def __init__(self, node: Node, name: str = "bird") -> None:
        self.node = node
        self.conf = node.dir / f"{name}.conf"
        self.socket = node.dir / f"{name}.ctl"
        self.pidfile = node.dir / f"{name}.pid"
        self.log = node.dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write(self, text: str) -> None:
        """Write the configuration and check it with ``bird -p`` (refuses a bad one)."""
        self.conf.write_text(text, encoding="utf-8")
        done = subprocess.run(
            ["bird", "-p", "-c", str(self.conf)], capture_output=True, text=True, timeout=10
        )
        if done.returncode != 0:
            raise ValueError(f"bird -p rejected {self.conf}: {done.stderr.strip()}\n{text}")

    def start(self, text: str | None = None, *, recover: bool = False) -> subprocess.Popen[bytes]:
        """Start BIRD (``-R``: graceful restart recovery, for a restart after a crash)."""
        if text is not None:
            self.write(text)
        argv = ["bird", "-f", "-c", str(self.conf), "-s", str(self.socket), "-P", str(self.pidfile)]
        if recover:
            argv.append("-R")
        self.proc = self.node.spawn(argv, log=self.log)
        wait_for(self._answers, timeout=10, interval=0.01, what=f"birdc on {self.node.name}")
        return self.proc

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"bird on {self.node.name} exited: {self.log.read_text()[-2000:]}")
        return self.socket.exists() and self.birdc("show status", check=False).returncode == 0

    def birdc(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.node.run("birdc", "-s", str(self.socket), *command, check=check, timeout=10)

    def configure(self, text: str) -> str:
        """Write, check and apply a new configuration with ``birdc configure`` (no restart)."""
        self.write(text)
        out = self.birdc("configure").stdout
        if "Reconfigured" not in out and "Reconfiguration in progress" not in out:
            raise RuntimeError(f"birdc configure on {self.node.name}: {out}")
        return out

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=5)

    def bfd_up(self) -> bool:
        """BIRD's own view: its BFD session to the router is Up."""
        out = self.birdc("show bfd sessions", check=False).stdout
        return any(
            line.split()[:1] == [ROUTER_ADDRESS] and " Up " in f" {line} "
            for line in out.splitlines()
        )


class BgpLab:
    """Switch, router (FRR), client and ``nodes`` namespaces; see the module docstring.

    ``passwords`` maps node names to a TCP MD5 password the router requires of them;
    ``bfd``, ``bfd_interval_ms``, ``keepalive`` and ``hold`` set the router's side of every
    session.  ``keep`` keeps the lab directory (logs, configurations) after a clean close;
    ``debug`` adds FRR's update, zebra and graceful-restart debugging to its logs.
    """

    def __init__(
        self,
        nodes: Sequence[str] = ("n1", "n2"),
        *,
        passwords: Mapping[str, str] | None = None,
        bfd: bool = True,
        bfd_interval_ms: int = 100,
        keepalive: int = 3,
        hold: int = 9,
        root: Path | None = None,
        keep: bool = False,
        debug: bool = False,
    ) -> None:
        self.prefix = f"vb{os.getpid() % 100000}{next(_serial) % 100}"
        self.switch = f"{self.prefix}-sw"
        self.root = root or Path(tempfile.mkdtemp(prefix="vip-agent-bgplab-"))
        # a directory the caller handed in is theirs: never removed
        self.keep = keep or root is not None
        # FRR drops to user frr: it must reach its own directory below ours
        self.root.chmod(0o711)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.namespaces: list[str] = []
        self.nodes: dict[str, Node] = {}
        self.router = _Namespace(self, f"{self.prefix}-r")
        self.client = _Namespace(self, f"{self.prefix}-c")
        self.frr_dir = self.root / "frr"
        try:
            self._build(nodes)
            self.frr_conf = frr_conf(
                [n.address for n in self.nodes.values()],
                passwords={self.nodes[k].address: v for k, v in (passwords or {}).items()},
                bfd=bfd,
                bfd_interval_ms=bfd_interval_ms,
                keepalive=keepalive,
                hold=hold,
                debug=debug,
            )
            self._start_frr()
        except BaseException:
            self.close(failed=True)
            raise

    # -- building -------------------------------------------------------------------------

    def _netns(self, name: str) -> None:
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def _build(self, nodes: Sequence[str]) -> None:
        self._netns(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")

        r = self.router.ns
        self._netns(r)
        # no DAD: an IPv6 address is usable at once instead of after a second of probing
        self.router.sysctl(
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            # spread flows over ECMP next hops by ports too (one client address)
            "net.ipv4.fib_multipath_hash_policy=1",
            "net.ipv6.fib_multipath_hash_policy=1",
        )
        port = f"{self.prefix}pr"
        ip("-n", r, "link", "add", "eth0", "type", "veth", "peer", "name", port)
        ip("-n", r, "link", "set", port, "netns", self.switch)
        ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        ip("-n", r, "addr", "add", f"{ROUTER_ADDRESS}/24", "dev", "eth0")
        ip("-n", r, "addr", "add", f"{ROUTER_ADDRESS6}/64", "dev", "eth0", "nodad")
        ip("-n", r, "link", "set", "eth0", "up")

        c = self.client.ns
        self._netns(c)
        self.client.sysctl("net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        ip("-n", r, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", c)
        ip("-n", r, "addr", "add", f"{CLIENT_ROUTER}/24", "dev", "eth1")
        ip("-n", r, "addr", "add", f"{CLIENT_ROUTER6}/64", "dev", "eth1", "nodad")
        ip("-n", r, "link", "set", "eth1", "up")
        ip("-n", c, "addr", "add", f"{CLIENT_ADDRESS}/24", "dev", "eth0")
        ip("-n", c, "addr", "add", f"{CLIENT_ADDRESS6}/64", "dev", "eth0", "nodad")
        ip("-n", c, "link", "set", "eth0", "up")
        ip("-n", c, "route", "add", "default", "via", CLIENT_ROUTER)
        ip("-n", c, "-6", "route", "add", "default", "via", CLIENT_ROUTER6)

        for index, name in enumerate(nodes, start=11):
            self._add_node(name, index)
        # the router may use a node's link-local address as the IPv6 next hop; the kernel
        # assigns it shortly after the link gets carrier
        for node in self.nodes.values():
            wait_for(node.find_link_local, timeout=5, what=f"link-local address of {node.name}")

    def _add_node(self, name: str, index: int) -> None:
        node = Node(self, name, index)
        self._netns(node.ns)
        node.sysctl("net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        ip("-n", node.ns, "link", "add", "eth0", "type", "veth", "peer", "name", node.port)
        ip("-n", node.ns, "link", "set", node.port, "netns", self.switch)
        ip("-n", self.switch, "link", "set", node.port, "master", "br0", "up")
        ip("-n", node.ns, "addr", "add", f"{node.address}/24", "dev", "eth0")
        ip("-n", node.ns, "addr", "add", f"{node.address6}/64", "dev", "eth0", "nodad")
        ip("-n", node.ns, "link", "set", "eth0", "up")
        ip("-n", node.ns, "route", "add", "default", "via", ROUTER_ADDRESS)
        ip("-n", node.ns, "-6", "route", "add", "default", "via", ROUTER_ADDRESS6)
        self.nodes[name] = node

    def _start_frr(self) -> None:
        try:
            frr = pwd.getpwnam("frr")
        except KeyError as exc:
            raise RuntimeError("user frr missing: is Debian's frr package installed?") from exc
        d = self.frr_dir
        d.mkdir()
        empty = d / "empty.conf"
        empty.write_text("")
        (d / "vtysh.conf").write_text("")
        (d / "frr.conf").write_text(self.frr_conf)
        for path in (d, *d.iterdir()):
            os.chown(path, frr.pw_uid, frr.pw_gid)
        for daemon in FRR_DAEMONS:
            argv = [
                str(FRR_BIN / daemon),
                # every path the daemon would take from /etc/frr or /var/run/frr is ours
                "-f",
                str(empty),
                "-i",
                str(d / f"{daemon}.pid"),
                "-z",
                str(d / "zserv.api"),
                "--vty_socket",
                str(d),
                "-P",
                "0",
                "--log",
                f"file:{d / daemon}.log",
            ]
            if daemon == "bfdd":
                argv += ["--bfdctl", str(d / "bfdd.sock")]
            proc = self.router.spawn(argv, log=d / f"{daemon}.out")
            wait_for(
                functools.partial(self._frr_ready, daemon, proc),
                timeout=15,
                what=f"{daemon} vty",
            )
        # the integrated config, split between the daemons by vtysh: fed to each daemon
        # whole, a daemon's parser leaves config mode at another daemon's "exit" and drops
        # everything after it (bgpd lost "router bgp" that way)
        done = self.vtysh_file(d / "frr.conf")
        if done.returncode != 0:
            raise RuntimeError(f"vtysh -f frr.conf: {done.stdout}{done.stderr}")
        # bgpd holds peers made by a configuration load (vtysh -f) in Idle until a second
        # after the load ends (BGP_POST_CONFIG_DELAY_SECONDS, "released from config-pending
        # hold"), refusing their connections; a passive peer then waits in Active
        wait_for(self._listening, timeout=15, interval=0.05, what="bgpd releases its peers")

    def _listening(self) -> bool:
        data = self.vtysh_json("show bgp neighbors json")
        return all(data.get(n.address, {}).get("bgpState") == "Active" for n in self.nodes.values())

    def _frr_ready(self, daemon: str, proc: subprocess.Popen[bytes]) -> bool:
        if proc.poll() is not None:
            out = (self.frr_dir / f"{daemon}.out").read_text(errors="replace")
            raise RuntimeError(f"{daemon} exited {proc.returncode}: {out[-2000:]}")
        return (self.frr_dir / f"{daemon}.vty").exists()

    # -- FRR ------------------------------------------------------------------------------

    def _vtysh_argv(self) -> list[str]:
        return ["vtysh", "--config_dir", str(self.frr_dir), "--vty_socket", str(self.frr_dir)]

    def vtysh_file(self, path: Path) -> subprocess.CompletedProcess[str]:
        return self.router.run(*self._vtysh_argv(), "-f", str(path), check=False)

    def vtysh(self, *commands: str) -> str:
        argv = self._vtysh_argv()
        for command in commands:
            argv += ["-c", command]
        return self.router.run(*argv, timeout=15).stdout

    def vtysh_json(self, command: str) -> Any:
        out = self.vtysh(command).strip()
        return json.loads(out) if out else {}

    def router_paths(self, prefix: str) -> list[BgpPath]:
        """Every path of the router's BGP RIB for ``prefix`` (a VIP, with or without /len)."""
        net = ipaddress.ip_network(prefix)
        family = "ipv6" if net.version == 6 else "ipv4"
        data = self.vtysh_json(f"show bgp {family} unicast {net} json")
        paths = []
        for path in data.get("paths", []):
            hops = [h for h in path.get("nexthops", []) if h.get("scope", "global") == "global"]
            hop = hops[0]["ip"] if hops else ""
            paths.append(
                BgpPath(
                    next_hop=hop,
                    peer=path.get("peer", {}).get("peerId", ""),
                    valid=bool(path.get("valid")),
                    best=bool(path.get("bestpath", {}).get("overall")),
                    multipath=bool(path.get("multipath")),
                    stale=bool(path.get("stale")),
                )
            )
        return paths

    def router_routes(self, prefix: str) -> frozenset[str]:
        """Next hops of the valid paths the router's BGP RIB has for ``prefix``."""
        return frozenset(p.next_hop for p in self.router_paths(prefix) if p.valid)

    def fib_next_hops(self, prefix: str) -> frozenset[str]:
        """Gateways of the route to ``prefix`` in the router namespace's kernel FIB."""
        net = ipaddress.ip_network(prefix)
        done = ip("-n", self.router.ns, f"-{net.version}", "-j", "route", "show", str(net))
        return _gateways(json.loads(done.stdout or "[]"), str(net))

    def node_at(self, address: str) -> str | None:
        """The node owning ``address`` (its IPv4, IPv6 global or link-local address)."""
        for node in self.nodes.values():
            if address in (node.address, node.address6, node.link_local):
                return node.name
        return None

    def fib_nodes(self, prefix: str) -> frozenset[str]:
        """Names of the nodes the router's FIB forwards ``prefix`` to."""
        return frozenset(filter(None, map(self.node_at, self.fib_next_hops(prefix))))

    def neighbor(self, node: str) -> dict[str, Any]:
        address = self.nodes[node].address
        data = self.vtysh_json(f"show bgp neighbors {address} json")
        found: dict[str, Any] = data.get(address, {})
        return found

    def session(self, node: str) -> Session:
        """State and established/dropped counters of the router's session with ``node``."""
        data = self.neighbor(node)
        return Session(
            state=str(data.get("bgpState", "")),
            established=int(data.get("connectionsEstablished", 0)),
            dropped=int(data.get("connectionsDropped", 0)),
            last_reset=str(data.get("lastResetDueTo", "")),
            last_notification=str(data.get("lastNotificationReason", "")),
        )

    def established(self, node: str) -> bool:
        return self.session(node).state == "Established"

    def bfd_up(self, node: str) -> bool:
        """The router's BFD session with ``node`` is up.

        Only the session bound to the router's address counts: bgpd registers a session
        without source address and interface at configuration time and replaces it with a
        bound one when the BGP session first establishes (bgp_peer_bfd_update_source in
        FRR 8.4); the first may still show "up" for a moment after it was replaced.
        """
        peers = self.vtysh_json("show bfd peers json")
        address = self.nodes[node].address
        return any(
            p.get("peer") == address
            and p.get("local") == ROUTER_ADDRESS
            and p.get("status") == "up"
            for p in peers or []
        )

    def wait_established(
        self,
        node: str,
        *,
        bird: Bird | None = None,
        bfd: bool = True,
        settle: float = 0.5,
        timeout: float = 30.0,
    ) -> float:
        """Seconds until the router's session with ``node`` is Established and, with ``bfd``,
        BFD is Up on both sides (the router's and ``bird``'s view), measured to when that
        first held; it must then hold for ``settle`` seconds without a new session.

        Wait for this before killing anything: a session is not proven until BFD is Up on
        both sides, and a BFD session that has not come up cannot go down (FRR acts only on
        an Up -> Down transition).
        """
        start = time.monotonic()
        held_since: float | None = None
        count = -1
        for _ in range(int(timeout / 0.05) + 1):
            session = self.session(node)
            ok = session.state == "Established"
            if ok and bfd:
                ok = self.bfd_up(node) and (bird is None or bird.bfd_up())
            now = time.monotonic()
            if not ok:
                held_since = None
            elif held_since is None or session.established != count:
                held_since = now
            elif now - held_since >= settle:
                return held_since - start
            count = session.established
            if now - start > timeout:
                break
            time.sleep(0.05)
        bird_view = bird.birdc("show bfd sessions", check=False).stdout if bird else ""
        raise TimeoutError(
            f"session with {node} not established with BFD up within {timeout}s: {session}, "
            f"router BFD {self.vtysh_json('show bfd peers json')}, BIRD BFD {bird_view!r}"
        )

    # -- the client -----------------------------------------------------------------------

    def calls(self, vip: str, port: int, *, count: int = 1, timeout: float = 1.0) -> Counter[str]:
        """``count`` TCP calls from the client to ``vip``:``port`` through the router; how
        many each node answered (``"-"`` counts failures)."""
        done = self.client.run(
            PYTHON,
            "-I",
            "-c",
            _CALLER,
            vip,
            str(port),
            str(count),
            str(timeout),
            check=False,
            timeout=count * timeout * 2 + 10,
        )
        return Counter(done.stdout.split())

    def call(self, vip: str, port: int, *, timeout: float = 1.0) -> str | None:
        """The node that answered one TCP call to ``vip``, or None."""
        answer = next(iter(self.calls(vip, port, timeout=timeout)), "-")
        return None if answer == "-" else answer

    # -- closing --------------------------------------------------------------------------

    def __enter__(self) -> BgpLab:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(failed=exc_type is not None)

    def close(self, *, failed: bool = False) -> None:
        for proc in reversed(self.processes):
            _stop(proc)
            if proc.stdout is not None:
                proc.stdout.close()
        # a daemon that outlived its Popen (started by a test with its own -P) is found by
        # its pid file, and signalled only if its command line still names this lab
        for pidfile in [*self.root.glob("*/*.pid")]:
            with contextlib.suppress(ValueError, OSError):
                pid = int(pidfile.read_text().strip())
                if _check_pid(pid, str(self.root)):
                    os.kill(pid, signal.SIGKILL)
        for ns in reversed(self.namespaces):
            ip("netns", "del", ns, check=False)
        self.namespaces.clear()
        if failed or self.keep:
            print(f"bgplab: logs kept in {self.root}", file=sys.stderr)
        else:
            shutil.rmtree(self.root, ignore_errors=True)


def _gateways(routes: list[dict[str, Any]], prefix: str) -> frozenset[str]:
    hops: set[str] = set()
    for route in routes:
        if route.get("dst") not in (prefix, prefix.split("/")[0]):
            continue
        if "gateway" in route:
            hops.add(route["gateway"])
        for hop in route.get("nexthops", []):
            if "gateway" in hop:
                hops.add(hop["gateway"])
    return frozenset(hops)


class RouteWatch:
    """The router FIB's next hops for one prefix, sampled every ``interval`` in a thread.

    Over one persistent netlink socket in the router namespace (pyroute2 ``NetNS``, made
    and used only in the watcher's thread, as labkit.netlab.VipWatch does): a dump costs
    well under a millisecond, so 10 ms sampling is cheap.  ``history`` holds every change.
    """

    def __init__(self, lab: BgpLab, prefix: str, interval: float = 0.01) -> None:
        self.net = ipaddress.ip_network(prefix)
        self.ns = lab.router.ns
        self.interval = interval
        self.samples = 0
        self.history: list[tuple[float, frozenset[str]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("route watcher did not start")
        if self._error is not None:
            raise self._error

    def _hops(self, sock: Any) -> frozenset[str]:
        family = socket.AF_INET6 if self.net.version == 6 else socket.AF_INET
        hops: set[str] = set()
        for msg in sock.get_routes(family=family, table=254):
            if msg["dst_len"] != self.net.prefixlen:
                continue
            if msg.get_attr("RTA_DST") != str(self.net.network_address):
                continue
            gateway = msg.get_attr("RTA_GATEWAY")
            if gateway:
                hops.add(gateway)
            for hop in msg.get_attr("RTA_MULTIPATH") or []:
                gateway = hop.get_attr("RTA_GATEWAY")
                if gateway:
                    hops.add(gateway)
        return frozenset(hops)

    def _run(self) -> None:
        try:
            from pyroute2 import NetNS

            sock = NetNS(self.ns)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        try:
            for _ in range(100_000_000):
                hops = self._hops(sock)
                with self._lock:
                    self.samples += 1
                    if not self.history or self.history[-1][1] != hops:
                        self.history.append((time.monotonic(), hops))
                self._ready.set()
                if self._stop.wait(self.interval):
                    return
        except BaseException as exc:
            self._error = exc
            self._ready.set()
        finally:
            with contextlib.suppress(Exception):
                sock.close()

    def current(self) -> frozenset[str]:
        with self._lock:
            return self.history[-1][1] if self.history else frozenset()

    def changes(self, since: float) -> list[tuple[float, frozenset[str]]]:
        """The next hops at monotonic time ``since`` (as of 0.0) and every change after it,
        each with its time in seconds after ``since``."""
        with self._lock:
            history = list(self.history)
        before = [hops for stamp, hops in history if stamp < since]
        out = [(0.0, before[-1])] if before else []
        return out + [(stamp - since, hops) for stamp, hops in history if stamp >= since]

    def first(self, since: float, condition: Callable[[frozenset[str]], bool]) -> float | None:
        """Seconds after ``since`` at which ``condition`` first held (None: not yet)."""
        for offset, hops in self.changes(since):
            if condition(hops):
                return offset
        return None

    def __enter__(self) -> RouteWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self._error is not None:
            raise self._error

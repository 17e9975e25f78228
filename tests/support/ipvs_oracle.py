"""Independent oracle: the ``ipvsadm -Sn`` lines a ``DesiredState`` must produce in the kernel.

This never looks at rendered keepalived.conf text: it reads the typed ``VirtualServer`` values
and writes them the way ipvsadm 1.31 (Debian 12) prints its saved table, so a template, a
renderer or a keepalived misreading of the file shows up as a difference between the two sets.
The formatting rules, each checked against a real guest run (tests/guest/test_ipvs_kernel.py) and
ipvsadm's ``print_service_entry``:

* service line ``-A <switch> <vip>:<port> -s <scheduler>``; the switch is ``-t`` (TCP),
  ``-u`` (UDP) or ``--sctp-service`` (SCTP).
* persistence adds `` -p <timeout>`` and nothing else: ipvsadm prints ``-M <netmask>`` only
  when the granularity differs from a host mask (``255.255.255.255`` for IPv4, ``128`` for
  IPv6), and keepalived sets exactly that host mask unless ``persistence_granularity`` is
  configured, which the agent never renders.
* real server line ``-a <switch> <vip>:<port> -r <address>:<port> <fwd> -w <weight>`` with
  ``<fwd>`` ``-m`` (NAT), ``-g`` (DR) or ``-i`` (TUN); a tunnel destination also gets
  `` --tun-type ipip`` (ipvsadm >= 1.30 ``print_tunnel_rule`` always names the tunnel type,
  and keepalived's default type is ipip). No ``-x``/``-y``: the agent sets no thresholds.
* IPv6 addresses are bracketed, ``[2001:db8::50]:80``, in glibc ``inet_ntop`` form (RFC 5952
  compression, lower case; see ``_ntop``).
* PROXY virtual servers are haproxy's, not IPVS's: they have no lines.

The real-server port is taken from the state as it is. keepalived rewrites a DR or TUN real
server's port to the virtual server's port ("ports don't match - resetting"), since neither
method can change the destination port; the agent must not hand it such a state, so the
oracle does not paper over it and a mismatch shows as a difference.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from agent.core.model import DesiredState, IPAddress, Method, Protocol, VirtualServer

PROTOCOL_SWITCH = {Protocol.TCP: "-t", Protocol.UDP: "-u", Protocol.SCTP: "--sctp-service"}
FORWARD_SWITCH = {Method.NAT: "-m", Method.DR: "-g", Method.TUN: "-i"}
TUNNEL_SUFFIX = " --tun-type ipip"


def _ntop(address: IPAddress) -> str:
    """``inet_ntop`` text: Python agrees with glibc except for the two embedded-IPv4 forms."""
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    packed = address.packed
    if packed[:10] == bytes(10) and packed[10:12] in (b"\xff\xff", b"\0\0"):
        v4 = ipaddress.IPv4Address(packed[12:])
        if packed[10:12] == b"\xff\xff":
            return f"::ffff:{v4}"
        # glibc writes ::a.b.c.d when the first six words are zero (not :: or ::1-style).
        if packed[12:14] != b"\0\0":
            return f"::{v4}"
    return str(address)


def endpoint(address: IPAddress, port: int) -> str:
    """``ADDR:PORT`` as ipvsadm prints it; IPv6 in brackets."""
    text = _ntop(address)
    return f"[{text}]:{port}" if address.version == 6 else f"{text}:{port}"


def service_key(vs: VirtualServer) -> str:
    """``<switch> <vip>:<port>``: what ``-A``/``-a`` lines of this virtual server start with."""
    return f"{PROTOCOL_SWITCH[vs.protocol]} {endpoint(vs.vip, vs.port)}"


def virtual_server_lines(vs: VirtualServer) -> set[str]:
    """The ``-A`` line and one ``-a`` line per real server; empty for PROXY."""
    if not vs.method.is_ipvs:
        return set()
    key = service_key(vs)
    head = f"-A {key} -s {vs.scheduler}"
    if vs.persistence_timeout:
        head += f" -p {vs.persistence_timeout}"
    lines = {head}
    forward = FORWARD_SWITCH[vs.method]
    suffix = TUNNEL_SUFFIX if vs.method is Method.TUN else ""
    for rs in vs.real_servers:
        lines.add(f"-a {key} -r {endpoint(rs.address, rs.port)} {forward} -w {rs.weight}{suffix}")
    return lines


def expected_table(state: DesiredState | Iterable[VirtualServer]) -> set[str]:
    """Every line ``ipvsadm -Sn`` must print for these virtual servers (nothing foreign)."""
    servers = state.virtual_servers if isinstance(state, DesiredState) else state
    out: set[str] = set()
    for vs in servers:
        out |= virtual_server_lines(vs)
    return out


def line_vip(line: str) -> str:
    """The virtual service address of an ``ipvsadm -Sn`` line, e.g. ``[2001:db8::50]``."""
    parts = line.split()
    if len(parts) < 3 or parts[0] not in ("-A", "-a"):
        raise ValueError(f"not an ipvsadm -S service or server line: {line!r}")
    return parts[2].rsplit(":", 1)[0]


def vip_text(address: IPAddress) -> str:
    """The form ``line_vip`` returns for ``address``."""
    return endpoint(address, 0).rsplit(":", 1)[0]


def only_vips(lines: Iterable[str], vips: Iterable[IPAddress]) -> set[str]:
    """The lines whose virtual service address is one of ``vips``."""
    wanted = {vip_text(v) for v in vips}
    return {line for line in lines if line_vip(line) in wanted}


def difference(expected: set[str], actual: Iterable[str]) -> str:
    """A readable report of how a table differs from the oracle (empty when equal)."""
    got = set(actual)
    missing = sorted(expected - got)
    unexpected = sorted(got - expected)
    if not missing and not unexpected:
        return ""
    parts = [f"missing from the kernel ({len(missing)}):", *missing]
    parts += [f"unexpected in the kernel ({len(unexpected)}):", *unexpected]
    return "\n".join(parts)

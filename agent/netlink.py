"""Interface facts and address clean-up through netlink (pyroute2).

Host facts: the addresses of this node's interfaces, their subnets and the next hops
of its routes, which no VIP may take (``agent.core.addresses``).  The VIPs keepalived
put on an interface look like any other address there, so the host-prefix addresses the
agent manages are left out: without that, the agent would forbid the VIP it holds.

Stale VIPs: when keepalived is SIGKILLed (or the node loses power mid-failover) the
VIPs it added stay on the interface; a keepalived started afterwards does not know
them, and the same VIP answers on two nodes (the duplicate-VIP defect of
keepalived-vip and kube-vip).  Before a fresh keepalived starts, the agent removes
the host-prefix addresses it manages (VIPs of the desired state and of the
configuration it last installed), and nothing else.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.core.addresses import HostFacts, IPNetwork
from agent.core.model import DesiredState, IPAddress

log = logging.getLogger("vip-agent.netlink")

# keepalived.conf: "    192.0.2.50/32 dev eth0"; bird.conf: "    route 192.0.2.50/32 ..." and
# the prefix sets of its filters, "        192.0.2.50/32," (both are files the agent wrote)
_VIP_LINE = re.compile(
    r"^\s+(?:route )?([0-9A-Fa-f:.]+)/(32|128)(?: dev \S+| unreachable;.*|,)?$", re.M
)


def vips_in_config(path: Path) -> set[IPAddress]:
    """VIPs named in a keepalived.conf or bird.conf the agent rendered (its own format)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    found: set[IPAddress] = set()
    for match in _VIP_LINE.finditer(text):
        try:
            found.add(ipaddress.ip_address(match.group(1)))
        except ValueError:
            continue
    return found


def addresses(ifname: str) -> list[tuple[IPAddress, int]]:
    """(address, prefix length) on ``ifname``; empty when the link does not exist."""
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)
        if not index:
            return []
        out: list[tuple[IPAddress, int]] = []
        for msg in ipr.get_addr(index=index[0]):
            text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if text:
                out.append((ipaddress.ip_address(text), int(msg["prefixlen"])))
        return out


def remove_stale_vips(
    ifname: str, managed: Iterable[IPAddress], *, keep: Iterable[IPAddress] = ()
) -> list[IPAddress]:
    """Delete host-prefix (/32, /128) addresses in ``managed`` from ``ifname``."""
    wanted = set(managed) - set(keep)
    removed: list[IPAddress] = []
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)
        if not index:
            return removed
        for address, prefixlen in addresses(ifname):
            if address in wanted and prefixlen == address.max_prefixlen:
                ipr.addr("del", index=index[0], address=str(address), prefixlen=prefixlen)
                removed.append(address)
    return removed


def interface_for(address: IPAddress) -> str | None:
    """The interface that carries ``address`` (the node's own address), if any."""
    with IPRoute() as ipr:
        for msg in ipr.get_addr():
            text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if text and ipaddress.ip_address(text) == address:
                links = ipr.get_links(msg["index"])
                if links:
                    name = links[0].get_attr("IFLA_IFNAME")
                    return str(name) if name else None
    return None


def host_facts(managed: Iterable[IPAddress]) -> HostFacts:
    """This node's addresses (all interfaces), their subnets and its routes' next hops;
    host-prefix addresses in ``managed`` (VIPs the agent put there) left out."""
    skip = set(managed)
    found: set[IPAddress] = set()
    subnets: set[IPNetwork] = set()
    gateways: set[IPAddress] = set()
    with IPRoute() as ipr:
        for msg in ipr.get_addr():
            text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if not text:
                continue
            address, prefixlen = ipaddress.ip_address(text), int(msg["prefixlen"])
            if prefixlen == address.max_prefixlen and address in skip:
                continue
            found.add(address)
            if prefixlen < address.max_prefixlen:
                subnets.add(ipaddress.ip_network(f"{address}/{prefixlen}", strict=False))
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_routes(family=family):
                gateways.update(_next_hops(route))
    return HostFacts(
        addresses=frozenset(found), subnets=frozenset(subnets), gateways=frozenset(gateways)
    )


def _next_hops(route: Any) -> set[IPAddress]:
    hops = [route.get_attr("RTA_GATEWAY")]
    for path in route.get_attr("RTA_MULTIPATH") or []:  # ECMP routes carry one gateway per path
        hops.append(path.get_attr("RTA_GATEWAY"))
    return {ipaddress.ip_address(h) for h in hops if h}


class HostFactsCache:
    """Host facts read at most every ``ttl`` seconds: a reconcile asks on every pass, and a
    node's own addresses and routes change seldom (a dump of a large routing table is
    not free)."""

    def __init__(
        self,
        *,
        managed: Callable[[], Iterable[IPAddress]],
        read: Callable[[Iterable[IPAddress]], HostFacts] = host_facts,
        ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.managed, self.read, self.ttl, self.clock = managed, read, ttl, clock
        self._facts: HostFacts | None = None
        self._at = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> HostFacts:
        with self._lock:
            if self._facts is None or self.clock() - self._at >= self.ttl:
                self._at = self.clock()
                try:
                    self._facts = self.read(self.managed())
                except Exception as err:  # pyroute2's NetlinkError is not an OSError
                    # the last facts read stay in force: forgetting them would let a VIP
                    # take the node's own address while netlink misbehaves
                    log.warning("cannot read this node's addresses and routes: %s", err)
                    if self._facts is None:
                        self._facts = HostFacts()
            return self._facts


class ManagedVips:
    """The VIPs this agent manages: those of its last desired state and those of the
    files it last installed (keepalived.conf, bird.conf: a VIP still held from before a
    restart).  Host facts leave them out; stale-VIP clean-up removes only them."""

    def __init__(self, *configs: Path) -> None:
        self.configs = configs
        self._desired: frozenset[IPAddress] = frozenset()

    def rendered(self, state: DesiredState) -> None:
        """An observer of the reconcile loop: remember the VIPs of each desired state."""
        self._desired = desired_vips(state)

    def reconciled(self, seconds: float, ok: bool) -> None:
        return None

    def applied(self, changed: frozenset[str], errors: Mapping[str, str]) -> None:
        return None

    def reloaded(self, daemon: str, outcome: object) -> None:
        return None

    def __call__(self) -> set[IPAddress]:
        found = set(self._desired)
        for config in self.configs:
            found |= vips_in_config(config)
        return found


def desired_vips(state: DesiredState) -> frozenset[IPAddress]:
    """Every VIP a desired state puts on this node: VRRP's, or BGP's announcements."""
    vrrp = (v for i in state.instances for v in (*i.vips, *i.excluded_vips))
    bgp = (a.vip for a in state.bgp.announcements) if state.bgp is not None else ()
    return frozenset((*vrrp, *bgp))


class HostRoutes:
    """Host-prefix addresses the agent keeps on an interface itself (mode bgp: the VIPs
    BIRD announces live on ``lo``, so the node accepts their traffic), and the routes of
    the health gate.  Only addresses the agent manages are ever removed."""

    def __init__(self, *, ifname: str, managed: Callable[[], Iterable[IPAddress]]) -> None:
        self.ifname = ifname
        self.managed = managed

    def sync(self, wanted: Iterable[IPAddress]) -> tuple[list[IPAddress], list[IPAddress]]:
        """Add what is wanted and missing, remove managed ones no longer wanted."""
        want = set(wanted)
        present = {a for a, prefix in addresses(self.ifname) if prefix == a.max_prefixlen}
        added, removed = sorted(want - present, key=_order), []
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=self.ifname)
            if not index:
                raise OSError(f"no interface {self.ifname}")
            for address in added:
                ipr.addr(
                    "add", index=index[0], address=str(address), prefixlen=address.max_prefixlen
                )
            for address in sorted((set(self.managed()) & present) - want, key=_order):
                ipr.addr(
                    "del", index=index[0], address=str(address), prefixlen=address.max_prefixlen
                )
                removed.append(address)
        return added, removed


def _order(address: IPAddress) -> tuple[int, int]:
    return address.version, int(address)


def set_gate(vip: IPAddress, *, table: int, ifname: str, open_: bool) -> None:
    """Put ``vip``'s host route in (or take it out of) the gate table BIRD learns from."""
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)
        if not index:
            raise OSError(f"no interface {ifname}")
        dst = f"{vip}/{vip.max_prefixlen}"
        if open_:
            ipr.route("replace", dst=dst, oif=index[0], table=table)
        else:
            with contextlib.suppress(NetlinkError):  # already gone
                ipr.route("del", dst=dst, oif=index[0], table=table)


def gate_routes(table: int) -> set[IPAddress]:
    """The host routes in the gate table now (which gated VIPs BIRD may announce)."""
    found: set[IPAddress] = set()
    with IPRoute() as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_routes(family=family, table=table):
                dst = route.get_attr("RTA_DST")
                if dst and route["dst_len"] in (32, 128):
                    found.add(ipaddress.ip_address(dst))
    return found

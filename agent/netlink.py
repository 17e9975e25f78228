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

from agent.core.addresses import HostFacts, IPNetwork
from agent.core.model import DesiredState, IPAddress

log = logging.getLogger("vip-agent.netlink")

_VIP_LINE = re.compile(r"^\s+([0-9A-Fa-f:.]+)/(32|128) dev \S+$", re.M)


def vips_in_config(path: Path) -> set[IPAddress]:
    """VIPs named in a keepalived.conf the agent rendered (its own, known format)."""
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
    keepalived.conf it last installed (a VIP keepalived still holds from before a
    restart).  Host facts leave them out; stale-VIP clean-up removes only them."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self._desired: frozenset[IPAddress] = frozenset()

    def rendered(self, state: DesiredState) -> None:
        """An observer of the reconcile loop: remember the VIPs of each desired state."""
        self._desired = frozenset(v for i in state.instances for v in (*i.vips, *i.excluded_vips))

    def reconciled(self, seconds: float, ok: bool) -> None:
        return None

    def applied(self, changed: frozenset[str], errors: Mapping[str, str]) -> None:
        return None

    def reloaded(self, daemon: str, outcome: object) -> None:
        return None

    def __call__(self) -> set[IPAddress]:
        return set(self._desired) | vips_in_config(self.config)

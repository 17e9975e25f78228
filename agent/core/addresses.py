"""Which addresses no one may claim, and which may never be a real server.

A VIP is answered for by every node that holds it (ARP, neighbour discovery, BGP): a
VIP equal to a node's address, the subnet's gateway or a broadcast address takes that
address off the network for everyone.  So translate refuses, from every source (the
vip-configmap, Services, the control-plane VIP of settings):

* forms that are never a unicast host address: unspecified, loopback, multicast, the
  IPv4 limited broadcast, ``0.0.0.0/8``, ``240.0.0.0/4``, link-local, IPv4-mapped and
  IPv4-compatible IPv6, site-local, and the other ranges IANA reserves in IPv6
  (``ipaddress``'s ``is_reserved``: ``::/8``, ``100::/8`` ...);
* any Node's address, of every address type the Node reports;
* on a live agent, this node's own network (:class:`HostFacts`, read with netlink by
  the shell): its interface addresses, the network and broadcast addresses of their
  subnets, and the next hops of its routes.

Endpoints that would become IPVS real servers or haproxy servers are refused by the same
reserved-form rules (loopback, unspecified, link-local, multicast, broadcast ...: traffic
to them never leaves the node, or goes everywhere), and when they are themselves a VIP.

Documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32)
and private ranges are ordinary addresses here: labs and real clusters use them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.core.model import IPAddress

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


@dataclass(frozen=True)
class HostFacts:
    """This node's own network, as the shell read it (empty in a dry run)."""

    addresses: frozenset[IPAddress] = frozenset()
    """Addresses on this node's interfaces, VIPs the agent put there left out."""
    subnets: frozenset[IPNetwork] = frozenset()
    """The subnets of those addresses (their network and broadcast addresses)."""
    gateways: frozenset[IPAddress] = frozenset()
    """Next hops of this node's routes."""

    def reason(self, address: IPAddress) -> str | None:
        """Why ``address`` belongs to this node's own network, or None."""
        if address in self.addresses:
            return "is an address of this node's interfaces"
        if address in self.gateways:
            return "is a next hop (gateway) of this node's routes"
        for subnet in self.subnets:
            if subnet.version != address.version or subnet.num_addresses <= 2:
                continue
            if address == subnet.network_address:
                return f"is the network address of {subnet}, a subnet of this node"
            if address.version == 4 and address == subnet.broadcast_address:
                return f"is the broadcast address of {subnet}, a subnet of this node"
        return None


@dataclass(frozen=True)
class Forbidden:
    """Everything that decides whether an address may be a VIP."""

    node_addresses: dict[IPAddress, str] = field(default_factory=dict)
    """Every Node's addresses, each with the Node's name."""
    host: HostFacts = HostFacts()

    def reason(self, address: IPAddress) -> str | None:
        """Why ``address`` can never be a VIP, or None when it may be one."""
        reserved = reserved_reason(address)
        if reserved is not None:
            return reserved
        node = self.node_addresses.get(address)
        if node is not None:
            return f"is an address of Node {node}"
        return self.host.reason(address)


# Fast paths: the checks below walk ipaddress's network lists, and a large cluster asks for
# tens of thousands of endpoints.  Every reserved IPv4 form has one of these first octets;
# IPv6's global unicast (2000::/3) and unique-local (fc00::/7) ranges hold none.
_V4_SPECIAL_FIRST_OCTETS = frozenset({0, 127, 169, *range(224, 256)})


def _ordinary(address: IPAddress) -> bool:
    top = int(address) >> (24 if address.version == 4 else 112)
    if address.version == 4:
        return top not in _V4_SPECIAL_FIRST_OCTETS
    return 0x2000 <= top <= 0x3FFF or 0xFC00 <= top <= 0xFDFF


def reserved_reason(address: IPAddress) -> str | None:
    """Why ``address`` is never a unicast host address, or None."""
    if _ordinary(address):
        return None
    if address.is_unspecified:
        return "is the unspecified address"
    if address.is_loopback:
        return "is a loopback address"
    if address.is_multicast:
        return "is a multicast address"
    if address.is_link_local:
        return "is a link-local address"
    if isinstance(address, ipaddress.IPv4Address):
        if address == _LIMITED_BROADCAST:
            return "is the broadcast address"
        if address in _THIS_NETWORK:
            return "is in 0.0.0.0/8 ('this network')"
        if address.is_reserved:
            return "is in 240.0.0.0/4 (reserved)"
        return None
    if address.ipv4_mapped is not None:
        return "is an IPv4-mapped IPv6 address; use the IPv4 address"
    if address.is_site_local:
        return "is a site-local IPv6 address (deprecated)"
    if address.is_reserved:
        return "is in a range IANA reserves"
    return None


def endpoint_reason(address: IPAddress, vips: frozenset[IPAddress]) -> str | None:
    """Why an endpoint may not become a real server or haproxy server, or None."""
    if vips and address in vips:  # (an address hashes slowly; memoized plans pass none)
        return "is a VIP"
    return reserved_reason(address)


def node_addresses(entries: Iterable[tuple[str, IPAddress]]) -> dict[IPAddress, str]:
    """Address -> Node name (the first Node, by name, that reports it)."""
    out: dict[IPAddress, str] = {}
    for name, address in sorted(entries, key=lambda e: e[0]):
        out.setdefault(address, name)
    return out

"""Address pools, in the format of kube-vip-cloud-provider's ConfigMap.

The ConfigMap (``kube-system/kubevip`` unless the ``pool_configmap`` setting names
another) holds keys ``cidr-global``, ``range-global``, ``cidr-<namespace>`` and
``range-<namespace>``; each value is a comma-separated list of CIDRs
(``192.0.2.64/28``, ``2001:db8:1::/120``) or ``first-last`` ranges
(``192.0.2.10-192.0.2.20``), IPv4 and IPv6 alike.  Keys of any other form are left
alone (kube-vip-cloud-provider's ConfigMap may carry settings of its own).

The pools serving a namespace are its own keys when it has any, else the global ones:
kube-vip-cloud-provider looks for the namespace's key first and falls back to the
global one the same way.  A CIDR's network address (and, for IPv4, its broadcast
address) is never handed out, unless the CIDR is a /31, /32, /127 or /128.

MetalLB's equivalent is one ``IPAddressPool`` per key, with ``serviceAllocation.
namespaces`` naming the namespace (the README shows both side by side).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from agent.core import grammar
from agent.core.model import IPAddress

KINDS = ("cidr", "range")
GLOBAL = "global"


class PoolError(ValueError):
    """A pool entry that is not a CIDR or a first-last range."""


@dataclass(frozen=True)
class AddressRange:
    """Consecutive addresses ``first``..``last`` of one family, as one entry wrote them."""

    first: IPAddress
    last: IPAddress
    text: str

    @property
    def version(self) -> int:
        return self.first.version

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return False
        return address.version == self.version and int(self.first) <= int(address) <= int(self.last)

    def lowest_free(self, taken: Iterable[IPAddress]) -> IPAddress | None:
        """The lowest address of the range not in ``taken`` (walks ``taken``, not the range)."""
        candidate = int(self.first)
        for used in sorted(int(a) for a in taken if a in self):
            if used > candidate:
                break
            if used == candidate:
                candidate += 1
        if candidate > int(self.last):
            return None
        return (
            ipaddress.ip_address(candidate)
            if self.version == 4
            else ipaddress.IPv6Address(candidate)
        )


@dataclass(frozen=True)
class Pools:
    """The pools of one ConfigMap: namespace (or ``global``) -> its ranges."""

    ref: str
    """``namespace/name`` of the ConfigMap, for messages."""
    ranges: Mapping[str, tuple[AddressRange, ...]]
    """Every namespace (or ``global``) that has a key, even one whose entries are all
    broken: such a namespace has pools of its own (none usable), never the global ones."""

    def serving(self, namespace: str) -> tuple[AddressRange, ...]:
        """The ranges a Service in ``namespace`` may use: its own, else the global ones."""
        if namespace in self.ranges:
            return self.ranges[namespace]
        return self.ranges.get(GLOBAL, ())

    def serves(self, namespace: str, address: IPAddress) -> bool:
        return any(address in r for r in self.serving(namespace))

    def describe(self, namespace: str, version: int | None = None) -> str:
        """The pools serving ``namespace`` as text (for rejections and Events)."""
        ranges = [r.text for r in self.serving(namespace) if version in (None, r.version)]
        return ", ".join(ranges) if ranges else "none"


def parse_entry(text: str) -> AddressRange:
    """One CIDR or ``first-last`` range."""
    text = text.strip()
    if "/" in text:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError as err:
            raise PoolError(f"{text!r} is not a CIDR ({err})") from None
        first, last = network.network_address, network.broadcast_address
        if network.num_addresses > 2:
            # the network address (the IPv6 subnet-router anycast) and the IPv4
            # broadcast address are not host addresses
            first = first + 1
            if network.version == 4:
                last = last - 1
        return AddressRange(first=first, last=last, text=str(network))
    low, _, high = text.partition("-")
    try:
        first, last = grammar.parse_ip(low.strip()), grammar.parse_ip(high.strip())
    except ValueError:
        raise PoolError(f"{text!r} is neither a CIDR nor a first-last range") from None
    if first.version != last.version:
        raise PoolError(f"{text!r} mixes IPv4 and IPv6")
    if int(first) > int(last):
        raise PoolError(f"{text!r}: the first address is above the last")
    return AddressRange(first=first, last=last, text=f"{first}-{last}")


def pool_key(key: str) -> str | None:
    """The namespace (or ``global``) a ConfigMap key configures, or None for other keys."""
    kind, dash, namespace = key.partition("-")
    if not dash or kind not in KINDS:
        return None
    if namespace == GLOBAL or grammar.DNS_LABEL.match(namespace):
        return namespace
    return None


def parse_pools(ref: str, data: Mapping[str, object]) -> tuple[Pools, list[tuple[str, str]]]:
    """The pools of a ConfigMap's data, and (key, why) for each entry that was skipped."""
    ranges: dict[str, list[AddressRange]] = {}
    problems: list[tuple[str, str]] = []
    for key in sorted(k for k in data if isinstance(k, str)):
        namespace = pool_key(key)
        if namespace is None:
            continue
        value = data[key]
        ranges.setdefault(namespace, [])
        if not isinstance(value, str):
            problems.append((key, "value is not a string"))
            continue
        for entry in _entries(value):
            try:
                ranges[namespace].append(parse_entry(entry))
            except PoolError as err:
                problems.append((key, str(err)))
    ordered = {
        ns: tuple(sorted(found, key=lambda r: (r.version, int(r.first))))
        for ns, found in ranges.items()
    }
    return Pools(ref=ref, ranges=ordered), problems


def _entries(value: str) -> Iterator[str]:
    return (part.strip() for part in value.split(",") if part.strip())

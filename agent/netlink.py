"""Interface facts and address clean-up through netlink (pyroute2).

Stale VIPs: when keepalived is SIGKILLed (or the node loses power mid-failover) the
VIPs it added stay on the interface; a keepalived started afterwards does not know
them, and the same VIP answers on two nodes (the duplicate-VIP defect of
keepalived-vip and kube-vip).  Before a fresh keepalived starts, the agent removes
the host-prefix addresses it manages (VIPs of the desired state and of the
configuration it last installed), and nothing else.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from pathlib import Path

from pyroute2 import IPRoute

from agent.core.model import IPAddress

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
    ifname: str, managed: Iterable[IPAddress], keep: Iterable[IPAddress] = ()
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

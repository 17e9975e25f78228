"""The Kubernetes and network grammars every input is checked against.

Anything that reaches a rendered file is first matched here or parsed by
``ipaddress``: none of these patterns admits white space, quotes, braces,
'#', '!' or a newline, so a value that passes cannot start a directive, a
block or a comment in keepalived.conf or haproxy.cfg.
"""

from __future__ import annotations

import ipaddress
import re
import socket

from agent.core.model import IPAddress

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
"""RFC 1123 label: namespaces, Service names."""

DNS_SUBDOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
"""RFC 1123 subdomain: Node and ConfigMap names."""

IANA_SVC_NAME = re.compile(r"^(?=.{1,15}$)(?=.*[a-z])[a-z0-9]([a-z0-9]|-(?=[a-z0-9]))*$")
"""Service port names and named targetPorts."""

LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
"""Linux interface names, minus the characters keepalived's parser would split on."""


def parse_ip(text: object) -> IPAddress:
    """An IPv4 or IPv6 address, strictly: no prefix, no zone, no surrounding blanks.

    inet_pton does the parsing (several times faster than ipaddress on the
    tens of thousands of endpoint addresses of a large cluster); like
    ipaddress it rejects leading zeros, which some parsers read as octal.
    """
    if isinstance(text, str) and text.isascii() and "%" not in text:
        try:
            if ":" in text:
                return ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, text))
            return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, text))
        except (OSError, ValueError):
            pass
    raise ValueError(f"{text!r} is not an IP address")


def parse_port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{value!r} is not a port (1-65535)")
    return value


def ip_text(address: IPAddress) -> str:
    """``str(address)``, ten times faster for IPv6 (a 5,000-Service file writes tens of
    thousands of addresses).  inet_ntop compresses as ipaddress does (RFC 5952: the
    longest run of zero groups, the first of equal runs, never a lone one), but writes
    the IPv4-compatible and IPv4-mapped forms (::/96, ::ffff:0:0/96) as a dotted quad
    where ipaddress writes hex: those go through ipaddress."""
    if address.version == 4:
        return str(address)
    number = int(address)
    if number >> 32 in (0, 0xFFFF):
        return str(address)
    return socket.inet_ntop(socket.AF_INET6, number.to_bytes(16, "big"))


def ip_token(address: IPAddress) -> str:
    """An address as a name fragment: 192_0_2_50, 2001_db8__50."""
    return ip_text(address).replace(".", "_").replace(":", "_")

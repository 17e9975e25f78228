"""The Kubernetes and network grammars every input is checked against.

Anything that reaches a rendered file is first matched here or parsed by
``ipaddress``: none of these patterns admits white space, quotes, braces,
'#', '!' or a newline, so a value that passes cannot start a directive, a
block or a comment in keepalived.conf or haproxy.cfg.
"""

from __future__ import annotations

import ipaddress
import re

from agent.model import IPAddress

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
    """An IPv4 or IPv6 address, strictly: no prefix, no zone, no surrounding blanks."""
    if not isinstance(text, str) or text != text.strip() or "%" in text or "/" in text:
        raise ValueError(f"{text!r} is not an IP address")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def parse_port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{value!r} is not a port (1-65535)")
    return value


def ip_token(address: IPAddress) -> str:
    """An address as a name fragment: 192_0_2_50, 2001_db8__50."""
    return str(address).replace(".", "_").replace(":", "_")

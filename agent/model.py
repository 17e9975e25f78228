"""Desired state of one node: typed, validated, ready to render.

Everything here is a frozen dataclass of already-parsed values (``ipaddress``
objects, ints in range, names that matched the Kubernetes grammar).  The
renderer only formats these values; it never sees a raw string from the
cluster, which is what keeps ConfigMap keys, Service names and annotations
from adding directives to keepalived.conf or haproxy.cfg.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Method(enum.Enum):
    """How a VIP reaches its endpoints (the suffix of a vip-configmap value)."""

    NAT = "NAT"
    DR = "DR"
    TUN = "TUN"
    PROXY = "PROXY"

    @property
    def is_ipvs(self) -> bool:
        return self is not Method.PROXY


class Protocol(enum.Enum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"


class HealthCheck(enum.Enum):
    """Real-server check keepalived runs; chosen per protocol (never TCP on UDP)."""

    NONE = "none"
    TCP = "tcp"


@dataclass(frozen=True)
class RealServer:
    address: IPAddress
    port: int
    weight: int = 1


@dataclass(frozen=True)
class VirtualServer:
    """One IPVS virtual service: VIP x port x protocol."""

    vip: IPAddress
    port: int
    protocol: Protocol
    method: Method
    scheduler: str
    persistence_timeout: int | None
    health_check: HealthCheck
    delay_loop: int
    real_servers: tuple[RealServer, ...]
    service: str
    """``namespace/name:port-name`` of the Service, for the comment in the file."""

    @property
    def sort_key(self) -> tuple[int, int, str, int]:
        return (self.vip.version, int(self.vip), self.protocol.value, self.port)


@dataclass(frozen=True)
class ProxyServer:
    name: str
    address: IPAddress
    port: int


@dataclass(frozen=True)
class ProxyListener:
    """One haproxy ``listen`` section: a PROXY-method VIP port with send-proxy backends."""

    name: str
    vip: IPAddress
    port: int
    servers: tuple[ProxyServer, ...]
    service: str


@dataclass(frozen=True)
class ApiserverProxy:
    """The kubeadm-style control-plane frontend: VIP:port -> apiservers."""

    vip: IPAddress
    port: int
    servers: tuple[ProxyServer, ...]
    verify: bool
    ca_file: str | None
    check_inter_ms: int
    check_fastinter_ms: int
    check_downinter_ms: int
    check_fall: int
    check_rise: int


@dataclass(frozen=True)
class TrackFile:
    """A keepalived ``vrrp_track_file`` the health prober writes (0 healthy, 1 failing)."""

    name: str
    path: str
    weight: int
    """Negative weight lowers priority on failure; 0 puts the instance in FAULT."""


@dataclass(frozen=True)
class VrrpInstance:
    name: str
    family: int
    interface: str
    virtual_router_id: int
    priority: int
    advert_int: float
    version: int
    vips: tuple[IPAddress, ...]
    """Advertised in VRRP packets: one address, the lowest, so the advert rarely changes."""
    excluded_vips: tuple[IPAddress, ...]
    """Held by the instance but not advertised (virtual_ipaddress_excluded)."""
    unicast_src: IPAddress | None
    unicast_peers: tuple[IPAddress, ...]
    track_interfaces: tuple[str, ...]
    track_file: str | None
    auth_pass: str | None
    garp_master_delay: int
    garp_master_refresh: int
    """Seconds between re-announcements while MASTER (0: none)."""
    owners: tuple[str, ...] = ()
    """Where the VIPs came from, for the comment in the file."""


@dataclass(frozen=True)
class Rejection:
    """An input that was skipped: one line naming the object, the key and why."""

    kind: str
    obj: str
    key: str
    reason: str

    def __str__(self) -> str:
        key = f" key {self.key!r}" if self.key else ""
        return f"{self.kind} {_printable(self.obj)}{key}: {self.reason}"


def _printable(text: str) -> str:
    """Names straight from the cluster, quoted when they could break a log line."""
    if text and all(c.isalnum() or c in "-./_:" for c in text) and text.isascii():
        return text
    return repr(text)


@dataclass(frozen=True)
class DesiredState:
    router_id: str
    instances: tuple[VrrpInstance, ...]
    virtual_servers: tuple[VirtualServer, ...]
    listeners: tuple[ProxyListener, ...]
    apiserver: ApiserverProxy | None
    track_files: tuple[TrackFile, ...]
    haproxy_stats_socket: str
    haproxy_hard_stop_after_s: int
    notify_fifo: str | None
    rejections: tuple[Rejection, ...] = field(default=())

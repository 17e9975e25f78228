"""Desired state of one node: typed, validated, ready to render.

Everything here is an immutable record of already-parsed values (``ipaddress``
objects, ints in range, names that matched the Kubernetes grammar): a frozen dataclass,
or a NamedTuple for the records a translation makes one of per Service, VIP or endpoint
(virtual and real servers, listeners and their servers, VRRP instances).  A NamedTuple
costs a third of a frozen dataclass to make, and its class a tenth to define; at 5,000
Services the difference was a twentieth of a dry run.  The
renderer only formats these values; it never sees a raw string from the
cluster, which is what keeps ConfigMap keys, Service names and annotations
from adding directives to keepalived.conf or haproxy.cfg.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import NamedTuple

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


class RealServer(NamedTuple):
    address: IPAddress
    port: int
    weight: int = 1


class VirtualServer(NamedTuple):
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


class ProxyServer(NamedTuple):
    name: str
    address: IPAddress
    port: int


class ProxyListener(NamedTuple):
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
class BgpPeer:
    """One BGP neighbour (a router), as settings give it; validated when parsed."""

    address: IPAddress
    asn: int
    password: str | None = field(default=None, repr=False)
    """TCP MD5 password; never logged, never shown (``str()`` and ``repr()`` leave it out)."""
    multihop: int | None = None
    """TTL for a neighbour more than one hop away; None: directly connected."""
    port: int = 179
    bfd: bool = True
    source: IPAddress | None = None
    """The local address the session is made from; None: BIRD chooses."""

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        parts = [host, str(self.asn), "<redacted>" if self.password else ""]
        if self.multihop is not None:
            parts.append(str(self.multihop))
        return ":".join(parts).rstrip(":")


@dataclass(frozen=True)
class Community:
    """A BGP community: standard ``ASN:VALUE`` or large ``ASN:DATA1:DATA2``."""

    parts: tuple[int, ...]

    @classmethod
    def parse(cls, raw: object) -> Community:
        """``ASN:VALUE`` (16 bits each) or large ``ASN:DATA1:DATA2`` (32 bits each)."""
        text = raw.strip() if isinstance(raw, str) else ""
        parts = text.split(":")
        if len(parts) in (2, 3) and all(p.isdigit() for p in parts):
            values = tuple(int(p) for p in parts)
            limit = 65535 if len(values) == 2 else 4294967295
            if all(v <= limit for v in values):
                return cls(values)
        raise ValueError(f"{raw!r} is not a community (ASN:VALUE or ASN:DATA1:DATA2)")

    @property
    def large(self) -> bool:
        return len(self.parts) == 3

    def __str__(self) -> str:
        return ":".join(map(str, self.parts))


@dataclass(frozen=True)
class Announcement:
    """A VIP this node announces over BGP, as a host route."""

    vip: IPAddress
    gated: bool
    """Announced only while the health gate holds it (the control-plane VIP: the prober
    puts its route in the gate table while the local apiserver is healthy)."""
    communities: tuple[Community, ...] = ()
    owner: str = ""
    """Where the VIP came from, for the comment in the file."""


@dataclass(frozen=True)
class BgpSpeaker:
    """Everything bird.conf says: who this node is, its peers, what it announces."""

    router_id: ipaddress.IPv4Address
    local_as: int
    peers: tuple[BgpPeer, ...]
    announcements: tuple[Announcement, ...]
    hold_time: int
    keepalive_time: int
    local_pref: int | None
    bfd_interval_ms: int
    bfd_multiplier: int
    graceful_restart_time: int
    gate_table: int
    """The kernel routing table the health prober toggles gated VIPs' routes in."""
    vip_interface: str
    """Where the VIP addresses live so the node accepts the traffic (``lo``)."""
    next_hop4: ipaddress.IPv4Address | None = None
    """This node's IPv4 address: the next hop of IPv4 VIPs sent over an IPv6 session."""
    next_hop6: ipaddress.IPv6Address | None = None
    """This node's IPv6 address: the next hop of IPv6 VIPs sent over an IPv4 session."""


@dataclass(frozen=True)
class TrackFile:
    """A keepalived ``vrrp_track_file`` the health prober writes (0 healthy, 1 failing)."""

    name: str
    path: str
    weight: int
    """Negative weight lowers priority on failure; 0 puts the instance in FAULT."""


class VrrpInstance(NamedTuple):
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


class Reason(enum.Enum):
    """Why an input was rejected: a fixed code, chosen where the rejection is made.

    The value is what metrics label and the status file show; text from the cluster is
    only ever in :attr:`Rejection.reason`, never in a code.
    """

    SERVICE_NOT_FOUND = "service_not_found"
    NODE_NOT_IN_CLUSTER = "node_not_in_cluster"
    CONTROL_PLANE_VIP = "control_plane_vip"
    DUPLICATE = "duplicate"
    EXTERNAL_NAME = "external_name"
    PROXY_NOT_TCP = "proxy_not_tcp"
    PORT_MISMATCH = "port_mismatch"
    BAD_METHOD = "bad_method"
    BAD_SCHEDULER = "bad_scheduler"
    BAD_TIMEOUT = "bad_timeout"
    BAD_PROTOCOL = "bad_protocol"
    ADDRESS_FAMILY = "address_family"
    NO_BACKEND_ADDRESS = "no_backend_address"
    BAD_ADDRESS = "bad_address"
    BAD_PORT = "bad_port"
    BAD_NAME = "bad_name"
    BAD_ENTRY = "bad_entry"
    FORBIDDEN_ADDRESS = "forbidden_address"
    """Reserved forms, a Node's address, this node's own network: never a VIP."""
    BAD_ENDPOINT = "bad_endpoint"
    """An endpoint that may not be a real server (loopback, ..., or itself a VIP)."""
    VIP_OWNED = "vip_owned"
    """Another Service (or the vip-configmap) owns the VIP and does not share it."""
    NOT_IN_POOL = "not_in_pool"
    """A pool ConfigMap exists and the address is in no pool of the Service's namespace."""
    NO_ROUTER_ID = "no_router_id"
    """BGP mode without an IPv4 address for the router id: nothing is announced."""
    BAD_COMMUNITY = "bad_community"
    """A Service's BGP communities annotation that does not parse (the rest applies)."""
    BAD_POOL = "bad_pool"
    """A pool ConfigMap entry that is neither a CIDR nor a first-last range."""
    POOL_EXHAUSTED = "pool_exhausted"
    """No free address to allocate in the pools of the Service's namespace."""
    FD_BUDGET = "fd_budget"
    """A PROXY listener haproxy has no file descriptors left for (the VIP stays)."""


@dataclass(frozen=True)
class Rejection:
    """An input that was skipped: one line naming the object, the key and why."""

    kind: str
    obj: str
    key: str
    reason: str
    code: Reason

    def __str__(self) -> str:
        key = f" key {self.key!r}" if self.key else ""
        return f"{self.kind} {_printable(self.obj)}{key}: {self.reason}"


def _printable(text: str) -> str:
    """Names straight from the cluster, quoted when they could break a log line."""
    if text and all(c.isalnum() or c in "-./_:" for c in text) and text.isascii():
        return text
    return repr(text)


@dataclass(frozen=True)
class ServiceVips:
    """The VIPs a LoadBalancer Service asks for: its valid addresses, in its order."""

    service: tuple[str, str]
    """(namespace, name)."""
    requested: tuple[IPAddress, ...]
    accepted: tuple[IPAddress, ...] = ()
    """Those it owns or shares (the rest were refused: forbidden, outside its pools,
    another Service's); only these may appear in its ingress."""


@dataclass(frozen=True)
class Allocation:
    """Addresses to write onto a LoadBalancer Service that asks for none."""

    service: tuple[str, str]
    addresses: tuple[IPAddress, ...]
    """One per family, in the order of the Service's ipFamilies."""
    resource_version: str | None
    """Of the Service as translate saw it: the write is conditional on it."""


@dataclass(frozen=True)
class NodeSet:
    """The Nodes translation saw, for write-back: who may hold service VIPs."""

    known: bool
    """Node objects were given (False: manifests without Nodes, static mode)."""
    all: tuple[str, ...]
    """Every valid Node name, sorted."""
    eligible: tuple[str, ...]
    """Nodes that may hold service VIPs (``node_selector``), sorted."""


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
    service_vips: tuple[ServiceVips, ...] = ()
    """What each LoadBalancer Service asks for, sorted by Service (write-back's input)."""
    nodes: NodeSet = NodeSet(known=False, all=(), eligible=())
    allocations: tuple[Allocation, ...] = ()
    """Addresses the IPAM Lease holder should write onto Services (empty without pools)."""
    bgp: BgpSpeaker | None = None
    """In BGP mode: bird.conf's content (and no VRRP instances)."""
    listener_checks: int = 0
    """The servers of ``listeners``, each with a health check (haproxy_fds counts them)."""
    haproxy_fd_limit: int | None = None
    """The file descriptors haproxy may open (None: not known, nothing is checked)."""
    haproxy_min_connections: int = 100
    """The fewest connections haproxy must have room for besides listeners and checks."""
    haproxy_threads: int | None = None
    """The threads haproxy runs (None: not known, the most it may start is counted)."""

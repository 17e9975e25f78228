"""Every setting of the agent, in one frozen dataclass.

A setting has one name and three spellings that carry the same value:
the YAML key ``node_name`` in the ``--config`` file, the flag ``--node-name``
and the environment variable ``VIP_AGENT_NODE_NAME``.  Precedence, lowest to
highest: default, config file, environment, flag.  Each field's ``doc`` is its
documentation (it feeds ``--help`` and the README's configuration reference).

Settings come from the operator, not the cluster, but they are still parsed
strictly: a bad value stops the agent with a message naming the setting and
where it came from, before anything is rendered.

Each value is parsed once, into its type, by the parser its field names
(``setting(default, doc, parse=...)``): an address becomes an ``ipaddress``
object, a choice an enum, a label selector a ``Selector``, and so on, so no
consumer parses a setting again.  Parsing happens in two steps.  Loading reads
a flag, a variable or a YAML value as the parser's ``kind`` (str, int, float or
bool, the flag's type; a list for ``many``), and a value of the wrong kind names
where it came from.  Making ``Settings`` then runs every field's parser (which
also takes a value that already has the field's type, unchanged, so
``Settings(control_plane_vip="192.0.2.10")`` and ``dataclasses.replace`` work
alike), and last the few rules between settings in ``_check_together``.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import ipaddress
import re
import socket
import threading
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from agent.core.addresses import reserved_reason
from agent.core.grammar import DNS_LABEL, DNS_SUBDOMAIN, IFNAME, LABEL_KEY, LABEL_VALUE
from agent.core.model import BgpPeer, Community, IPAddress

ENV_PREFIX = "VIP_AGENT_"
DEFAULT_CONFIG_FILE = "/etc/vip-agent/config.yaml"

# The IPVS schedulers of the kernels keepalived runs on (Debian 12's 6.1 has these;
# "twos" arrived in 6.2, and keepalived silently leaves out a virtual server whose
# scheduler module is missing, so it is not accepted).
SCHEDULERS = frozenset(
    {"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh"}
)

T = TypeVar("T")
E = TypeVar("E", bound=enum.StrEnum)


class SettingsError(ValueError):
    """A setting has a value the agent cannot use."""


class Invalid(ValueError):
    """A parser's verdict on one value: the value to show and why it cannot be used."""

    def __init__(self, value: object, why: str) -> None:
        super().__init__(why)
        self.value = value
        self.why = why


# --- the types settings are parsed into ------------------------------------------------


class Daemons(enum.StrEnum):
    """Who runs keepalived and haproxy."""

    SUPERVISE = "supervise"  # the agent, as its children
    SYSTEMD = "systemd"  # systemd, as system services the agent reloads
    NONE = "none"  # nobody: the agent writes and validates the files only


class HealthMode(enum.StrEnum):
    """What a failing apiserver does to the control-plane instance."""

    WEIGHT = "weight"  # lowers its priority: some node always holds the VIP
    FAULT = "fault"  # puts it in FAULT: no node holds the VIP when every apiserver fails


class RealServerCheck(enum.StrEnum):
    """The check keepalived runs on TCP real servers."""

    TCP = "tcp"
    NONE = "none"


class Mode(enum.StrEnum):
    """How VIPs are announced."""

    VRRP = "vrrp"  # keepalived's VRRP on one layer-2 segment
    BGP = "bgp"  # BIRD 2 to routers, for routed networks


class LogFormat(enum.StrEnum):
    """How log lines are written."""

    TEXT = "text"
    JSON = "json"


@dataclass(frozen=True)
class ObjectRef:
    """A namespaced Kubernetes object, written ``NAMESPACE/NAME``."""

    namespace: str
    """A DNS label."""
    name: str
    """A DNS subdomain."""

    def __post_init__(self) -> None:
        if not (DNS_LABEL.match(self.namespace) and DNS_SUBDOMAIN.match(self.name)):
            raise ValueError("expected NAMESPACE/NAME")

    @classmethod
    def parse(cls, text: str) -> ObjectRef:
        namespace, _, name = text.partition("/")
        return cls(namespace, name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class VridRange:
    """The virtual_router_ids per-VIP instances are hashed into, written ``LOW-HIGH``."""

    low: int
    """The first id, 1 or more."""
    high: int
    """The last id (included), above ``low`` and at most 255."""

    def __post_init__(self) -> None:
        if not 1 <= self.low < self.high <= 255:
            raise ValueError("expected LOW-HIGH in 1-255")

    @classmethod
    def parse(cls, text: str) -> VridRange:
        found = re.fullmatch(r"([0-9]+)-([0-9]+)", text)
        if found is None:
            raise ValueError("expected LOW-HIGH in 1-255")
        return cls(int(found[1]), int(found[2]))

    def ids(self) -> range:
        return range(self.low, self.high + 1)

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"


@dataclass(frozen=True)
class Backend:
    """A static apiserver backend, written ``ADDRESS`` or ``NAME=ADDRESS``."""

    name: str | None
    """haproxy's name for the server, a DNS name; None: one made from the address."""
    address: IPAddress
    """Where the apiserver listens, on control_plane_backend_port."""

    def __post_init__(self) -> None:
        _check_backend_name(self.name)

    @classmethod
    def parse(cls, text: str) -> Backend:
        name, eq, address = text.rpartition("=")
        _check_backend_name(name if eq else None)  # the name first, as it is written first
        return cls(name if eq else None, _address(address))

    def __str__(self) -> str:
        return str(self.address) if self.name is None else f"{self.name}={self.address}"


def _check_backend_name(name: str | None) -> None:
    if name is not None and not DNS_SUBDOMAIN.match(name):
        raise ValueError("NAME must be a DNS name")


Requirement = tuple[str, str, str]
"""(key, operator, value): operator is '=', '!=', 'exists' or '!exists'."""


@dataclass(frozen=True)
class Selector:
    """An equality-based label selector (``k=v,k!=v,k,!k``); empty selects everything."""

    text: str
    """As written: ``vip-agent settings`` shows it back unchanged."""
    requirements: tuple[Requirement, ...] = field(init=False, compare=False)
    """What ``text`` says, each of which a node's labels must meet."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "requirements", parse_selector(self.text))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(_meets(requirement, labels) for requirement in self.requirements)

    def __str__(self) -> str:
        return self.text


def parse_selector(text: str) -> tuple[Requirement, ...]:
    """Parse the equality-based label selector grammar (``k=v,k!=v,k,!k``)."""
    out: list[Requirement] = []
    for raw in filter(None, (part.strip() for part in text.split(","))):
        if raw.startswith("!"):
            key, op, value = raw[1:], "!exists", ""
        elif "!=" in raw:
            key, _, value = raw.partition("!=")
            op = "!="
        elif "=" in raw:
            key, _, value = raw.partition("=")
            key, value, op = key.rstrip("="), value.lstrip("="), "="
        else:
            key, op, value = raw, "exists", ""
        key, value = key.strip(), value.strip()
        if not LABEL_KEY.match(key):
            raise ValueError(f"bad label key {key!r}")
        if not LABEL_VALUE.match(value):
            raise ValueError(f"bad label value {value!r}")
        out.append((key, op, value))
    return tuple(out)


def _meets(requirement: Requirement, labels: Mapping[str, str]) -> bool:
    key, op, value = requirement
    if op == "exists":
        return key in labels
    if op == "!exists":
        return key not in labels
    if op == "=":
        return labels.get(key) == value
    return labels.get(key) != value


# --- reading a value as a flag's type ------------------------------------------------


def _read_bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{raw!r} is not a boolean")


def _read_int(raw: object) -> int:
    if isinstance(raw, bool):
        raise ValueError(f"{raw!r} is not an integer")
    return int(str(raw).strip())


def _read_float(raw: object) -> float:
    if isinstance(raw, bool):
        raise ValueError(f"{raw!r} is not a number")
    return float(str(raw).strip())


def _read_str(raw: object) -> str:
    if raw is None or isinstance(raw, dict | list):
        raise ValueError(f"{raw!r} is not a string")
    return str(raw)


def _read_entry(raw: object) -> object:
    """A list item that may be text (a flag, the environment) or a YAML mapping."""
    if isinstance(raw, dict):
        return raw
    return _read_str(raw)


_READ: dict[type, Callable[[object], object]] = {
    bool: _read_bool,
    int: _read_int,
    float: _read_float,
    str: _read_str,
    dict: _read_entry,
}


def _items(raw: object) -> list[object]:
    """A list setting's items: comma-separated text, or a YAML list (or tuple)."""
    if isinstance(raw, str):
        return [part.strip() for part in raw.split(",") if part.strip()]
    if isinstance(raw, list | tuple):
        return list(raw)
    raise ValueError("expected a list")


# --- the parsers ---------------------------------------------------------------------


@dataclass(frozen=True)
class Parser(Generic[T]):
    """How one setting is read, and what its value must be."""

    kind: type
    """What a flag, an environment variable or a YAML value is read as before ``parse``:
    str, int, float or bool (the flag's type)."""
    parse: Callable[[object], T]
    """A value of ``kind`` (or of the setting's type: returned unchanged) -> the setting's
    type.  Raises Invalid, or ValueError for the whole value, saying why not."""
    many: bool = False
    """A list of ``kind``: comma-separated text, a YAML list or a repeated flag."""


def setting(default: T, doc: str, *, parse: Parser[T], secret: bool = False) -> T:
    """A Settings field: its default, its documentation and its parser."""
    return field(default=default, metadata={"doc": doc, "parse": parse, "secret": secret})


def _listed(item: Parser[T]) -> Parser[tuple[T, ...]]:
    def parse(raw: object) -> tuple[T, ...]:
        return tuple(item.parse(one) for one in _items(raw))

    return Parser(item.kind, parse, many=True)


def _optional(inner: Parser[T]) -> Parser[T | None]:
    def parse(raw: object) -> T | None:
        return None if raw is None else inner.parse(raw)

    return Parser(inner.kind, parse)


def _ints(low: int, high: int, why: str) -> Parser[int]:
    def parse(raw: object) -> int:
        value = _read_int(raw)
        if not low <= value <= high:
            raise Invalid(value, why)
        return value

    return Parser(int, parse)


def _floats(low: float, high: float, why: str) -> Parser[float]:
    def parse(raw: object) -> float:
        value = _read_float(raw)
        if not low <= value <= high:  # NaN compares false: rejected too
            raise Invalid(value, why)
        return value

    return Parser(float, parse)


def _matching(pattern: re.Pattern[str], why: str) -> Parser[str]:
    def parse(raw: object) -> str:
        text = _read_str(raw)
        if not pattern.match(text):
            raise Invalid(text, why)
        return text

    return Parser(str, parse)


def _choice(kind: type[E]) -> Parser[E]:
    values = [member.value for member in kind]
    why = f"{', '.join(values[:-1])} or {values[-1]}"

    def parse(raw: object) -> E:
        try:
            return kind(_read_str(raw))
        except ValueError:
            raise Invalid(raw, why) from None

    return Parser(str, parse)


def _record(kind: type[T], from_text: Callable[[str], T]) -> Parser[T]:
    """A value of ``kind`` as it is, or text ``from_text`` turns into one."""

    def parse(raw: object) -> T:
        if isinstance(raw, kind):
            return raw
        text = _read_str(raw)
        try:
            return from_text(text)
        except Invalid:
            raise
        except ValueError as err:
            raise Invalid(text, str(err)) from None

    return Parser(str, parse)


def _address(raw: object) -> IPAddress:
    if isinstance(raw, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return raw
    text = _read_str(raw)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise Invalid(text, "not an IP address") from None


def _scheduler(raw: object) -> str:
    text = _read_str(raw)
    if text not in SCHEDULERS:
        raise Invalid(text, f"one of {', '.join(sorted(SCHEDULERS))}")
    return text


def _listen_address(raw: object) -> str:
    text = _read_str(raw)
    _host, sep, port = text.rpartition(":")
    if not (sep and port.isdigit() and 0 <= int(port) <= 65535):
        raise Invalid(text, "expected HOST:PORT")
    return text


def _vip(raw: object) -> IPAddress:
    """An address that may be a VIP: never a reserved form (agent.core.addresses)."""
    address = _address(raw)
    why = reserved_reason(address)
    if why is not None:
        raise Invalid(str(address), f"{why}; never a VIP")
    return address


# A TCP MD5 key (Linux: at most 80 bytes), written into bird.conf between double quotes:
# no quote, backslash, white space or control character can end the string early.
_BGP_PASSWORD = re.compile(r"^[A-Za-z0-9!#$%&()*+,./:;<=>?@^_{|}~\[\]-]{1,80}$")
_PEER_KEYS = frozenset({"address", "as", "asn", "password", "multihop", "port", "bfd", "source"})


def _asn(raw: object) -> int:
    value = _read_int(raw)
    if not 1 <= value <= 4294967294:
        raise ValueError(f"AS {value} is not 1-4294967294")
    return value


def _peer(raw: object) -> BgpPeer:
    """kube-vip's peer string ``ADDRESS:AS[:PASSWORD[:MULTIHOP]]`` (an IPv6 address in
    brackets; MULTIHOP true, false or a TTL), or a YAML mapping of the same and more."""
    if isinstance(raw, BgpPeer):
        return raw
    try:
        fields = _peer_mapping(raw) if isinstance(raw, dict) else _peer_text(_read_str(raw))
        return _peer_from(fields)
    except ValueError as err:
        raise Invalid(_shown(raw), str(err)) from None


def _shown(raw: object) -> object:
    """What an error may show of a peer: never its password."""
    if isinstance(raw, dict):
        return {k: ("<redacted>" if k == "password" else v) for k, v in raw.items()}
    try:
        fields = _peer_text(_read_str(raw))
    except ValueError:
        return "<redacted>"  # cannot tell where a password would be: show none of it
    if not fields.get("password"):
        return raw
    shown = [str(fields["address"]), str(fields["as"]), "<redacted>"]
    return ":".join([*shown, *([str(fields["multihop"])] if "multihop" in fields else [])])


def _peer_text(text: str) -> dict[str, object]:
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError("expected [IPV6]:AS[:PASSWORD[:MULTIHOP]]")
        parts = [host, *rest[1:].split(":")] if rest else [host]
    else:
        parts = text.split(":")
    if len(parts) < 2 or len(parts) > 4:
        raise ValueError("expected ADDRESS:AS[:PASSWORD[:MULTIHOP]] (IPv6 in brackets)")
    fields: dict[str, object] = {"address": parts[0], "as": parts[1]}
    if len(parts) > 2 and parts[2]:
        fields["password"] = parts[2]
    if len(parts) > 3 and parts[3]:
        fields["multihop"] = parts[3]
    return fields


def _peer_mapping(raw: dict[object, object]) -> dict[str, object]:
    unknown = sorted(str(k) for k in raw if k not in _PEER_KEYS)
    if unknown:
        keys = "address, as, password, multihop, port, bfd, source"
        raise ValueError(f"unknown peer key {unknown[0]!r} ({keys})")
    return {("as" if k == "asn" else str(k)): v for k, v in raw.items()}


def _peer_from(fields: dict[str, object]) -> BgpPeer:
    if "address" not in fields or "as" not in fields:
        raise ValueError("a peer needs an address and an AS")
    password = fields.get("password")
    if password is not None and not _BGP_PASSWORD.match(_read_str(password)):
        raise ValueError("password: 1-80 printable characters, no quote, backslash or space")
    multihop = fields.get("multihop")
    ttl: int | None = None
    if isinstance(multihop, bool) or str(multihop).lower() in ("true", "false"):
        ttl = 64 if str(multihop).lower() == "true" else None  # kube-vip's true: BIRD's default
    elif multihop is not None:
        ttl = _read_int(multihop)
        if not 1 <= ttl <= 255:
            raise ValueError(f"multihop TTL {ttl} is not 1-255")
    port = _read_int(fields.get("port", 179))
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not 1-65535")
    source = fields.get("source")
    return BgpPeer(
        address=_vip_free_address(fields["address"]),
        asn=_asn(fields["as"]),
        password=None if password is None else _read_str(password),
        multihop=ttl,
        port=port,
        bfd=_read_bool(fields.get("bfd", True)),
        source=None if source is None else _vip_free_address(source),
    )


def _vip_free_address(raw: object) -> IPAddress:
    address = _address(raw)
    why = reserved_reason(address)
    if why is not None and not address.is_link_local:
        raise ValueError(f"{address} {why}")
    return address


def _community(raw: object) -> Community:
    if isinstance(raw, Community):
        return raw
    try:
        return Community.parse(_read_str(raw))
    except ValueError:
        raise Invalid(raw, "expected ASN:VALUE (16 bits each) or ASN:DATA1:DATA2") from None


_TEXT = Parser(str, _read_str)
_BOOL = Parser(bool, _read_bool)
_PEER = Parser(dict, _peer)
_COMMUNITY = Parser(str, _community)


def _ipv4(raw: object) -> ipaddress.IPv4Address:
    address = _address(raw)
    if not isinstance(address, ipaddress.IPv4Address):
        raise Invalid(str(address), "BGP router ids are IPv4 addresses")
    return address


def _gate_table(raw: object) -> int:
    value = _read_int(raw)
    # 253-255 are the kernel's default, main and local tables
    if not 1 <= value <= 2**31 - 1 or value in (253, 254, 255):
        raise Invalid(value, "a routing table id, 1-2147483647 but not 253-255")
    return value


_ADDRESS = Parser(str, _address)
_VIP = Parser(str, _vip)
_INTERFACE = _matching(IFNAME, "not a Linux interface name")
# keepalived's parser treats '#' and '!' as comments and splits on white space;
# a PASS password is at most 8 characters on the wire.
_AUTH_PASS = _matching(
    re.compile(r"^[A-Za-z0-9_.,+=/-]{1,8}$"), "1-8 characters from [A-Za-z0-9_.,+=/-]"
)
_ABSOLUTE_PATH = _matching(
    re.compile(r"^/[A-Za-z0-9_./@+-]*$"), "must be an absolute path of [A-Za-z0-9_./@+-]"
)
_HTTPS_URL = _matching(re.compile(r"^https://"), "must be https://HOST[:PORT]/PATH")
_SCHEDULER = Parser(str, _scheduler)
_LISTEN = Parser(str, _listen_address)
_VRID = _ints(1, 255, "must be 1-255")
_PORT = _ints(1, 65535, "not a port (1-65535)")
_UP_TO_A_DAY = _ints(0, 86400, "0-86400 seconds")
_PROBE_SECONDS = _floats(0.01, 60, "0.01-60 seconds")
_PROBES = _ints(1, 100, "1-100")
_OBJECT_REF = _record(ObjectRef, ObjectRef.parse)
_VRID_RANGE = _record(VridRange, VridRange.parse)
_SELECTOR = _record(Selector, Selector)
_BACKEND = _record(Backend, Backend.parse)


def _run_dir_file(doc: str) -> str:
    """A path setting that defaults to a file in run_dir (``_IN_RUN_DIR`` names it; the
    value is resolved in Settings.__post_init__, so readers always see a path)."""
    return cast(str, setting(None, doc, parse=_optional(_ABSOLUTE_PATH)))


# --- the settings --------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    # --- identity --------------------------------------------------------
    node_name: str | None = setting(
        None,
        "Name of this node's Node object; else NODE_NAME, then the hostname.",
        parse=_optional(_TEXT),
    )
    node_address: IPAddress | None = setting(
        None,
        "This node's address for VRRP (unicast_src_ip). Default: from its Node object, "
        "in the order of node_address_types.",
        parse=_optional(_ADDRESS),
    )
    node_address_types: tuple[str, ...] = setting(
        ("InternalIP", "ExternalIP"),
        "Node address types tried in order when reading a Node's address.",
        parse=_listed(_TEXT),
    )
    interface: str | None = setting(
        None,
        "Interface that carries the VIPs and the VRRP adverts. Default: the one holding "
        "node_address (live agent); required for a dry run without it.",
        parse=_optional(_INTERFACE),
    )
    # --- sources ---------------------------------------------------------
    configmap: ObjectRef = setting(
        ObjectRef("kube-system", "vip-configmap"),
        "NAMESPACE/NAME of the keepalived-vip style vip-configmap.",
        parse=_OBJECT_REF,
    )
    pool_configmap: ObjectRef = setting(
        ObjectRef("kube-system", "kubevip"),
        "NAMESPACE/NAME of the address-pool ConfigMap (kube-vip-cloud-provider's format: "
        "cidr-global, range-global, cidr-<namespace>, range-<namespace>). When it exists, "
        "Services may only claim addresses in their namespace's pools.",
        parse=_OBJECT_REF,
    )
    allocation: bool = setting(
        True,
        "Give LoadBalancer Services that ask for no address the lowest free address of "
        "their pools (one agent at a time, through a Lease). Off: leave that to "
        "kube-vip-cloud-provider.",
        parse=_BOOL,
    )
    lease: ObjectRef = setting(
        ObjectRef("kube-system", "vip-agent-ipam"),
        "NAMESPACE/NAME of the coordination.k8s.io Lease that elects the one agent which "
        "allocates addresses and reports Events.",
        parse=_OBJECT_REF,
    )
    lease_duration: float = setting(
        5.0,
        "Seconds without a renewal after which another agent takes the Lease over.",
        parse=_floats(1, 300, "1-300 seconds"),
    )
    lease_renew_deadline: float = setting(
        3.0,
        "The holder stops acting when it could not renew for this long (below lease_duration).",
        parse=_floats(0.5, 300, "0.5-300 seconds"),
    )
    lease_retry_period: float = setting(
        1.0,
        "Seconds between two attempts to acquire or renew the Lease.",
        parse=_floats(0.1, 60, "0.1-60 seconds"),
    )
    kubernetes: bool = setting(
        True,
        "Watch a Kubernetes API server. Off: static mode, only the control-plane VIP "
        "and static peers/backends from settings (works before the cluster exists).",
        parse=_BOOL,
    )
    kubeconfig: str | None = setting(
        None,
        "kubeconfig file; default: in-cluster service account, then ~/.kube/config.",
        parse=_optional(_TEXT),
    )
    node_selector: Selector = setting(
        Selector(""),
        "Label selector (k=v,k2,!k3) for nodes that may hold service VIPs; empty = all nodes.",
        parse=_SELECTOR,
    )
    control_plane_selector: Selector = setting(
        Selector("node-role.kubernetes.io/control-plane"),
        "Label selector for nodes that may hold the control-plane VIP.",
        parse=_SELECTOR,
    )
    templates: str | None = setting(
        None,
        "Directory with your own copies of keepalived.conf.j2 / haproxy.cfg.j2.",
        parse=_optional(_TEXT),
    )
    # --- VRRP ------------------------------------------------------------
    vrrp_version: int = setting(
        3,
        "VRRP version 2 or 3. 3 allows sub-second advert_int and IPv6; 2 allows auth_pass. "
        "IPv6 instances always use 3.",
        parse=_ints(2, 3, "must be 2 or 3"),
    )
    advert_int: float = setting(
        1.0,
        "VRRP advertisement interval in seconds (integer with VRRPv2).",
        parse=_floats(0.01, 255, "must be between 0.01 and 255 seconds"),
    )
    unicast: bool = setting(
        False,
        "Send VRRP adverts unicast to the other eligible nodes, not multicast.",
        parse=_BOOL,
    )
    unicast_peers: tuple[IPAddress, ...] = setting(
        (),
        "Static unicast peer addresses, used when no Node objects are known.",
        parse=_listed(_ADDRESS),
    )
    auth_pass: str | None = setting(
        None,
        "VRRPv2 PASS authentication (1-8 characters); never logged.",
        parse=_optional(_AUTH_PASS),
        secret=True,
    )
    spread: bool = setting(
        False,
        "One VRRP instance per service VIP, preferred owner spread across nodes, instead of "
        "one instance per address family holding every service VIP.",
        parse=_BOOL,
    )
    virtual_router_id: int = setting(
        52,
        "virtual_router_id of the shared service instance (spread off).",
        parse=_VRID,
    )
    virtual_router_id_range: VridRange = setting(
        VridRange(1, 255),
        "Range of virtual_router_ids hashed to per-VIP instances (spread on); the two fixed "
        "ids above are never used for them.",
        parse=_VRID_RANGE,
    )
    track_interfaces: tuple[str, ...] = setting(
        (),
        "Extra interfaces whose failure puts the instances in FAULT.",
        parse=_listed(_INTERFACE),
    )
    garp_master_delay: int = setting(
        5,
        "Seconds after becoming MASTER to send the second gratuitous ARP burst.",
        parse=_ints(0, 255, "0-255 seconds"),
    )
    garp_master_refresh: int = setting(
        5,
        "While MASTER, announce the VIPs again (gratuitous ARP, unsolicited NA) every this "
        "many seconds; 0: never. After a partition heals, the master that stays may send "
        "nothing, and clients keep the other node's MAC until their ARP entry expires "
        "(up to a minute); kube-vip re-announces every 3 s.",
        parse=_UP_TO_A_DAY,
    )
    # --- IPVS ------------------------------------------------------------
    scheduler: str = setting(
        "rr",
        "Default IPVS scheduler (lb_algo); per Service: annotation vip-agent.io/scheduler.",
        parse=_SCHEDULER,
    )
    real_server_check: RealServerCheck = setting(
        RealServerCheck.TCP,
        "Check keepalived runs on TCP real servers: tcp or none. UDP and SCTP real servers "
        "get none (endpoint readiness already filters them).",
        parse=_choice(RealServerCheck),
    )
    check_interval: int = setting(
        5,
        "Seconds between real-server checks (delay_loop).",
        parse=_ints(1, 3600, "1-3600 seconds"),
    )
    # --- control plane ---------------------------------------------------
    control_plane_vip: IPAddress | None = setting(
        None,
        "The control-plane VIP (kubeadm --control-plane-endpoint); unset: none.",
        parse=_optional(_VIP),
    )
    control_plane_port: int = setting(
        8443,
        "haproxy frontend port on the control-plane VIP.",
        parse=_PORT,
    )
    control_plane_backend_port: int = setting(
        6443,
        "apiserver port on each control-plane node.",
        parse=_PORT,
    )
    control_plane_backends: tuple[Backend, ...] = setting(
        (),
        "Static apiserver backends, ADDRESS or NAME=ADDRESS; empty: the control-plane Nodes.",
        parse=_listed(_BACKEND),
    )
    control_plane_virtual_router_id: int = setting(
        51,
        "virtual_router_id of the control-plane instance.",
        parse=_VRID,
    )
    apiserver_ca_file: str | None = setting(
        None,
        "CA bundle haproxy verifies the apiservers' /readyz certificate with; unset: no "
        "verification (the check still needs TLS and HTTP 200).",
        parse=_optional(_ABSOLUTE_PATH),
    )
    apiserver_url: str = setting(
        "https://127.0.0.1:6443/readyz",
        "The local apiserver's health endpoint the prober and check-apiserver GET.",
        parse=_HTTPS_URL,
    )
    apiserver_client_cert: str | None = setting(
        None,
        "Client certificate for the apiserver health check.",
        parse=_optional(_ABSOLUTE_PATH),
    )
    apiserver_client_key: str | None = setting(
        None,
        "Key of apiserver_client_cert.",
        parse=_optional(_ABSOLUTE_PATH),
    )
    apiserver_token_file: str | None = setting(
        None,
        "File holding a bearer token for the health check; never logged.",
        parse=_optional(_ABSOLUTE_PATH),
    )
    health_interval: float = setting(
        0.1,
        "Seconds between two apiserver probes.",
        parse=_PROBE_SECONDS,
    )
    health_timeout: float = setting(
        0.5,
        "A probe without an answer within this many seconds fails.",
        parse=_PROBE_SECONDS,
    )
    health_fall: int = setting(
        2,
        "Consecutive failed probes before the apiserver counts as down.",
        parse=_PROBES,
    )
    health_rise: int = setting(
        3,
        "Consecutive good probes before it counts as up again.",
        parse=_PROBES,
    )
    control_plane_advert_int: float | None = setting(
        None,
        "advert_int of the control-plane instance; default 0.1 s with VRRPv3 (a dead or "
        "demoted master is replaced in about 0.35 s), 1 s with VRRPv2.",
        parse=_optional(_floats(0.01, 255, "0.01-255 seconds")),
    )
    control_plane_garp_master_refresh: int = setting(
        1,
        "garp_master_refresh of the control-plane instance: one address, which every "
        "kubelet needs back within a second after a partition heals.",
        parse=_UP_TO_A_DAY,
    )
    health_file: str = _run_dir_file(
        "keepalived track_file the apiserver prober writes (0 healthy, 1 failing). "
        "Default: run_dir/apiserver.health.",
    )
    health_mode: HealthMode = setting(
        HealthMode.WEIGHT,
        "What a failing apiserver does to the control-plane instance: weight (lower the "
        "priority below every healthy node; if all fail, one node still holds the VIP) "
        "or fault (drop the VIP; if all fail, no node holds it).",
        parse=_choice(HealthMode),
    )
    # --- haproxy ---------------------------------------------------------
    haproxy_stats_socket: str = _run_dir_file(
        "haproxy admin socket (expose-fd listeners, used for seamless reloads). "
        "Default: run_dir/haproxy.sock.",
    )
    haproxy_hard_stop_after: int = setting(
        900,
        "Seconds an old haproxy worker may drain connections after a reload.",
        parse=_UP_TO_A_DAY,
    )
    haproxy_fd_limit: int | None = setting(
        None,
        "File descriptors haproxy may open: its hard RLIMIT_NOFILE (systemd: the unit's "
        "LimitNOFILE). Rendered as fd-hard-limit; PROXY listeners and their health checks "
        "that would leave room for fewer than haproxy_min_connections connections are "
        "rejected, the newest Service's first (their VIPs stay announced). Unset: under "
        "--daemons supervise the agent's own hard limit (haproxy "
        "inherits it), under systemd what systemctl says of haproxy.service's "
        "LimitNOFILE, otherwise not checked.",
        parse=_optional(_ints(256, 1 << 30, "256-1073741824")),
    )
    haproxy_threads: int | None = setting(
        None,
        "Threads haproxy runs, for counting its file descriptors (3 each). Unset: under "
        "--daemons supervise the CPUs the agent may run on (haproxy starts one thread per "
        "CPU it is bound to), otherwise 64, the most Debian's haproxy starts.",
        parse=_optional(_ints(1, 64, "1-64")),
    )
    haproxy_min_connections: int = setting(
        100,
        "Concurrent connections haproxy must have room for once every listener and health "
        "check has its descriptor (haproxy's own floor is 100; below it the agent renders "
        "a maxconn that fits).",
        parse=_ints(1, 1 << 29, "1-536870912"),
    )
    vrrp_notify_fifo: str = _run_dir_file(
        "FIFO keepalived writes VRRP state changes to. Default: run_dir/vrrp.fifo.",
    )
    # --- BGP -------------------------------------------------------------
    mode: Mode = setting(
        Mode.VRRP,
        "How VIPs are announced: vrrp (keepalived, one layer-2 segment) or bgp (BIRD 2 "
        "announces each VIP as a host route to the bgp_peers).",
        parse=_choice(Mode),
    )
    bgp_local_as: int | None = setting(
        None,
        "This node's AS (kube-vip: bgp_as). Required with mode bgp.",
        parse=_optional(Parser(int, _asn)),
    )
    bgp_router_id: ipaddress.IPv4Address | None = setting(
        None,
        "BGP router id (kube-vip: bgp_routerid). Default: the node's IPv4 address.",
        parse=_optional(Parser(str, _ipv4)),
    )
    bgp_peers: tuple[BgpPeer, ...] = setting(
        (),
        "Routers to announce to: kube-vip's ADDRESS:AS[:PASSWORD[:MULTIHOP]] (IPv6 in "
        "brackets), or in YAML a mapping with address, as, password, multihop (TTL), port, "
        "bfd and source. Passwords are never logged or shown.",
        parse=_listed(_PEER),
    )
    bgp_hold_time: int = setting(
        9, "BGP hold time, seconds (keepalive a third of it).", parse=_ints(3, 65535, "3-65535")
    )
    bgp_keepalive_time: int = setting(
        3, "BGP keepalive interval, seconds.", parse=_ints(1, 21845, "1-21845")
    )
    bgp_communities: tuple[Community, ...] = setting(
        (),
        "Communities added to every announcement (ASN:VALUE or large ASN:DATA1:DATA2); per "
        "Service: annotation vip-agent.io/bgp-communities.",
        parse=_listed(_COMMUNITY),
    )
    bgp_local_pref: int | None = setting(
        None,
        "LOCAL_PREF of the announcements (iBGP peers only).",
        parse=_optional(_ints(0, 4294967295, "0-4294967295")),
    )
    bgp_bfd_interval: int = setting(
        100,
        "BFD transmit and receive interval, milliseconds, for peers with bfd (a dead node's "
        "routes go after interval x multiplier instead of the hold time).",
        parse=_ints(10, 60000, "10-60000 ms"),
    )
    bgp_bfd_multiplier: int = setting(3, "BFD detection multiplier.", parse=_ints(1, 255, "1-255"))
    bgp_graceful_restart_time: int = setting(
        120,
        "Seconds a router keeps this node's routes while its BIRD restarts (graceful "
        "restart); a stop by SIGTERM withdraws them at once.",
        parse=_ints(1, 4095, "1-4095 seconds"),
    )
    bgp_gate_table: int = setting(
        8810,
        "Kernel routing table the apiserver prober puts the control-plane VIP's route in "
        "while the local apiserver is healthy; BIRD announces the VIP only while it is there.",
        parse=Parser(int, _gate_table),
    )
    bgp_vip_interface: str = setting(
        "lo",
        "Interface the agent puts BGP-announced VIPs on, so the node accepts their traffic.",
        parse=_INTERFACE,
    )
    bird_config: str = setting(
        "/etc/bird/bird.conf",
        "Where vip-agent run writes bird.conf (mode bgp).",
        parse=_ABSOLUTE_PATH,
    )
    bird_binary: str = setting("bird", "bird to run.", parse=_TEXT)
    birdc_binary: str = setting("birdc", "birdc to reload and ask bird with.", parse=_TEXT)
    # --- run -------------------------------------------------------------
    manifests: tuple[str, ...] = setting(
        (),
        "Read cluster objects from these YAML/JSON files, directories or - (stdin) instead "
        "of an API server; vip-agent run watches them for edits.",
        parse=_listed(_TEXT),
    )
    run_dir: str = setting(
        "/run/vip-agent",
        "Pidfiles and sockets of the supervised daemons.",
        parse=_ABSOLUTE_PATH,
    )
    keepalived_binary: str = setting(
        "keepalived",
        "keepalived to run.",
        parse=_TEXT,
    )
    haproxy_binary: str = setting(
        "haproxy",
        "haproxy to run.",
        parse=_TEXT,
    )
    keepalived_reload_interval: float = setting(
        1.0,
        "Least seconds between two keepalived reloads; changes in between are applied "
        "together when it has passed (the last one always lands).",
        parse=_floats(0, 300, "0-300 seconds"),
    )
    coalesce_seconds: float = setting(
        0.1,
        "Least seconds between the starts of two reconciles: a change after a quiet moment "
        "is applied at once, changes arriving sooner are applied together in the next pass.",
        parse=_floats(0, 60, "0-60 seconds"),
    )
    keepalived_config: str = setting(
        "/etc/keepalived/keepalived.conf",
        "Where vip-agent run writes keepalived.conf.",
        parse=_TEXT,
    )
    haproxy_config: str = setting(
        "/etc/haproxy/haproxy.cfg",
        "Where vip-agent run writes haproxy.cfg.",
        parse=_TEXT,
    )
    daemons: Daemons = setting(
        Daemons.SUPERVISE,
        "Who runs keepalived and haproxy: supervise, systemd or none.",
        parse=_choice(Daemons),
    )
    metrics_address: str = setting(
        "0.0.0.0:9808",
        "HOST:PORT for Prometheus metrics, /healthz and /readyz.",
        parse=_LISTEN,
    )
    log_format: LogFormat = setting(
        LogFormat.TEXT,
        "Log lines as key=value text or json.",
        parse=_choice(LogFormat),
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            raw = getattr(self, f.name)
            try:
                value = f.metadata["parse"].parse(raw)
            except Invalid as err:
                _fail(f.name, err.value, err.why)
            except (TypeError, ValueError) as err:
                _fail(f.name, raw, str(err))
            object.__setattr__(self, f.name, value)
        # paths of the run directory follow it unless set: two agents on one filesystem
        # (labs, tests, a second instance) each get their own by setting run_dir alone
        for name, file_name in _IN_RUN_DIR.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, f"{self.run_dir.rstrip('/')}/{file_name}")
        _check_together(self)

    @property
    def cp_advert_int(self) -> float:
        if self.control_plane_advert_int is not None:
            return self.control_plane_advert_int
        # a backup takes over after 3 adverts + skew: 0.1 s keeps a failover under a second
        return 0.1 if self.vrrp_version == 3 else 1.0

    @property
    def configmap_ref(self) -> tuple[str, str]:
        return self.configmap.namespace, self.configmap.name

    @property
    def pool_configmap_ref(self) -> tuple[str, str]:
        return self.pool_configmap.namespace, self.pool_configmap.name

    @functools.cached_property
    def hashed_vrids(self) -> tuple[int, ...]:
        """The ids per-VIP instances are hashed into: the range less the two fixed ids."""
        fixed = {self.virtual_router_id, self.control_plane_virtual_router_id}
        return tuple(i for i in self.virtual_router_id_range.ids() if i not in fixed)

    def secrets(self) -> list[str]:
        """Every secret the settings hold (the VRRP password, BGP passwords): no log line
        and no status document ever shows them."""
        found = [self.auth_pass or "", *(p.password or "" for p in self.bgp_peers)]
        return [secret for secret in found if secret]

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict of plain values (text for parsed ones) with secrets
        replaced, safe to log and to print as YAML."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = "<redacted>" if f.metadata["secret"] and value else display(value)
        return out


def node_name_of(settings: Settings, hostname: Callable[[], str] = socket.gethostname) -> str:
    """This node's name: the setting, else (NODE_NAME was read into it) the short hostname."""
    return settings.node_name or hostname().split(".")[0].lower()


_IN_RUN_DIR = {
    "health_file": "apiserver.health",
    "haproxy_stats_socket": "haproxy.sock",
    "vrrp_notify_fifo": "vrrp.fifo",
}
"""Settings that default to a file in run_dir."""


class LiveSettings:
    """The one place the settings of a running agent change (a config file edit).

    Parts that must see an edit read ``get()`` when they act; the rest were built with
    the settings the agent started with.  A reader gets the old or the new Settings,
    never a mixture: the object is frozen and replaced whole.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()

    def get(self) -> Settings:
        with self._lock:
            return self._settings

    def set(self, settings: Settings) -> None:
        with self._lock:
            self._settings = settings


def _check_together(s: Settings) -> None:
    """The rules between settings, once each has been parsed on its own."""
    if s.vrrp_version == 2 and not s.advert_int.is_integer():
        _fail("advert_int", s.advert_int, "VRRPv2 needs whole seconds; use vrrp_version 3")
    if s.auth_pass is not None and s.vrrp_version != 2:
        _fail("auth_pass", s.auth_pass, "VRRPv3 has no authentication; set vrrp_version 2")
    if s.virtual_router_id == s.control_plane_virtual_router_id:
        _fail("virtual_router_id", s.virtual_router_id, "same as control_plane_virtual_router_id")
    if s.vrrp_version == 2 and not s.cp_advert_int.is_integer():
        _fail("control_plane_advert_int", s.cp_advert_int, "VRRPv2 needs whole seconds")
    if s.mode is Mode.BGP:
        _check_bgp(s)
    # client-go's rule: the holder must give up before anyone else may take over
    if not s.lease_retry_period < s.lease_renew_deadline < s.lease_duration:
        _fail(
            "lease_renew_deadline",
            s.lease_renew_deadline,
            "must lie between lease_retry_period and lease_duration",
        )


def _check_bgp(s: Settings) -> None:
    if s.bgp_local_as is None:
        _fail("bgp_local_as", None, "required with mode bgp")
    if not s.bgp_peers:
        _fail("bgp_peers", (), "mode bgp needs at least one peer")
    if s.bgp_keepalive_time * 3 > s.bgp_hold_time:
        _fail("bgp_keepalive_time", s.bgp_keepalive_time, "at most a third of bgp_hold_time")


def _fail(name: str, value: object, why: str) -> typing.NoReturn:
    secret = Settings.__dataclass_fields__[name].metadata["secret"]
    shown = "<redacted>" if secret else repr(value)
    raise SettingsError(f"setting {name}={shown}: {why}")


def fields() -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(Settings)


def _parser(name: str) -> Parser[Any]:
    parser: Parser[Any] = Settings.__dataclass_fields__[name].metadata["parse"]
    return parser


def field_type(name: str) -> tuple[type, bool]:
    """(kind, many) of a setting: what its flag, variable and YAML value are read as, and
    whether it is a list."""
    parser = _parser(name)
    return parser.kind, parser.many


def display(value: object) -> object:
    """A setting's value as plain data, each parsed value as the text it is written as."""
    if isinstance(value, tuple):
        return tuple(display(item) for item in value)
    if value is None or type(value) in (bool, int, float, str):
        return value
    return str(value)


# --- loading ------------------------------------------------------------------


def _coerce(name: str, raw: object, source: str) -> object:
    """``raw`` read as the setting's kind (not yet parsed), or an error naming ``source``."""
    parser = _parser(name)
    read = _READ[parser.kind]
    try:
        if parser.many:
            return tuple(read(item) for item in _items(raw))
        if raw is None:
            return None
        return read(raw)
    except (TypeError, ValueError) as err:
        raise SettingsError(f"setting {name} from {source}: {err}") from None


def load_file(path: str | Path) -> dict[str, object]:
    """Read a ``--config`` YAML file: a mapping of setting names (snake or kebab case)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise SettingsError(f"config file {path}: {err.strerror}") from None
    import yaml  # not at the top: most runs read no config file, and it costs 10 ms

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SettingsError(f"config file {path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path}: expected a mapping of settings")
    known = {f.name for f in fields()}
    out: dict[str, object] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise SettingsError(f"config file {path}: unknown setting {key!r}")
        out[name] = _coerce(name, value, f"config file {path}")
    return out


def from_env(environ: Mapping[str, str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for f in fields():
        key = ENV_PREFIX + f.name.upper()
        if key in environ:
            raw = environ[key]
            if raw == "" and f.default is None:
                out[f.name] = None  # VAR= unsets an optional setting
            elif raw != "":
                out[f.name] = _coerce(f.name, raw, f"environment {key}")
    return out


def load(
    *,
    flags: Mapping[str, object],
    environ: Mapping[str, str],
    config_file: str | Path | None,
) -> Settings:
    """Merge default < config file < environment < flags into validated Settings.

    ``flags`` holds only the flags the user gave (None means not given).  A
    missing default config file is fine; a missing file named explicitly is not.
    """
    merged: dict[str, object] = {}
    path = config_file or environ.get(ENV_PREFIX + "CONFIG")
    if path:
        merged.update(load_file(path))
    elif Path(DEFAULT_CONFIG_FILE).is_file():
        merged.update(load_file(DEFAULT_CONFIG_FILE))
    merged.update(from_env(environ))
    for name, value in flags.items():
        if value is None or value == ():
            continue
        merged[name] = _coerce(name, value, f"flag --{name.replace('_', '-')}")
    if not merged.get("node_name") and environ.get("NODE_NAME"):
        merged["node_name"] = environ["NODE_NAME"]
    try:
        return Settings(**merged)  # type: ignore[arg-type]
    except TypeError as err:
        raise SettingsError(str(err)) from None

"""Every setting of the agent, in one frozen dataclass.

A setting has one name and three spellings that carry the same value:
the YAML key ``node_name`` in the ``--config`` file, the flag ``--node-name``
and the environment variable ``VIP_AGENT_NODE_NAME``.  Precedence, lowest to
highest: default, config file, environment, flag.  Each field's ``doc`` is its
documentation (it feeds ``--help`` and the README's configuration reference).

Settings come from the operator, not the cluster, but they are still parsed
strictly: a bad value stops the agent with a message naming the setting and
where it came from, before anything is rendered.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.core.grammar import DNS_LABEL, DNS_SUBDOMAIN, IFNAME, LABEL_KEY, LABEL_VALUE

ENV_PREFIX = "VIP_AGENT_"
DEFAULT_CONFIG_FILE = "/etc/vip-agent/config.yaml"

# keepalived's parser treats '#' and '!' as comments and splits on white space;
# a PASS password is at most 8 characters on the wire.
_AUTH_PASS = re.compile(r"^[A-Za-z0-9_.,+=/-]{1,8}$")
_PATH = re.compile(r"^/[A-Za-z0-9_./@+-]*$")
# The IPVS schedulers of the kernels keepalived runs on (Debian 12's 6.1 has these;
# "twos" arrived in 6.2, and keepalived silently leaves out a virtual server whose
# scheduler module is missing, so it is not accepted).
SCHEDULERS = frozenset(
    {"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh"}
)


class SettingsError(ValueError):
    """A setting has a value the agent cannot use."""


def _doc(text: str, **extra: Any) -> dict[str, Any]:
    return {"doc": text, **extra}


@dataclass(frozen=True)
class Settings:
    # --- identity --------------------------------------------------------
    node_name: str | None = field(
        default=None,
        metadata=_doc("Name of this node's Node object; else NODE_NAME, then the hostname."),
    )
    node_address: str | None = field(
        default=None,
        metadata=_doc(
            "This node's address for VRRP (unicast_src_ip). Default: from its Node object, "
            "in the order of node_address_types."
        ),
    )
    node_address_types: tuple[str, ...] = field(
        default=("InternalIP", "ExternalIP"),
        metadata=_doc("Node address types tried in order when reading a Node's address."),
    )
    interface: str | None = field(
        default=None,
        metadata=_doc(
            "Interface that carries the VIPs and the VRRP adverts. Default: the one holding "
            "node_address (live agent); required for a dry run without it."
        ),
    )
    # --- sources ---------------------------------------------------------
    configmap: str = field(
        default="kube-system/vip-configmap",
        metadata=_doc("NAMESPACE/NAME of the keepalived-vip style vip-configmap."),
    )
    kubernetes: bool = field(
        default=True,
        metadata=_doc(
            "Watch a Kubernetes API server. Off: static mode, only the control-plane VIP "
            "and static peers/backends from settings (works before the cluster exists)."
        ),
    )
    kubeconfig: str | None = field(
        default=None,
        metadata=_doc("kubeconfig file; default: in-cluster service account, then ~/.kube/config."),
    )
    node_selector: str = field(
        default="",
        metadata=_doc(
            "Label selector (k=v,k2,!k3) for nodes that may hold service VIPs; empty = all nodes."
        ),
    )
    control_plane_selector: str = field(
        default="node-role.kubernetes.io/control-plane",
        metadata=_doc("Label selector for nodes that may hold the control-plane VIP."),
    )
    pool_configmap: str = field(
        default="kube-system/kubevip",
        metadata=_doc(
            "NAMESPACE/NAME of the address-pool ConfigMap (kube-vip-cloud-provider's format: "
            "cidr-global, range-global, cidr-<namespace>, range-<namespace>). When it exists, "
            "Services may only claim addresses in their namespace's pools."
        ),
    )
    allocation: bool = field(
        default=True,
        metadata=_doc(
            "Give LoadBalancer Services that ask for no address the lowest free address of "
            "their pools (one agent at a time, through a Lease). Off: leave that to "
            "kube-vip-cloud-provider."
        ),
    )
    templates: str | None = field(
        default=None,
        metadata=_doc("Directory with your own copies of keepalived.conf.j2 / haproxy.cfg.j2."),
    )
    # --- VRRP ------------------------------------------------------------
    vrrp_version: int = field(
        default=3,
        metadata=_doc(
            "VRRP version 2 or 3. 3 allows sub-second advert_int and IPv6; 2 allows auth_pass. "
            "IPv6 instances always use 3."
        ),
    )
    advert_int: float = field(
        default=1.0,
        metadata=_doc("VRRP advertisement interval in seconds (integer with VRRPv2)."),
    )
    unicast: bool = field(
        default=False,
        metadata=_doc("Send VRRP adverts unicast to the other eligible nodes, not multicast."),
    )
    unicast_peers: tuple[str, ...] = field(
        default=(),
        metadata=_doc("Static unicast peer addresses, used when no Node objects are known."),
    )
    auth_pass: str | None = field(
        default=None,
        metadata=_doc("VRRPv2 PASS authentication (1-8 characters); never logged.", secret=True),
    )
    spread: bool = field(
        default=False,
        metadata=_doc(
            "One VRRP instance per service VIP, preferred owner spread across nodes, instead of "
            "one instance per address family holding every service VIP."
        ),
    )
    virtual_router_id: int = field(
        default=52,
        metadata=_doc("virtual_router_id of the shared service instance (spread off)."),
    )
    virtual_router_id_range: str = field(
        default="1-255",
        metadata=_doc(
            "Range of virtual_router_ids hashed to per-VIP instances (spread on); the two fixed "
            "ids above are never used for them."
        ),
    )
    track_interfaces: tuple[str, ...] = field(
        default=(),
        metadata=_doc("Extra interfaces whose failure puts the instances in FAULT."),
    )
    garp_master_delay: int = field(
        default=5,
        metadata=_doc("Seconds after becoming MASTER to send the second gratuitous ARP burst."),
    )
    garp_master_refresh: int = field(
        default=5,
        metadata=_doc(
            "While MASTER, announce the VIPs again (gratuitous ARP, unsolicited NA) every this "
            "many seconds; 0: never. After a partition heals, the master that stays may send "
            "nothing, and clients keep the other node's MAC until their ARP entry expires "
            "(up to a minute); kube-vip re-announces every 3 s."
        ),
    )
    # --- IPVS ------------------------------------------------------------
    scheduler: str = field(
        default="rr",
        metadata=_doc(
            "Default IPVS scheduler (lb_algo); per Service: annotation vip-agent.io/scheduler."
        ),
    )
    real_server_check: str = field(
        default="tcp",
        metadata=_doc(
            "Check keepalived runs on TCP real servers: tcp or none. UDP and SCTP real servers "
            "get none (endpoint readiness already filters them)."
        ),
    )
    check_interval: int = field(
        default=5,
        metadata=_doc("Seconds between real-server checks (delay_loop)."),
    )
    # --- control plane ---------------------------------------------------
    control_plane_vip: str | None = field(
        default=None,
        metadata=_doc("The control-plane VIP (kubeadm --control-plane-endpoint); unset: none."),
    )
    control_plane_port: int = field(
        default=8443,
        metadata=_doc("haproxy frontend port on the control-plane VIP."),
    )
    control_plane_backend_port: int = field(
        default=6443,
        metadata=_doc("apiserver port on each control-plane node."),
    )
    control_plane_backends: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "Static apiserver backends, ADDRESS or NAME=ADDRESS; empty: the control-plane Nodes."
        ),
    )
    control_plane_virtual_router_id: int = field(
        default=51,
        metadata=_doc("virtual_router_id of the control-plane instance."),
    )
    apiserver_ca_file: str | None = field(
        default=None,
        metadata=_doc(
            "CA bundle haproxy verifies the apiservers' /readyz certificate with; unset: no "
            "verification (the check still needs TLS and HTTP 200)."
        ),
    )
    apiserver_url: str = field(
        default="https://127.0.0.1:6443/readyz",
        metadata=_doc("The local apiserver's health endpoint the prober and check-apiserver GET."),
    )
    apiserver_client_cert: str | None = field(
        default=None, metadata=_doc("Client certificate for the apiserver health check.")
    )
    apiserver_client_key: str | None = field(
        default=None, metadata=_doc("Key of apiserver_client_cert.")
    )
    apiserver_token_file: str | None = field(
        default=None,
        metadata=_doc("File holding a bearer token for the health check; never logged."),
    )
    health_interval: float = field(
        default=0.1, metadata=_doc("Seconds between two apiserver probes.")
    )
    health_timeout: float = field(
        default=0.5, metadata=_doc("A probe without an answer within this many seconds fails.")
    )
    health_fall: int = field(
        default=2, metadata=_doc("Consecutive failed probes before the apiserver counts as down.")
    )
    health_rise: int = field(
        default=3, metadata=_doc("Consecutive good probes before it counts as up again.")
    )
    control_plane_advert_int: float | None = field(
        default=None,
        metadata=_doc(
            "advert_int of the control-plane instance; default 0.1 s with VRRPv3 (a dead or "
            "demoted master is replaced in about 0.35 s), 1 s with VRRPv2."
        ),
    )
    control_plane_garp_master_refresh: int = field(
        default=1,
        metadata=_doc(
            "garp_master_refresh of the control-plane instance: one address, which every "
            "kubelet needs back within a second after a partition heals."
        ),
    )
    health_file: str = field(
        default="/run/vip-agent/apiserver.health",
        metadata=_doc("keepalived track_file the apiserver prober writes (0 healthy, 1 failing)."),
    )
    health_mode: str = field(
        default="weight",
        metadata=_doc(
            "What a failing apiserver does to the control-plane instance: weight (lower the "
            "priority below every healthy node; if all fail, one node still holds the VIP) "
            "or fault (drop the VIP; if all fail, no node holds it)."
        ),
    )
    # --- haproxy ---------------------------------------------------------
    haproxy_stats_socket: str = field(
        default="/run/vip-agent/haproxy.sock",
        metadata=_doc("haproxy admin socket (expose-fd listeners, used for seamless reloads)."),
    )
    haproxy_hard_stop_after: int = field(
        default=900,
        metadata=_doc("Seconds an old haproxy worker may drain connections after a reload."),
    )
    vrrp_notify_fifo: str | None = field(
        default="/run/vip-agent/vrrp.fifo",
        metadata=_doc("FIFO keepalived writes VRRP state changes to; unset: none."),
    )
    # --- run -------------------------------------------------------------
    manifests: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "Read cluster objects from these YAML/JSON files, directories or - (stdin) instead "
            "of an API server; vip-agent run watches them for edits."
        ),
    )
    run_dir: str = field(
        default="/run/vip-agent",
        metadata=_doc("Pidfiles and sockets of the supervised daemons."),
    )
    keepalived_binary: str = field(default="keepalived", metadata=_doc("keepalived to run."))
    haproxy_binary: str = field(default="haproxy", metadata=_doc("haproxy to run."))
    keepalived_reload_interval: float = field(
        default=1.0,
        metadata=_doc(
            "Least seconds between two keepalived reloads; changes in between are applied "
            "together when it has passed (the last one always lands)."
        ),
    )
    coalesce_seconds: float = field(
        default=0.1,
        metadata=_doc("Events within this window after the first are rendered together."),
    )
    keepalived_config: str = field(
        default="/etc/keepalived/keepalived.conf",
        metadata=_doc("Where vip-agent run writes keepalived.conf."),
    )
    haproxy_config: str = field(
        default="/etc/haproxy/haproxy.cfg",
        metadata=_doc("Where vip-agent run writes haproxy.cfg."),
    )
    daemons: str = field(
        default="supervise",
        metadata=_doc("Who runs keepalived and haproxy: supervise, systemd or none."),
    )
    metrics_address: str = field(
        default="0.0.0.0:9808",
        metadata=_doc("HOST:PORT for Prometheus metrics, /healthz and /readyz."),
    )
    log_format: str = field(
        default="text",
        metadata=_doc("Log lines as key=value text or json."),
    )

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def cp_advert_int(self) -> float:
        if self.control_plane_advert_int is not None:
            return self.control_plane_advert_int
        # a backup takes over after 3 adverts + skew: 0.1 s keeps a failover under a second
        return 0.1 if self.vrrp_version == 3 else 1.0

    @property
    def configmap_ref(self) -> tuple[str, str]:
        namespace, _, name = self.configmap.partition("/")
        return namespace, name

    @property
    def pool_configmap_ref(self) -> tuple[str, str]:
        namespace, _, name = self.pool_configmap.partition("/")
        return namespace, name

    @functools.cached_property
    def hashed_vrids(self) -> tuple[int, ...]:
        """The ids per-VIP instances are hashed into: the range less the two fixed ids."""
        low, _, high = self.virtual_router_id_range.partition("-")
        fixed = {self.virtual_router_id, self.control_plane_virtual_router_id}
        return tuple(i for i in range(int(low), int(high) + 1) if i not in fixed)

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict with secrets replaced, safe to log."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = "<redacted>" if f.metadata.get("secret") and value else value
        return out


def fields() -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(Settings)


def _fail(name: str, value: object, why: str) -> typing.NoReturn:
    shown = "<redacted>" if name == "auth_pass" else repr(value)
    raise SettingsError(f"setting {name}={shown}: {why}")


def _check_ip(name: str, value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        _fail(name, value, "not an IP address")


def _validate(s: Settings) -> None:
    if s.vrrp_version not in (2, 3):
        _fail("vrrp_version", s.vrrp_version, "must be 2 or 3")
    if s.vrrp_version == 2 and s.advert_int != int(s.advert_int):
        _fail("advert_int", s.advert_int, "VRRPv2 needs whole seconds; use vrrp_version 3")
    if not 0.01 <= s.advert_int <= 255:
        _fail("advert_int", s.advert_int, "must be between 0.01 and 255 seconds")
    if s.auth_pass is not None:
        if not _AUTH_PASS.match(s.auth_pass):
            _fail("auth_pass", s.auth_pass, "1-8 characters from [A-Za-z0-9_.,+=/-]")
        if s.vrrp_version != 2:
            _fail("auth_pass", s.auth_pass, "VRRPv3 has no authentication; set vrrp_version 2")
    for name in ("interface",):
        value = getattr(s, name)
        if value is not None and not IFNAME.match(value):
            _fail(name, value, "not a Linux interface name")
    for ifname in s.track_interfaces:
        if not IFNAME.match(ifname):
            _fail("track_interfaces", ifname, "not a Linux interface name")
    for ref_name in ("configmap", "pool_configmap"):
        namespace, _, name = getattr(s, ref_name).partition("/")
        if not (DNS_LABEL.match(namespace) and DNS_SUBDOMAIN.match(name)):
            _fail(ref_name, getattr(s, ref_name), "expected NAMESPACE/NAME")
    low, sep, high = s.virtual_router_id_range.partition("-")
    if not (sep and low.isdigit() and high.isdigit() and 1 <= int(low) < int(high) <= 255):
        _fail("virtual_router_id_range", s.virtual_router_id_range, "expected LOW-HIGH in 1-255")
    for name in ("virtual_router_id", "control_plane_virtual_router_id"):
        value = getattr(s, name)
        if not 1 <= value <= 255:
            _fail(name, value, "must be 1-255")
    if s.virtual_router_id == s.control_plane_virtual_router_id:
        _fail("virtual_router_id", s.virtual_router_id, "same as control_plane_virtual_router_id")
    if s.scheduler not in SCHEDULERS:
        _fail("scheduler", s.scheduler, f"one of {', '.join(sorted(SCHEDULERS))}")
    if s.real_server_check not in ("tcp", "none"):
        _fail("real_server_check", s.real_server_check, "tcp or none")
    if not 1 <= s.check_interval <= 3600:
        _fail("check_interval", s.check_interval, "1-3600 seconds")
    if not 0 <= s.garp_master_delay <= 255:
        _fail("garp_master_delay", s.garp_master_delay, "0-255 seconds")
    for name in ("garp_master_refresh", "control_plane_garp_master_refresh"):
        if not 0 <= getattr(s, name) <= 86400:
            _fail(name, getattr(s, name), "0-86400 seconds")
    for name in ("control_plane_port", "control_plane_backend_port"):
        if not 1 <= getattr(s, name) <= 65535:
            _fail(name, getattr(s, name), "not a port (1-65535)")
    if s.control_plane_vip is not None:
        _check_ip("control_plane_vip", s.control_plane_vip)
    if s.node_address is not None:
        _check_ip("node_address", s.node_address)
    for peer in s.unicast_peers:
        _check_ip("unicast_peers", peer)
    for backend in s.control_plane_backends:
        bname, eq, addr = backend.rpartition("=")
        if eq and not DNS_SUBDOMAIN.match(bname):
            _fail("control_plane_backends", backend, "NAME must be a DNS name")
        _check_ip("control_plane_backends", addr)
    for name in (
        "health_file",
        "haproxy_stats_socket",
        "apiserver_ca_file",
        "vrrp_notify_fifo",
        "apiserver_client_cert",
        "apiserver_client_key",
        "apiserver_token_file",
    ):
        value = getattr(s, name)
        if value is not None and not _PATH.match(value):
            _fail(name, value, "must be an absolute path of [A-Za-z0-9_./@+-]")
    if s.health_mode not in ("weight", "fault"):
        _fail("health_mode", s.health_mode, "weight or fault")
    if not 0 <= s.haproxy_hard_stop_after <= 86400:
        _fail("haproxy_hard_stop_after", s.haproxy_hard_stop_after, "0-86400 seconds")
    if s.daemons not in ("supervise", "systemd", "none"):
        _fail("daemons", s.daemons, "supervise, systemd or none")
    if not 0.01 <= s.health_interval <= 60:
        _fail("health_interval", s.health_interval, "0.01-60 seconds")
    if not 0.01 <= s.health_timeout <= 60:
        _fail("health_timeout", s.health_timeout, "0.01-60 seconds")
    for name in ("health_fall", "health_rise"):
        if not 1 <= getattr(s, name) <= 100:
            _fail(name, getattr(s, name), "1-100")
    if not s.apiserver_url.startswith("https://"):
        _fail("apiserver_url", s.apiserver_url, "must be https://HOST[:PORT]/PATH")
    cp_advert = s.cp_advert_int
    if s.vrrp_version == 2 and cp_advert != int(cp_advert):
        _fail("control_plane_advert_int", cp_advert, "VRRPv2 needs whole seconds")
    if not 0.01 <= cp_advert <= 255:
        _fail("control_plane_advert_int", cp_advert, "0.01-255 seconds")
    if not 0 <= s.keepalived_reload_interval <= 300:
        _fail("keepalived_reload_interval", s.keepalived_reload_interval, "0-300 seconds")
    if not 0 <= s.coalesce_seconds <= 60:
        _fail("coalesce_seconds", s.coalesce_seconds, "0-60 seconds")
    if not _PATH.match(s.run_dir):
        _fail("run_dir", s.run_dir, "must be an absolute path of [A-Za-z0-9_./@+-]")
    if s.log_format not in ("text", "json"):
        _fail("log_format", s.log_format, "text or json")
    _host, sep, port = s.metrics_address.rpartition(":")
    if not (sep and port.isdigit() and 0 <= int(port) <= 65535):
        _fail("metrics_address", s.metrics_address, "expected HOST:PORT")
    for selector_name in ("node_selector", "control_plane_selector"):
        try:
            parse_selector(getattr(s, selector_name))
        except ValueError as err:
            _fail(selector_name, getattr(s, selector_name), str(err))


Requirement = tuple[str, str, str]
"""(key, operator, value): operator is '=', '!=', 'exists' or '!exists'."""


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


def selector_matches(selector: tuple[Requirement, ...], labels: Mapping[str, str]) -> bool:
    for key, op, value in selector:
        if op == "exists" and key not in labels:
            return False
        if op == "!exists" and key in labels:
            return False
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
    return True


# --- loading ------------------------------------------------------------------


@functools.cache
def _type_hints() -> dict[str, Any]:
    # evaluating every annotation is slow; the CLI asks once per option of every command
    return typing.get_type_hints(Settings)


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(scalar type, is_tuple) of a field annotation such as ``tuple[str, ...]``."""
    hint = annotation
    if isinstance(annotation, str):
        hint = _type_hints()[annotation]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], True
    return hint, False


def field_type(name: str) -> tuple[type, bool]:
    return _base_type(name)


def _coerce(name: str, raw: object, source: str) -> object:
    scalar, is_tuple = _base_type(name)
    try:
        if is_tuple:
            items: list[object]
            if isinstance(raw, str):
                items = [part.strip() for part in raw.split(",") if part.strip()]
            elif isinstance(raw, list | tuple):
                items = list(raw)
            else:
                raise ValueError("expected a list")
            return tuple(_scalar(scalar, item) for item in items)
        if raw is None:
            return None
        return _scalar(scalar, raw)
    except (TypeError, ValueError) as err:
        raise SettingsError(f"setting {name} from {source}: {err}") from None


def _scalar(kind: type, raw: object) -> object:
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{raw!r} is not a boolean")
    if kind is int:
        if isinstance(raw, bool):
            raise ValueError(f"{raw!r} is not an integer")
        return int(str(raw).strip())
    if kind is float:
        if isinstance(raw, bool):
            raise ValueError(f"{raw!r} is not a number")
        return float(str(raw).strip())
    if isinstance(raw, dict | list):
        raise ValueError(f"{raw!r} is not a string")
    return str(raw)


def load_file(path: str | Path) -> dict[str, object]:
    """Read a ``--config`` YAML file: a mapping of setting names (snake or kebab case)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise SettingsError(f"config file {path}: {err.strerror}") from None
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

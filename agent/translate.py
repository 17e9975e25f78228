"""Pure translation: cluster snapshot + this node + settings -> DesiredState.

Nothing here reads the clock, the environment, the network or a file: the
same snapshot and settings give the same DesiredState, byte for byte once
rendered, on every node and in every dry run.

Where VIPs come from
  * the vip-configmap (keepalived-vip format): key = VIP, value =
    ``namespace/service[:NAT|DR|TUN|PROXY]`` (NAT when absent) or empty (a VIP
    with no virtual servers).  ConfigMap keys cannot hold ':', so an IPv6 VIP
    is written with '-' for ':' (``2001-db8--50`` is ``2001:db8::50``).
  * Services of type LoadBalancer: ``kube-vip.io/loadbalancerIPs`` (comma
    separated) or else ``spec.loadBalancerIP``.  Such a VIP is announced only
    (kube-proxy forwards it, as under kube-vip) unless the Service asks for
    keepalived forwarding with ``vip-agent.io/method: NAT|DR|TUN|PROXY``.
  * the control-plane VIP from settings, with haproxy in front of the apiservers.

VRRP layout, and why it is stable
  * virtual_router_id: the control-plane instance and the shared service
    instance use fixed ids from settings.  With ``spread`` each service VIP
    gets an id hashed from the VIP alone into ``virtual_router_id_range``;
    two VIPs that hash alike share one instance.  An id therefore never
    depends on which other VIPs exist.
  * priority: per instance, each node's priority is a hash of (instance,
    node name) into 200..249 (rendezvous hashing).  It never depends on
    which other nodes exist, so a node joining or leaving moves no VIP
    except where the newcomer is preferred.  Equal priorities are broken by
    VRRP itself (higher primary address wins).  The highest-priority node is
    the preferred owner, so with ``spread`` owners spread across nodes.
  * no ``nopreempt``: a node whose apiserver check fails drops by 120 (to at
    most 129), below every healthy node, and the healthy one preempts.
    keepalived-vip's nopreempt + weighted check never moved the VIP.
  * ``externalTrafficPolicy: Local``: real servers are this node's ready
    endpoints only; with ``spread``, a node with none of them lowers its
    priority for that VIP by 50 (to 150..199) so a node with local endpoints
    holds it when one exists.
  * Only the lowest VIP of an instance is advertised; the others go in
    ``virtual_ipaddress_excluded``.  keepalived drops an advert whose
    address list differs from its own (``addr_list_err``), so nodes that
    briefly render different VIP sets during a rolling change would each
    become MASTER.  With one advertised address (and
    ``vrrp_skip_check_adv_addr``) they agree unless that one address itself
    changes.  It also lifts VRRP's 20-addresses-per-advert limit.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent import grammar
from agent.memo import IdentityMemo
from agent.model import (
    ApiserverProxy,
    DesiredState,
    HealthCheck,
    IPAddress,
    Method,
    Protocol,
    ProxyListener,
    ProxyServer,
    RealServer,
    Rejection,
    TrackFile,
    VirtualServer,
    VrrpInstance,
)
from agent.settings import Settings, parse_selector, selector_matches
from agent.snapshot import Key, Obj, Snapshot

ANNOTATION_LB_IPS = "kube-vip.io/loadbalancerIPs"
ANNOTATION_SCHEDULER = "vip-agent.io/scheduler"
ANNOTATION_METHOD = "vip-agent.io/method"

PRIORITY_BASE = 200
PRIORITY_SPAN = 50
LOCAL_PENALTY = 50
HEALTH_WEIGHT = -120
HEALTH_TRACK = "apiserver"
CLIENT_IP_TIMEOUT_DEFAULT = 10800


@dataclass(frozen=True)
class _Port:
    name: str
    port: int
    protocol: Protocol
    target: int | str


@dataclass(frozen=True)
class _Endpoint:
    address: IPAddress
    port: int
    node: str | None


@dataclass(frozen=True)
class _VipRequest:
    vip: IPAddress
    service: Key | None
    method: Method | None
    kind: str
    obj: str
    key: str


@dataclass(frozen=True)
class _Node:
    name: str
    addresses: tuple[IPAddress, ...]
    labels: Mapping[str, str]

    def address(self, family: int) -> IPAddress | None:
        return next((a for a in self.addresses if a.version == family), None)


class _Rejections:
    def __init__(self) -> None:
        self.items: list[Rejection] = []

    def add(self, kind: str, obj: str, key: str, reason: str) -> None:
        self.items.append(Rejection(kind=kind, obj=obj, key=key, reason=reason))


@functools.lru_cache(maxsize=65536)
def priority_for(node: str, instance: str) -> int:
    """Rendezvous priority of ``node`` for ``instance``: 200..249, independent of other nodes."""
    digest = hashlib.sha256(f"{instance}\0{node}".encode()).digest()
    return PRIORITY_BASE + int.from_bytes(digest[:8], "big") % PRIORITY_SPAN


def vrid_for(vip: IPAddress, ids: tuple[int, ...]) -> int:
    """The virtual_router_id of a per-VIP instance: a function of the VIP alone."""
    digest = hashlib.sha256(vip.packed).digest()
    return ids[int.from_bytes(digest[:8], "big") % len(ids)]


def parse_configmap_key(key: str) -> IPAddress:
    """A vip-configmap key: an IPv4 address, or IPv6 with '-' in place of ':'."""
    text = key.replace("-", ":") if "-" in key else key
    return grammar.parse_ip(text)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _meta(obj: Obj) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


# --- nodes ----------------------------------------------------------------------


def _nodes(snapshot: Snapshot, settings: Settings, rej: _Rejections) -> dict[str, _Node]:
    out: dict[str, _Node] = {}
    for name in sorted(snapshot.nodes):
        obj = snapshot.nodes[name]
        if not grammar.DNS_SUBDOMAIN.match(name):
            rej.add("Node", repr(name)[1:-1], "metadata.name", "not a valid node name")
            continue
        ranked: list[tuple[int, int, IPAddress]] = []
        for index, entry in enumerate(_list(_mapping(obj.get("status")).get("addresses"))):
            entry = _mapping(entry)
            kind = entry.get("type")
            if kind not in settings.node_address_types:
                continue
            try:
                address = grammar.parse_ip(entry.get("address"))
            except ValueError as err:
                rej.add("Node", name, f"status.addresses[{index}]", str(err))
                continue
            ranked.append((settings.node_address_types.index(kind), index, address))
        labels = {
            str(k): str(v) for k, v in _mapping(_meta(obj).get("labels")).items() if v is not None
        }
        addresses = tuple(dict.fromkeys(a for _, _, a in sorted(ranked)))
        out[name] = _Node(name=name, addresses=addresses, labels=labels)
    return out


# --- services and endpoints -----------------------------------------------------


def _service_ports(service: Obj, ref: str, rej: _Rejections) -> list[_Port]:
    ports: list[_Port] = []
    for index, raw in enumerate(_list(_mapping(service.get("spec")).get("ports"))):
        raw = _mapping(raw)
        key = f"spec.ports[{index}]"
        name = raw.get("name") or ""
        if not isinstance(name, str) or (name and not grammar.IANA_SVC_NAME.match(name)):
            rej.add("Service", ref, f"{key}.name", "not a valid port name")
            continue
        try:
            protocol = Protocol(raw.get("protocol") or "TCP")
        except ValueError:
            rej.add("Service", ref, f"{key}.protocol", "must be TCP, UDP or SCTP")
            continue
        try:
            port = grammar.parse_port(raw.get("port"))
        except ValueError as err:
            rej.add("Service", ref, f"{key}.port", str(err))
            continue
        target = raw.get("targetPort", port)
        if isinstance(target, str) and target.isdigit():
            target = int(target)
        if isinstance(target, str):
            if not grammar.IANA_SVC_NAME.match(target):
                rej.add("Service", ref, f"{key}.targetPort", "not a port number or port name")
                continue
        else:
            try:
                target = grammar.parse_port(target)
            except ValueError as err:
                rej.add("Service", ref, f"{key}.targetPort", str(err))
                continue
        ports.append(_Port(name=name, port=port, protocol=protocol, target=target))
    return ports


def _ready(conditions: Mapping[str, Any]) -> bool:
    # EndpointSlice API: a nil "ready" is unknown and consumers treat it as ready;
    # terminating endpoints are never served, whatever "ready" says.
    return conditions.get("ready") is not False and conditions.get("terminating") is not True


def _target_number(ports: object, port: _Port) -> object:
    """The endpoint port serving ``port``: the one with the Service port's name and
    protocol, as kube-proxy matches them (how a named targetPort is resolved)."""
    for entry in _list(ports):
        entry = _mapping(entry)
        if (entry.get("name") or "") == port.name and (
            entry.get("protocol") or "TCP"
        ) == port.protocol.value:
            return entry.get("port")
    return None


def _slice_endpoints(
    slices: Iterable[Obj], port: _Port, family: int | None, rej: _Rejections
) -> list[_Endpoint]:
    found: list[_Endpoint] = []
    for item in slices:
        slice_name = f"{_meta(item).get('namespace')}/{_meta(item).get('name')}"
        address_type = item.get("addressType")
        if address_type not in ("IPv4", "IPv6"):
            continue
        if family is not None and address_type != f"IPv{family}":
            continue
        number = _target_number(item.get("ports"), port)
        if number is None:
            continue
        try:
            number = grammar.parse_port(number)
        except ValueError as err:
            rej.add("EndpointSlice", slice_name, "ports.port", str(err))
            continue
        for index, ep in enumerate(_list(item.get("endpoints"))):
            ep = _mapping(ep)
            if not _ready(_mapping(ep.get("conditions"))):
                continue
            addresses = _list(ep.get("addresses"))
            if not addresses:
                continue
            try:
                # addresses of one endpoint are fungible; kube-proxy uses the first
                address = grammar.parse_ip(addresses[0])
            except ValueError as err:
                rej.add("EndpointSlice", slice_name, f"endpoints[{index}].addresses", str(err))
                continue
            if address.version != int(address_type[-1]):
                rej.add("EndpointSlice", slice_name, f"endpoints[{index}]", "wrong address family")
                continue
            found.append(_Endpoint(address, number, _str(ep.get("nodeName"))))
    return found


def _core_endpoints(
    endpoints: Obj, port: _Port, family: int | None, rej: _Rejections
) -> list[_Endpoint]:
    ref = f"{_meta(endpoints).get('namespace')}/{_meta(endpoints).get('name')}"
    found: list[_Endpoint] = []
    for s_index, subset in enumerate(_list(endpoints.get("subsets"))):
        subset = _mapping(subset)
        number = _target_number(subset.get("ports"), port)
        if number is None:
            continue
        try:
            number = grammar.parse_port(number)
        except ValueError as err:
            rej.add("Endpoints", ref, f"subsets[{s_index}].ports", str(err))
            continue
        # notReadyAddresses are left out on purpose: only ready endpoints serve
        for a_index, entry in enumerate(_list(subset.get("addresses"))):
            entry = _mapping(entry)
            try:
                address = grammar.parse_ip(entry.get("ip"))
            except ValueError as err:
                rej.add("Endpoints", ref, f"subsets[{s_index}].addresses[{a_index}].ip", str(err))
                continue
            if family is not None and address.version != family:
                continue
            found.append(_Endpoint(address, number, _str(entry.get("nodeName"))))
    return found


def _endpoint_objects(snapshot: Snapshot, service: Key) -> tuple[bool, tuple[Obj, ...]]:
    """What a Service's endpoints come from: (True, its slices), else (False, its
    core/v1 Endpoints), else (False, ())."""
    slices = snapshot.endpoint_slices.get(service)
    if slices:
        return True, tuple(slices)
    endpoints = snapshot.endpoints.get(service)
    return False, ((endpoints,) if endpoints is not None else ())


def _endpoints(
    from_slices: bool,
    objs: tuple[Obj, ...],
    port: _Port,
    family: int | None,
    rej: _Rejections,
) -> list[_Endpoint]:
    if from_slices:
        found = _slice_endpoints(objs, port, family, rej)
    elif objs:
        found = _core_endpoints(objs[0], port, family, rej)
    else:
        return []
    unique = {(e.address.version, int(e.address), e.port): e for e in found}
    return [unique[k] for k in sorted(unique)]


# --- VIP requests ---------------------------------------------------------------


def _configmap_requests(
    snapshot: Snapshot, settings: Settings, rej: _Rejections
) -> list[_VipRequest]:
    namespace, name = settings.configmap_ref
    cm = snapshot.configmaps.get((namespace, name))
    if cm is None:
        return []
    ref = f"{namespace}/{name}"
    data = cm.get("data") or {}
    if not isinstance(data, Mapping):
        rej.add("ConfigMap", ref, "data", "not a mapping")
        return []
    out: list[_VipRequest] = []
    for key in sorted(data, key=str):
        value = data[key]
        if not isinstance(key, str):
            rej.add("ConfigMap", ref, str(key), "key is not a string")
            continue
        try:
            vip = parse_configmap_key(key)
        except ValueError:
            rej.add("ConfigMap", ref, key, "not an IP address (IPv6: write '-' for ':')")
            continue
        if not isinstance(value, str):
            rej.add("ConfigMap", ref, key, "value is not a string")
            continue
        target, _, method_text = value.strip().partition(":")
        if not target:
            if method_text:
                rej.add("ConfigMap", ref, key, "a method needs a namespace/service")
                continue
            out.append(_VipRequest(vip, None, None, "ConfigMap", ref, key))
            continue
        svc_ns, slash, svc_name = target.partition("/")
        if (
            not slash
            or not grammar.DNS_LABEL.match(svc_ns)
            or not grammar.DNS_LABEL.match(svc_name)
        ):
            rej.add("ConfigMap", ref, key, "value must be namespace/service[:NAT|DR|TUN|PROXY]")
            continue
        try:
            method = Method(method_text.upper()) if method_text else Method.NAT
        except ValueError:
            rej.add("ConfigMap", ref, key, "method must be NAT, DR, TUN or PROXY")
            continue
        out.append(_VipRequest(vip, (svc_ns, svc_name), method, "ConfigMap", ref, key))
    return out


def _service_requests(snapshot: Snapshot, rej: _Rejections) -> list[_VipRequest]:
    out: list[_VipRequest] = []
    for key in sorted(snapshot.services):
        service = snapshot.services[key]
        spec = _mapping(service.get("spec"))
        if spec.get("type") != "LoadBalancer":
            continue
        namespace, name = key
        if not (grammar.DNS_LABEL.match(namespace) and grammar.DNS_LABEL.match(name)):
            rej.add("Service", repr(f"{namespace}/{name}")[1:-1], "metadata.name", "not valid")
            continue
        ref = f"{namespace}/{name}"
        annotations = _mapping(_meta(service).get("annotations"))
        method: Method | None = None
        if ANNOTATION_METHOD in annotations:
            try:
                method = Method(str(annotations[ANNOTATION_METHOD]).strip().upper())
            except ValueError:
                rej.add(
                    "Service", ref, f"annotations[{ANNOTATION_METHOD}]", "NAT, DR, TUN or PROXY"
                )
                continue
        if ANNOTATION_LB_IPS in annotations:
            raw = annotations[ANNOTATION_LB_IPS]
            texts = [t.strip() for t in raw.split(",")] if isinstance(raw, str) else [raw]
            source = f"annotations[{ANNOTATION_LB_IPS}]"
        elif spec.get("loadBalancerIP"):
            texts, source = [spec.get("loadBalancerIP")], "spec.loadBalancerIP"
        else:
            continue
        for text in texts:
            try:
                vip = grammar.parse_ip(text)
            except ValueError as err:
                rej.add("Service", ref, source, str(err))
                continue
            out.append(_VipRequest(vip, key, method, "Service", ref, source))
    return out


# --- forwarding -----------------------------------------------------------------


def _scheduler(service: Obj, ref: str, settings: Settings, rej: _Rejections) -> str:
    from agent.settings import SCHEDULERS

    raw = _mapping(_meta(service).get("annotations")).get(ANNOTATION_SCHEDULER)
    if raw is None:
        return settings.scheduler
    if isinstance(raw, str) and raw.strip() in SCHEDULERS:
        return raw.strip()
    rej.add(
        "Service",
        ref,
        f"annotations[{ANNOTATION_SCHEDULER}]",
        f"unknown scheduler; using {settings.scheduler}",
    )
    return settings.scheduler


def _persistence(service: Obj, ref: str, rej: _Rejections) -> int | None:
    spec = _mapping(service.get("spec"))
    if spec.get("sessionAffinity") != "ClientIP":
        return None
    timeout = (
        _mapping(_mapping(spec.get("sessionAffinityConfig")).get("clientIP")).get("timeoutSeconds")
        or CLIENT_IP_TIMEOUT_DEFAULT
    )
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= 86400:
        rej.add(
            "Service",
            ref,
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            f"must be 1-86400; using {CLIENT_IP_TIMEOUT_DEFAULT}",
        )
        return CLIENT_IP_TIMEOUT_DEFAULT
    return timeout


Slot = tuple[int, int, str, int]
"""(family, VIP as int, protocol, port): one virtual server or listener each."""


@dataclass
class _Forwarding:
    virtual_servers: dict[Slot, VirtualServer]
    listeners: dict[tuple[int, int, int], ProxyListener]
    local_vips: dict[IPAddress, bool]
    """For Local-policy VIPs: does this node have a ready endpoint of it?"""


@dataclass(frozen=True)
class _PortPlan:
    """What one Service port becomes for one VIP, if its VIP:port slot is still free."""

    slot: Slot
    where: str
    rejections: tuple[Rejection, ...]
    claims: bool
    """Takes the slot (a port rejected outright leaves it to a later request)."""
    virtual_server: VirtualServer | None = None
    listener: ProxyListener | None = None
    has_local: bool = False


@dataclass(frozen=True)
class _ForwardPlan:
    rejections: tuple[Rejection, ...]
    """Service-wide: scheduler, persistence, port list."""
    ports: tuple[_PortPlan, ...]
    local: bool


def _plan(
    request: _VipRequest,
    service: Obj,
    endpoint_objs: tuple[bool, tuple[Obj, ...]],
    settings: Settings,
    node_name: str,
) -> _ForwardPlan:
    """Everything about forwarding one request that depends on its objects alone: a
    pure function of them, so it is memoized on their identity; which VIP:port slots
    earlier requests took is settled when the plan is replayed (``_forward``)."""
    assert request.service is not None and request.method is not None
    svc_ref = "/".join(request.service)
    head = _Rejections()
    spec = _mapping(service.get("spec"))
    method = request.method
    vip = request.vip
    local = spec.get("externalTrafficPolicy") == "Local"
    scheduler = _scheduler(service, svc_ref, settings, head)
    persistence = _persistence(service, svc_ref, head)
    ports: list[_PortPlan] = []
    for port in _service_ports(service, svc_ref, head):
        where = f"{svc_ref}:{port.name or port.port}"
        slot = (vip.version, int(vip), port.protocol.value, port.port)
        rej = _Rejections()
        if method is Method.PROXY and port.protocol is not Protocol.TCP:
            rej.add("Service", svc_ref, f"port {port.name or port.port}", "PROXY is TCP only")
            ports.append(_PortPlan(slot, where, tuple(rej.items), claims=False))
            continue
        family = None if method is Method.PROXY else vip.version
        endpoints = _endpoints(*endpoint_objs, port, family, rej)
        if local:
            endpoints = [e for e in endpoints if e.node == node_name]
        has_local = bool(endpoints)
        # DR rewrites only the MAC and TUN encapsulates the packet as it is: neither can
        # change the destination port (keepalived would silently reset it to the VIP's).
        if method in (Method.DR, Method.TUN) and any(e.port != port.port for e in endpoints):
            rej.add(
                "Service",
                svc_ref,
                f"port {port.name or port.port}",
                f"{method.value} cannot change the port: targetPort must equal port",
            )
            ports.append(
                _PortPlan(slot, where, tuple(rej.items), claims=False, has_local=has_local)
            )
            continue
        listener: ProxyListener | None = None
        virtual_server: VirtualServer | None = None
        if method is Method.PROXY:
            servers = tuple(
                ProxyServer(
                    name=f"ep_{grammar.ip_token(e.address)}_{e.port}",
                    address=e.address,
                    port=e.port,
                )
                for e in endpoints
            )
            listener = ProxyListener(
                name=f"vip_{grammar.ip_token(vip)}_{port.port}",
                vip=vip,
                port=port.port,
                servers=servers,
                service=where,
            )
        elif endpoints:
            # without endpoints no virtual server at all: the holder's own stack answers
            # with a reset instead of IPVS silently dropping into an empty service
            check = (
                HealthCheck.TCP
                if port.protocol is Protocol.TCP and settings.real_server_check == "tcp"
                else HealthCheck.NONE
            )
            virtual_server = VirtualServer(
                vip=vip,
                port=port.port,
                protocol=port.protocol,
                method=method,
                scheduler=scheduler,
                persistence_timeout=persistence,
                health_check=check,
                delay_loop=settings.check_interval,
                real_servers=tuple(RealServer(address=e.address, port=e.port) for e in endpoints),
                service=where,
            )
        ports.append(
            _PortPlan(
                slot,
                where,
                tuple(rej.items),
                claims=True,
                virtual_server=virtual_server,
                listener=listener,
                has_local=has_local,
            )
        )
    return _ForwardPlan(tuple(head.items), tuple(ports), local)


_MEMO: IdentityMemo[_ForwardPlan] = IdentityMemo()
"""Forwarding plans of the last two translations (see agent.memo)."""


def _forward(
    request: _VipRequest,
    snapshot: Snapshot,
    settings: Settings,
    node_name: str,
    taken: set[Slot],
    out: _Forwarding,
    rej: _Rejections,
) -> None:
    assert request.service is not None and request.method is not None
    service = snapshot.services.get(request.service)
    svc_ref = "/".join(request.service)
    if service is None:
        rej.add(
            request.kind,
            request.obj,
            request.key,
            f"service {svc_ref} not found; VIP held without virtual servers",
        )
        return
    if _mapping(service.get("spec")).get("type") == "ExternalName":
        rej.add(request.kind, request.obj, request.key, f"service {svc_ref} is ExternalName")
        return
    from_slices, objs = endpoint_objs = _endpoint_objects(snapshot, request.service)
    vip = request.vip
    # the VIP as (family, int): an IPAddress hashes through hex()
    key = (vip.version, int(vip), request.method, request.service, from_slices, node_name)
    plan = _MEMO.get(
        (settings, service, *objs),
        key,
        lambda: _plan(request, service, endpoint_objs, settings, node_name),
    )
    rej.items.extend(plan.rejections)
    has_local = False
    for port in plan.ports:
        if port.slot in taken:
            rej.add(
                request.kind,
                request.obj,
                request.key,
                f"{request.vip} {port.slot[2]}/{port.slot[3]} already used; {port.where} skipped",
            )
            continue
        rej.items.extend(port.rejections)
        has_local = has_local or port.has_local
        if not port.claims:
            continue
        taken.add(port.slot)
        if port.listener is not None:
            out.listeners[port.slot[0], port.slot[1], port.slot[3]] = port.listener
        if port.virtual_server is not None:
            out.virtual_servers[port.slot] = port.virtual_server
    if plan.local:
        out.local_vips[vip] = out.local_vips.get(vip, False) or has_local


# --- VRRP -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Unicast:
    """This node's source address and its peers for one address family."""

    src: IPAddress | None
    peers: tuple[IPAddress, ...]


def _unicast(
    settings: Settings,
    node_name: str,
    me: _Node | None,
    nodes: Mapping[str, _Node],
    eligible: Iterable[str],
    family: int,
) -> _Unicast:
    if not settings.unicast:
        return _Unicast(None, ())
    src: IPAddress | None = None
    if me is not None:
        src = me.address(family)
    elif settings.node_address is not None:
        configured = ipaddress.ip_address(settings.node_address)
        src = configured if configured.version == family else None
    found = {nodes[n].address(family) for n in eligible if n != node_name}
    static = {
        a
        for a in (ipaddress.ip_address(p) for p in settings.unicast_peers)
        if a.version == family and a != src
    }
    peers = {a for a in found if a is not None} | static
    return _Unicast(src, tuple(sorted(peers, key=int)))


def _instance(
    *,
    name: str,
    vrid: int,
    family: int,
    vips: Iterable[IPAddress],
    settings: Settings,
    interface: str,
    node_name: str,
    unicast: _Unicast,
    penalty: int = 0,
    track_file: str | None = None,
    owners: tuple[str, ...] = (),
    advert_int: float | None = None,
    garp_master_refresh: int | None = None,
) -> VrrpInstance:
    version = 3 if family == 6 else settings.vrrp_version
    ordered = tuple(sorted(set(vips), key=int))
    return VrrpInstance(
        name=name,
        family=family,
        interface=interface,
        virtual_router_id=vrid,
        priority=priority_for(node_name, name) - penalty,
        advert_int=settings.advert_int if advert_int is None else advert_int,
        version=version,
        vips=ordered[:1],
        excluded_vips=ordered[1:],
        unicast_src=unicast.src,
        unicast_peers=unicast.peers,
        track_interfaces=tuple(sorted(set(settings.track_interfaces) - {interface})),
        track_file=track_file,
        auth_pass=settings.auth_pass if version == 2 else None,
        garp_master_delay=settings.garp_master_delay,
        garp_master_refresh=(
            settings.garp_master_refresh if garp_master_refresh is None else garp_master_refresh
        ),
        owners=owners,
    )


def translate(
    snapshot: Snapshot, settings: Settings, *, node_name: str, interface: str
) -> DesiredState:
    """Everything this node should run, plus every input that was rejected and why."""
    _MEMO.turn()
    rej = _Rejections()
    nodes = _nodes(snapshot, settings, rej)
    me = nodes.get(node_name)
    if snapshot.nodes_known and me is None:
        rej.add("Node", node_name, "", "this node is not in the cluster; holding no service VIPs")
    service_selector = parse_selector(settings.node_selector)
    cp_selector = parse_selector(settings.control_plane_selector)
    service_nodes = [n for n, v in nodes.items() if selector_matches(service_selector, v.labels)]
    cp_nodes = [n for n, v in nodes.items() if selector_matches(cp_selector, v.labels)]
    serves_services = (me is not None and me.name in service_nodes) or not snapshot.nodes_known
    serves_cp = (me is not None and me.name in cp_nodes) or not snapshot.nodes_known

    cp_vip = (
        ipaddress.ip_address(settings.control_plane_vip) if settings.control_plane_vip else None
    )
    requests = _configmap_requests(snapshot, settings, rej) + _service_requests(snapshot, rej)
    forwarding = _Forwarding(virtual_servers={}, listeners={}, local_vips={})
    taken: set[Slot] = set()
    if cp_vip is not None:
        taken.add((cp_vip.version, int(cp_vip), Protocol.TCP.value, settings.control_plane_port))
    service_vips: dict[IPAddress, list[str]] = {}
    for request in requests:
        if request.vip == cp_vip:
            rej.add(request.kind, request.obj, request.key, "is the control-plane VIP")
            continue
        if request.vip.is_loopback or request.vip.is_multicast or request.vip.is_unspecified:
            rej.add(request.kind, request.obj, request.key, "not a usable VIP")
            continue
        owner = f"{request.kind} {request.obj}"
        service_vips.setdefault(request.vip, [])
        if owner not in service_vips[request.vip]:
            service_vips[request.vip].append(owner)
        if request.service is not None and request.method is not None:
            _forward(request, snapshot, settings, node_name, taken, forwarding, rej)

    instances: list[VrrpInstance] = []
    track_files: list[TrackFile] = []
    apiserver: ApiserverProxy | None = None
    if cp_vip is not None and serves_cp:
        track_files.append(
            TrackFile(
                name=HEALTH_TRACK,
                path=settings.health_file,
                weight=0 if settings.health_mode == "fault" else HEALTH_WEIGHT,
            )
        )
        instances.append(
            _instance(
                name="control_plane",
                vrid=settings.control_plane_virtual_router_id,
                family=cp_vip.version,
                vips=[cp_vip],
                settings=settings,
                interface=interface,
                node_name=node_name,
                unicast=_unicast(settings, node_name, me, nodes, cp_nodes, cp_vip.version),
                track_file=HEALTH_TRACK,
                owners=("settings control_plane_vip",),
                advert_int=settings.cp_advert_int,
                garp_master_refresh=settings.control_plane_garp_master_refresh,
            )
        )
        apiserver = _apiserver(settings, cp_vip, nodes, cp_nodes, rej)

    if serves_services:
        instances.extend(
            _service_instances(
                service_vips,
                forwarding.local_vips,
                settings,
                interface,
                node_name,
                me,
                nodes,
                service_nodes,
            )
        )
    if not serves_services:
        forwarding.virtual_servers.clear()
        forwarding.listeners.clear()

    return DesiredState(
        router_id=node_name,
        instances=tuple(instances),
        virtual_servers=tuple(
            forwarding.virtual_servers[k] for k in sorted(forwarding.virtual_servers)
        ),
        listeners=tuple(forwarding.listeners[k] for k in sorted(forwarding.listeners)),
        apiserver=apiserver,
        track_files=tuple(track_files),
        haproxy_stats_socket=settings.haproxy_stats_socket,
        haproxy_hard_stop_after_s=settings.haproxy_hard_stop_after,
        notify_fifo=settings.vrrp_notify_fifo,
        rejections=tuple(rej.items),
    )


def _service_instances(
    service_vips: Mapping[IPAddress, list[str]],
    local_vips: Mapping[IPAddress, bool],
    settings: Settings,
    interface: str,
    node_name: str,
    me: _Node | None,
    nodes: Mapping[str, _Node],
    eligible: list[str],
) -> list[VrrpInstance]:
    out: list[VrrpInstance] = []
    for family in (4, 6):
        vips = sorted((v for v in service_vips if v.version == family), key=int)
        if not vips:
            continue
        common: dict[str, Any] = {
            "settings": settings,
            "interface": interface,
            "node_name": node_name,
            "unicast": _unicast(settings, node_name, me, nodes, eligible, family),
        }
        if not settings.spread:
            owners = tuple(sorted({o for v in vips for o in service_vips[v]}))
            out.append(
                _instance(
                    name=f"services_v{family}",
                    vrid=settings.virtual_router_id,
                    family=family,
                    vips=vips,
                    owners=owners,
                    **common,
                )
            )
            continue
        groups: dict[int, list[IPAddress]] = {}
        for vip in vips:
            groups.setdefault(vrid_for(vip, settings.hashed_vrids), []).append(vip)
        for vrid in sorted(groups):
            members = groups[vrid]
            # Local policy: prefer a node that has a local endpoint for every member
            lacking = any(not local_vips.get(v, True) for v in members)
            owners = tuple(sorted({o for v in members for o in service_vips[v]}))
            out.append(
                _instance(
                    name=f"vip_v{family}_{vrid}",
                    vrid=vrid,
                    family=family,
                    vips=members,
                    penalty=LOCAL_PENALTY if lacking else 0,
                    owners=owners,
                    **common,
                )
            )
    return out


def _apiserver(
    settings: Settings,
    vip: IPAddress,
    nodes: Mapping[str, _Node],
    cp_nodes: list[str],
    rej: _Rejections,
) -> ApiserverProxy:
    servers: list[ProxyServer] = []
    if settings.control_plane_backends:
        for backend in settings.control_plane_backends:
            name, _, text = backend.rpartition("=")
            address = ipaddress.ip_address(text)
            servers.append(
                ProxyServer(
                    name=name or f"apiserver_{grammar.ip_token(address)}",
                    address=address,
                    port=settings.control_plane_backend_port,
                )
            )
    else:
        for name in cp_nodes:
            node = nodes[name]
            found = node.address(vip.version) or (node.addresses[0] if node.addresses else None)
            if found is None:
                rej.add("Node", name, "status.addresses", "no address for the apiserver backend")
                continue
            servers.append(
                ProxyServer(name=name, address=found, port=settings.control_plane_backend_port)
            )
    return ApiserverProxy(
        vip=vip,
        port=settings.control_plane_port,
        servers=tuple(sorted(servers, key=lambda s: (s.name, s.address.version, int(s.address)))),
        verify=settings.apiserver_ca_file is not None,
        ca_file=settings.apiserver_ca_file,
        # a failing apiserver leaves rotation within inter + fastinter (0.7 s); a
        # recovered one returns after two good checks 500 ms apart
        check_inter_ms=500,
        check_fastinter_ms=200,
        check_downinter_ms=500,
        check_fall=2,
        check_rise=2,
    )

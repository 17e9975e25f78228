"""Forwarding: what each VIP request becomes (IPVS virtual servers, haproxy listeners).

A request's plan depends on its Service and endpoint objects alone, so it is memoized
on their identity (:class:`Plans`, held by the caller's
:class:`agent.core.translate.passes.PlanMemo`); which VIP:port slots earlier requests
took is settled when the plan is replayed (:func:`replay`), first come first served.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from agent.core import grammar
from agent.core.memo import IdentityMemo
from agent.core.model import (
    HealthCheck,
    IPAddress,
    Method,
    Protocol,
    ProxyListener,
    ProxyServer,
    RealServer,
    Reason,
    Rejection,
    VirtualServer,
)
from agent.core.snapshot import Obj, Snapshot
from agent.core.translate.common import Rejections, as_mapping, meta_of
from agent.core.translate.endpoints import (
    Endpoint,
    Port,
    endpoint_objects,
    endpoints_for,
    service_ports,
)
from agent.core.translate.requests import VipRequest
from agent.settings import SCHEDULERS, RealServerCheck, Settings

ANNOTATION_SCHEDULER = "vip-agent.io/scheduler"
CLIENT_IP_TIMEOUT_DEFAULT = 10800


def _scheduler(service: Obj, ref: str, *, settings: Settings, rej: Rejections) -> str:
    raw = as_mapping(meta_of(service).get("annotations")).get(ANNOTATION_SCHEDULER)
    if raw is None:
        return settings.scheduler
    if isinstance(raw, str) and raw.strip() in SCHEDULERS:
        return raw.strip()
    rej.add(
        Reason.BAD_SCHEDULER,
        kind="Service",
        obj=ref,
        key=f"annotations[{ANNOTATION_SCHEDULER}]",
        reason=f"unknown scheduler; using {settings.scheduler}",
    )
    return settings.scheduler


def _persistence(service: Obj, ref: str, *, rej: Rejections) -> int | None:
    spec = as_mapping(service.get("spec"))
    if spec.get("sessionAffinity") != "ClientIP":
        return None
    timeout = (
        as_mapping(as_mapping(spec.get("sessionAffinityConfig")).get("clientIP")).get(
            "timeoutSeconds"
        )
        or CLIENT_IP_TIMEOUT_DEFAULT
    )
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= 86400:
        rej.add(
            Reason.BAD_TIMEOUT,
            kind="Service",
            obj=ref,
            key="spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            reason=f"must be 1-86400; using {CLIENT_IP_TIMEOUT_DEFAULT}",
        )
        return CLIENT_IP_TIMEOUT_DEFAULT
    return timeout


Slot = tuple[int, int, str, int]
"""(family, VIP as int, protocol, port): one virtual server or listener each."""


@dataclass
class Forwarding:
    virtual_servers: dict[Slot, VirtualServer]
    listeners: dict[tuple[int, int, int], ProxyListener]
    local_vips: dict[IPAddress, bool]
    """For Local-policy VIPs: does this node have a ready endpoint of it?"""


class PortPlan(NamedTuple):
    """What one Service port becomes for one VIP, if its VIP:port slot is still free.

    This and the other per-request records are tuples: a cold pass makes one for every
    Service port, and a frozen dataclass costs several times as much to make."""

    slot: Slot
    where: str
    rejections: tuple[Rejection, ...]
    claims: bool
    """Takes the slot (a port rejected outright leaves it to a later request)."""
    virtual_server: VirtualServer | None = None
    listener: ProxyListener | None = None
    has_local: bool = False


class ForwardPlan(NamedTuple):
    rejections: tuple[Rejection, ...]
    """Service-wide: scheduler, persistence, port list."""
    ports: tuple[PortPlan, ...]
    local: bool
    servers: frozenset[IPAddress] = frozenset()
    """Every real server and haproxy server address the plan forwards to."""
    slots: frozenset[Slot] = frozenset()
    """Every slot of its ports."""
    claims: frozenset[Slot] = frozenset()
    """The slots of the ports that claim theirs (the same set when all do)."""
    vips_left_out: bool = False
    """Made with VIPs to leave out of the endpoints (one of them was one): another set
    of VIPs may give another plan."""


class _Context(NamedTuple):
    """What every port of one request shares while its plan is made."""

    request: VipRequest
    method: Method
    svc_ref: str
    endpoint_objs: tuple[bool, tuple[Obj, ...]]
    vips: frozenset[IPAddress]
    local: bool
    scheduler: str
    persistence: int | None
    settings: Settings
    node_name: str


def make_plan(
    request: VipRequest,
    *,
    service: Obj,
    endpoint_objs: tuple[bool, tuple[Obj, ...]],
    settings: Settings,
    node_name: str,
    vips: frozenset[IPAddress] = frozenset(),
) -> ForwardPlan:
    """Everything about forwarding one request that depends on its objects alone: a
    pure function of them, so it is memoized on their identity; which VIP:port slots
    earlier requests took is settled when the plan is replayed (``forward``).

    Endpoints that are themselves ``vips`` are left out; memoized plans are made with
    none, and ``forward`` makes the plan again, unmemoized, in the rare case one of its
    servers turns out to be a VIP."""
    assert request.service is not None and request.method is not None
    svc_ref = "/".join(request.service)
    head = Rejections()
    local = as_mapping(service.get("spec")).get("externalTrafficPolicy") == "Local"
    context = _Context(
        request=request,
        method=request.method,
        svc_ref=svc_ref,
        endpoint_objs=endpoint_objs,
        vips=vips,
        local=local,
        scheduler=_scheduler(service, svc_ref, settings=settings, rej=head),
        persistence=_persistence(service, svc_ref, rej=head),
        settings=settings,
        node_name=node_name,
    )
    ports = tuple(_port_plan(context, port) for port in service_ports(service, svc_ref, rej=head))
    servers: set[IPAddress] = set()
    for port_plan in ports:
        if port_plan.virtual_server is not None:
            servers.update(rs.address for rs in port_plan.virtual_server.real_servers)
        if port_plan.listener is not None:
            servers.update(s.address for s in port_plan.listener.servers)
    slots = frozenset(p.slot for p in ports)
    claims = frozenset(p.slot for p in ports if p.claims)
    return ForwardPlan(
        tuple(head.items),
        ports,
        local,
        frozenset(servers),
        slots,
        slots if claims == slots else claims,
        bool(vips),
    )


def _port_plan(context: _Context, port: Port) -> PortPlan:
    vip, method = context.request.vip, context.method
    where = f"{context.svc_ref}:{port.name or port.port}"
    slot = (vip.version, int(vip), port.protocol.value, port.port)
    rej = Rejections()
    key = f"port {port.name or port.port}"
    if method is Method.PROXY and port.protocol is not Protocol.TCP:
        rej.add(
            Reason.PROXY_NOT_TCP,
            kind="Service",
            obj=context.svc_ref,
            key=key,
            reason="PROXY is TCP only",
        )
        return PortPlan(slot, where, tuple(rej.items), claims=False)
    family = None if method is Method.PROXY else vip.version
    endpoints = endpoints_for(
        context.endpoint_objs,
        port=port,
        family=family,
        vips=context.vips,
        service=context.svc_ref,
        rej=rej,
    )
    if context.local:
        endpoints = [e for e in endpoints if e.node == context.node_name]
    has_local = bool(endpoints)
    # DR rewrites only the MAC and TUN encapsulates the packet as it is: neither can
    # change the destination port (keepalived would silently reset it to the VIP's).
    if method in (Method.DR, Method.TUN) and any(e.port != port.port for e in endpoints):
        rej.add(
            Reason.PORT_MISMATCH,
            kind="Service",
            obj=context.svc_ref,
            key=key,
            reason=(
                f"{method.value} cannot change the port: targetPort must equal port"
                f"{_asked_by(context.request)}"
            ),
        )
        return PortPlan(slot, where, tuple(rej.items), claims=False, has_local=has_local)
    listener: ProxyListener | None = None
    virtual_server: VirtualServer | None = None
    if method is Method.PROXY:
        listener = _listener(vip, port, endpoints=endpoints, where=where)
    elif endpoints:
        # without endpoints no virtual server at all: the holder's own stack answers
        # with a reset instead of IPVS silently dropping into an empty service
        virtual_server = _virtual_server(context, port, endpoints=endpoints, where=where)
    return PortPlan(
        slot,
        where,
        tuple(rej.items),
        claims=True,
        virtual_server=virtual_server,
        listener=listener,
        has_local=has_local,
    )


def _asked_by(request: VipRequest) -> str:
    """Where the method came from, when not from the Service itself: the vip-configmap key
    that asked for DR is what the Service's owner must look at."""
    if request.kind == "Service":
        return ""
    return f" ({request.kind.lower()} {request.obj} key {request.key!r} asks for it)"


def _listener(
    vip: IPAddress, port: Port, *, endpoints: list[Endpoint], where: str
) -> ProxyListener:
    servers = tuple(
        ProxyServer(
            name=f"ep_{grammar.ip_token(e.address)}_{e.port}", address=e.address, port=e.port
        )
        for e in endpoints
    )
    return ProxyListener(
        name=f"vip_{grammar.ip_token(vip)}_{port.port}",
        vip=vip,
        port=port.port,
        servers=servers,
        service=where,
    )


def _virtual_server(
    context: _Context, port: Port, *, endpoints: list[Endpoint], where: str
) -> VirtualServer:
    settings = context.settings
    check = (
        HealthCheck.TCP
        if port.protocol is Protocol.TCP and settings.real_server_check is RealServerCheck.TCP
        else HealthCheck.NONE
    )
    return VirtualServer(
        vip=context.request.vip,
        port=port.port,
        protocol=port.protocol,
        method=context.method,
        scheduler=context.scheduler,
        persistence_timeout=context.persistence,
        health_check=check,
        delay_loop=settings.check_interval,
        real_servers=tuple(RealServer(address=e.address, port=e.port) for e in endpoints),
        service=where,
    )


class Plans:
    """Forwarding plans of the last two translations, by the identity of the objects they
    were made from (see agent.core.memo)."""

    def __init__(self) -> None:
        self._plans: IdentityMemo[ForwardPlan] = IdentityMemo()

    def turn(self) -> None:
        self._plans.turn()

    def plan(
        self,
        request: VipRequest,
        *,
        service: Obj,
        endpoint_objs: tuple[bool, tuple[Obj, ...]],
        settings: Settings,
        node_name: str,
    ) -> ForwardPlan:
        from_slices, objs = endpoint_objs
        vip = request.vip
        # the VIP as (family, int): an IPAddress hashes through hex(); and where the request
        # came from, which a DR or TUN port's rejection names (``_asked_by``): two requests
        # for one VIP and Service (an IPv6 VIP written two ways) share no plan
        key = (
            *(vip.version, int(vip), request.method, request.service, from_slices, node_name),
            *(request.kind, request.obj, request.key),
        )
        return self._plans.get(
            (settings, service, *objs),
            key,
            compute=lambda: make_plan(
                request,
                service=service,
                endpoint_objs=endpoint_objs,
                settings=settings,
                node_name=node_name,
            ),
        )

    def __len__(self) -> int:
        return len(self._plans)


def plan_for(
    request: VipRequest,
    *,
    snapshot: Snapshot,
    settings: Settings,
    node_name: str,
    plans: Plans | None,
    vips: frozenset[IPAddress],
    rej: Rejections,
) -> ForwardPlan | None:
    """The plan of ``request`` (None, with the rejection, when its Service is missing or
    an ExternalName), memoized in ``plans`` unless that is None (a one-shot pass)."""
    assert request.service is not None and request.method is not None
    service = snapshot.services.get(request.service)
    svc_ref = "/".join(request.service)
    if service is None:
        rej.add(
            Reason.SERVICE_NOT_FOUND,
            kind=request.kind,
            obj=request.obj,
            key=request.key,
            reason=f"service {svc_ref} not found; VIP held without virtual servers",
        )
        return None
    if as_mapping(service.get("spec")).get("type") == "ExternalName":
        rej.add(
            Reason.EXTERNAL_NAME,
            kind=request.kind,
            obj=request.obj,
            key=request.key,
            reason=f"service {svc_ref} is ExternalName",
        )
        return None
    endpoint_objs = endpoint_objects(snapshot, request.service)
    plan = (plans.plan if plans is not None else make_plan)(
        request,
        service=service,
        endpoint_objs=endpoint_objs,
        settings=settings,
        node_name=node_name,
    )
    if not plan.servers.isdisjoint(vips):
        # an endpoint is itself a VIP: never forward a VIP to a VIP
        plan = make_plan(
            request,
            service=service,
            endpoint_objs=endpoint_objs,
            settings=settings,
            node_name=node_name,
            vips=vips,
        )
    return plan


def replay(
    request: VipRequest, plan: ForwardPlan, *, taken: set[Slot], out: Forwarding, rej: Rejections
) -> list[ProxyListener]:
    """Claim the VIP:port slots of ``plan`` that are still free, first come first served;
    the listeners claimed, in port order."""
    rej.items.extend(plan.rejections)
    has_local = False
    claimed: list[ProxyListener] = []
    for port in plan.ports:
        if port.slot in taken:
            rej.add(
                Reason.DUPLICATE,
                kind=request.kind,
                obj=request.obj,
                key=request.key,
                reason=(
                    f"{request.vip} {port.slot[2]}/{port.slot[3]} already used; "
                    f"{port.where} skipped"
                ),
            )
            continue
        rej.items.extend(port.rejections)
        has_local = has_local or port.has_local
        if not port.claims:
            continue
        taken.add(port.slot)
        if port.listener is not None:
            out.listeners[port.slot[0], port.slot[1], port.slot[3]] = port.listener
            claimed.append(port.listener)
        if port.virtual_server is not None:
            out.virtual_servers[port.slot] = port.virtual_server
    if plan.local:
        out.local_vips[request.vip] = out.local_vips.get(request.vip, False) or has_local
    return claimed

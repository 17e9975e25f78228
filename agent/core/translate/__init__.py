"""Pure translation: cluster snapshot + this node + settings -> DesiredState.

The steps, one module each:
  * ``nodes``: the Nodes, and which may hold service VIPs and the control-plane VIP;
  * ``requests``: which VIP each source asks for (vip-configmap, LoadBalancer Services);
  * ``endpoints``: Service ports and the ready endpoints serving them;
  * ``forwarding``: what a request becomes (virtual servers, listeners), slots claimed
    first come first served;
  * ``passes``: what one translation keeps for the next in a caller-owned
    :class:`PlanMemo`, so that a change costs in proportion to what it changed;
  * ``vrrp`` and ``control_plane``: instances, ids, priorities, peers, the apiserver
    frontend and its health track file;
  * agent.core.haproxy_fds: the PROXY listeners haproxy has file descriptors for, first
    come first served like the slots.

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

from agent.core import haproxy_fds
from agent.core.addresses import Forbidden, HostFacts
from agent.core.model import (
    Allocation,
    DesiredState,
    IPAddress,
    NodeSet,
    Protocol,
    Reason,
    ServiceVips,
    VrrpInstance,
)
from agent.core.pools import Pools, parse_pools
from agent.core.snapshot import Snapshot
from agent.core.translate.allocation import allocate
from agent.core.translate.bgp import ANNOTATION_COMMUNITIES, bgp_speaker
from agent.core.translate.common import Rejections, as_mapping
from agent.core.translate.control_plane import (
    HEALTH_TRACK,
    HEALTH_WEIGHT,
    ControlPlane,
    control_plane,
)
from agent.core.translate.forwarding import ANNOTATION_SCHEDULER, Slot
from agent.core.translate.nodes import NodeView, every_node_address, node_view
from agent.core.translate.ownership import Ownership
from agent.core.translate.passes import Admission, Forwarded, PlanMemo
from agent.core.translate.requests import (
    ANNOTATION_LB_IPS,
    ANNOTATION_METHOD,
    ANNOTATION_SHARED,
    ANNOTATION_SHARED_METALLB,
    LOAD_BALANCER_CLASS,
    ServiceAsks,
    VipRequest,
    parse_configmap_key,
)
from agent.core.translate.vrrp import LOCAL_PENALTY, priority_for, service_instances, vrid_for
from agent.settings import Mode, Settings

__all__ = [
    "ANNOTATION_COMMUNITIES",
    "ANNOTATION_LB_IPS",
    "ANNOTATION_METHOD",
    "ANNOTATION_SCHEDULER",
    "ANNOTATION_SHARED",
    "ANNOTATION_SHARED_METALLB",
    "HEALTH_TRACK",
    "HEALTH_WEIGHT",
    "LOAD_BALANCER_CLASS",
    "LOCAL_PENALTY",
    "HostFacts",
    "PlanMemo",
    "parse_configmap_key",
    "priority_for",
    "translate",
    "vrid_for",
]


def translate(
    snapshot: Snapshot,
    settings: Settings,
    *,
    node_name: str,
    interface: str,
    memo: PlanMemo | None = None,
    host: HostFacts | None = None,
) -> DesiredState:
    """Everything this node should run, plus every input that was rejected and why.

    ``memo`` carries forwarding plans from one translation to the next (a live agent
    keeps one); without it the translation is a one-shot pass that keeps nothing
    (``PlanMemo(once=True)``).  The result is the same.
    ``host`` is this node's own network (interface addresses, subnets, gateways), which
    no VIP may take; a dry run has none.
    """
    memo = PlanMemo(once=True) if memo is None else memo
    memo.turn()
    rej = Rejections()
    nodes = node_view(snapshot, settings, node_name=node_name, rej=rej)
    forbidden = Forbidden(node_addresses=every_node_address(snapshot), host=host or HostFacts())
    cp_vip = _control_plane_vip(settings, forbidden=forbidden, rej=rej)
    pools = read_pools(snapshot, settings, rej=rej)
    asks = memo.service_requests(snapshot, rej=rej)
    cm_requests = memo.configmap_requests(snapshot, settings, rej=rej)
    admission = memo.admit(
        [*cm_requests, *asks.requests],
        control_plane_vip=cp_vip,
        forbidden=forbidden,
        pools=pools,
        rej=rej,
    )
    ownership = admission.ownership
    taken: frozenset[Slot] = frozenset()
    if cp_vip is not None:
        taken = frozenset(
            {(cp_vip.version, int(cp_vip), Protocol.TCP.value, settings.control_plane_port)}
        )
    forwarding = memo.forward(
        admission,
        snapshot=snapshot,
        settings=settings,
        node_name=node_name,
        initial=taken,
        rej=rej,
    )
    allocations = _allocations(
        asks,
        cm_requests,
        cp_vip=cp_vip,
        snapshot=snapshot,
        settings=settings,
        pools=pools,
        forbidden=forbidden,
        rej=rej,
    )
    cp = None
    if cp_vip is not None and nodes.serves_control_plane:
        cp = control_plane(settings, vip=cp_vip, nodes=nodes, interface=interface, rej=rej)
    if not nodes.serves_services:
        forwarding = Forwarded(virtual_servers=(), listeners=(), local_vips=forwarding.local_vips)
    # after the control plane, whose frontend haproxy always has room for first
    listeners, checks, cut = haproxy_fds.fit(
        forwarding.listeners,
        checks=forwarding.checks,
        order=memo.listeners_by_request(),
        apiserver=cp.apiserver if cp is not None else None,
        limit=settings.haproxy_fd_limit,
        min_connections=settings.haproxy_min_connections,
        threads=settings.haproxy_threads,
    )
    rej.items.extend(cut)
    bgp = None
    instances: list[VrrpInstance] = []
    if settings.mode is Mode.BGP:
        bgp = bgp_speaker(
            settings,
            nodes=nodes,
            snapshot=snapshot,
            owners=ownership.first,
            local_vips=forwarding.local_vips,
            control_plane_vip=cp_vip,
            rej=rej,
        )
    else:
        instances = _vrrp_instances(
            cp,
            admission,
            forwarding=forwarding,
            settings=settings,
            interface=interface,
            nodes=nodes,
            memo=memo,
        )
    return DesiredState(
        router_id=node_name,
        instances=tuple(instances),
        virtual_servers=forwarding.virtual_servers,
        listeners=listeners,
        listener_checks=checks,
        apiserver=cp.apiserver if cp is not None else None,
        track_files=(cp.track_file,) if cp is not None and bgp is None else (),
        haproxy_stats_socket=settings.haproxy_stats_socket,
        haproxy_hard_stop_after_s=settings.haproxy_hard_stop_after,
        haproxy_fd_limit=settings.haproxy_fd_limit,
        haproxy_min_connections=settings.haproxy_min_connections,
        haproxy_threads=settings.haproxy_threads,
        notify_fifo=settings.vrrp_notify_fifo,
        rejections=tuple(rej.items),
        service_vips=_accepted(asks.asked, ownership),
        nodes=_nodes(nodes),
        allocations=allocations,
        bgp=bgp,
    )


def _vrrp_instances(
    cp: ControlPlane | None,
    admission: Admission,
    *,
    forwarding: Forwarded,
    settings: Settings,
    interface: str,
    nodes: NodeView,
    memo: PlanMemo,
) -> list[VrrpInstance]:
    """VRRP mode: the control-plane instance, then the service instances."""
    instances = [cp.instance] if cp is not None else []
    if nodes.serves_services:
        owners = admission.ownership.owners
        instances += memo.instances(
            (owners, forwarding.local_vips, settings, interface, nodes),
            lambda: service_instances(
                owners,
                local_vips=forwarding.local_vips,
                settings=settings,
                interface=interface,
                nodes=nodes,
            ),
        )
    return instances


def _allocations(
    asks: ServiceAsks,
    cm_requests: list[VipRequest],
    *,
    cp_vip: IPAddress | None,
    snapshot: Snapshot,
    settings: Settings,
    pools: Pools | None,
    forbidden: Forbidden,
    rej: Rejections,
) -> tuple[Allocation, ...]:
    """Addresses for Services that ask for none, when there are pools and allocation is on.
    Every address anyone asks for is used, admitted or not."""
    if pools is None or not settings.allocation:
        return ()
    used = {a for asked in asks.asked for a in asked.requested}
    used |= {r.vip for r in cm_requests} | ({cp_vip} if cp_vip is not None else set())
    return allocate(
        asks.unaddressed,
        snapshot=snapshot,
        pools=pools,
        forbidden=forbidden,
        taken=used,
        rej=rej,
    )


def _control_plane_vip(
    settings: Settings, *, forbidden: Forbidden, rej: Rejections
) -> IPAddress | None:
    """The control-plane VIP of settings, unless it is a Node's or this node's address
    (reserved forms are refused when settings load)."""
    vip = settings.control_plane_vip
    if vip is None:
        return None
    why = forbidden.reason(vip)
    if why is None:
        return vip
    rej.add(
        Reason.FORBIDDEN_ADDRESS,
        kind="Settings",
        obj="control_plane_vip",
        key="",
        reason=f"{vip} {why}; never a VIP",
    )
    return None


def read_pools(snapshot: Snapshot, settings: Settings, *, rej: Rejections) -> Pools | None:
    """The pool ConfigMap, if it exists (without one, Services are not held to pools)."""
    namespace, name = settings.pool_configmap_ref
    cm = snapshot.configmaps.get((namespace, name))
    if cm is None:
        return None
    ref = f"{namespace}/{name}"
    pools, problems = parse_pools(ref, as_mapping(cm.get("data")))
    for key, why in problems:
        rej.add(Reason.BAD_POOL, kind="ConfigMap", obj=ref, key=key, reason=why)
    return pools


def _accepted(asked: tuple[ServiceVips, ...], ownership: Ownership) -> tuple[ServiceVips, ...]:
    """Each Service's requested VIPs, and those it was admitted to (owner or sharer)."""
    out = []
    for item in asked:
        who = f"Service {'/'.join(item.service)}"
        accepted = tuple(v for v in item.requested if who in ownership.owners.get(v, ()))
        out.append(ServiceVips(service=item.service, requested=item.requested, accepted=accepted))
    return tuple(out)


def _nodes(nodes: NodeView) -> NodeSet:
    return NodeSet(
        known=nodes.known,
        all=tuple(nodes.by_name),
        eligible=nodes.service_nodes,
    )

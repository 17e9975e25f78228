"""BGP mode: which VIPs this node announces to its routers, and with what.

* The control-plane VIP: every control-plane node announces it while its apiserver is
  healthy (ECMP at the routers).  Health gating needs no reload: the VIP is *gated*, BIRD
  learns its route from a kernel table the prober fills and empties
  (``bgp_gate_table``), and announces it only while the route is there.
* Service VIPs: every node that may hold service VIPs announces each admitted VIP
  (ECMP); a VIP of ``externalTrafficPolicy: Local`` only from nodes with a ready local
  endpoint (the forwarding step knows which).
* Communities: the ``bgp_communities`` setting on every announcement, plus those a
  Service's ``vip-agent.io/bgp-communities`` annotation names (validated: a bad entry is
  reported and left out, the rest applies).

Ownership, pools and forbidden addresses apply unchanged: only admitted VIPs are ever
announced, and the export filter BIRD gets lists exactly these host routes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import TypeVar

from agent.core.model import Announcement, BgpSpeaker, Community, IPAddress, Reason
from agent.core.snapshot import Snapshot
from agent.core.translate.common import Rejections, as_mapping, meta_of
from agent.core.translate.nodes import NodeView
from agent.core.translate.requests import VipRequest
from agent.settings import Settings

ANNOTATION_COMMUNITIES = "vip-agent.io/bgp-communities"
A = TypeVar("A", ipaddress.IPv4Address, ipaddress.IPv6Address)


def bgp_speaker(
    settings: Settings,
    *,
    nodes: NodeView,
    snapshot: Snapshot,
    owners: Mapping[IPAddress, VipRequest],
    local_vips: Mapping[IPAddress, bool],
    control_plane_vip: IPAddress | None,
    rej: Rejections,
) -> BgpSpeaker | None:
    """What bird.conf holds for this node, or None when it cannot speak BGP at all."""
    router_id = _router_id(settings, nodes)
    if router_id is None:
        rej.add(
            Reason.NO_ROUTER_ID,
            kind="Settings",
            obj="bgp_router_id",
            key="",
            reason="no IPv4 address of this node to use as BGP router id; set bgp_router_id",
        )
        return None
    assert settings.bgp_local_as is not None  # settings refuse mode bgp without it
    announcements: list[Announcement] = []
    if control_plane_vip is not None and nodes.serves_control_plane:
        announcements.append(
            Announcement(
                vip=control_plane_vip,
                gated=True,
                communities=settings.bgp_communities,
                owner="settings control_plane_vip",
            )
        )
    if nodes.serves_services:
        for vip in sorted(owners, key=lambda v: (v.version, int(v))):
            if not local_vips.get(vip, True):
                continue  # Local policy and no ready endpoint here: leave it to others
            request = owners[vip]
            extra = _service_communities(request, snapshot, rej)
            announcements.append(
                Announcement(
                    vip=vip,
                    gated=False,
                    communities=tuple(dict.fromkeys((*settings.bgp_communities, *extra))),
                    owner=request.owner,
                )
            )
    return BgpSpeaker(
        router_id=router_id,
        local_as=settings.bgp_local_as,
        peers=settings.bgp_peers,
        announcements=tuple(announcements),
        hold_time=settings.bgp_hold_time,
        keepalive_time=settings.bgp_keepalive_time,
        local_pref=settings.bgp_local_pref,
        bfd_interval_ms=settings.bgp_bfd_interval,
        bfd_multiplier=settings.bgp_bfd_multiplier,
        graceful_restart_time=settings.bgp_graceful_restart_time,
        gate_table=settings.bgp_gate_table,
        vip_interface=settings.bgp_vip_interface,
        next_hop4=_own_address(nodes, settings, ipaddress.IPv4Address),
        next_hop6=_own_address(nodes, settings, ipaddress.IPv6Address),
    )


def _router_id(settings: Settings, nodes: NodeView) -> ipaddress.IPv4Address | None:
    """The setting, else this node's IPv4 address (its Node's, else node_address)."""
    if settings.bgp_router_id is not None:
        return settings.bgp_router_id
    return _own_address(nodes, settings, ipaddress.IPv4Address)


def _own_address(nodes: NodeView, settings: Settings, kind: type[A]) -> A | None:
    """This node's address of one family: its Node's, else node_address."""
    me = nodes.me
    version = 4 if kind is ipaddress.IPv4Address else 6
    for found in (me.address(version) if me is not None else None, settings.node_address):
        if isinstance(found, kind):
            return found
    return None


def _service_communities(
    request: VipRequest, snapshot: Snapshot, rej: Rejections
) -> tuple[Community, ...]:
    if request.kind != "Service" or request.service is None:
        return ()
    service = snapshot.services.get(request.service)
    raw = as_mapping(meta_of(service or {}).get("annotations")).get(ANNOTATION_COMMUNITIES)
    if raw is None:
        return ()
    site = rej.on("Service", request.obj)
    key = f"annotations[{ANNOTATION_COMMUNITIES}]"
    found: list[Community] = []
    for text in str(raw).split(",") if isinstance(raw, str) else [raw]:
        community = site.parse(Community.parse, text, code=Reason.BAD_COMMUNITY, key=key)
        if community is not None:
            found.append(community)
    return tuple(found)

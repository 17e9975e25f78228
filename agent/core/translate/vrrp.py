"""VRRP instances: ids, priorities, unicast peers, advertised and excluded VIPs."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.core.model import IPAddress, VrrpInstance
from agent.core.translate.nodes import NodeView
from agent.settings import Settings

PRIORITY_BASE = 200
PRIORITY_SPAN = 50
LOCAL_PENALTY = 50


@functools.lru_cache(maxsize=65536)
def priority_for(node: str, instance: str) -> int:
    """Rendezvous priority of ``node`` for ``instance``: 200..249, independent of other nodes."""
    digest = hashlib.sha256(f"{instance}\0{node}".encode()).digest()
    return PRIORITY_BASE + int.from_bytes(digest[:8], "big") % PRIORITY_SPAN


def vrid_for(vip: IPAddress, ids: tuple[int, ...]) -> int:
    """The virtual_router_id of a per-VIP instance: a function of the VIP alone."""
    digest = hashlib.sha256(vip.packed).digest()
    return ids[int.from_bytes(digest[:8], "big") % len(ids)]


@dataclass(frozen=True)
class Unicast:
    """This node's source address and its peers for one address family."""

    src: IPAddress | None
    peers: tuple[IPAddress, ...]


def unicast_for(
    settings: Settings, *, nodes: NodeView, eligible: Iterable[str], family: int
) -> Unicast:
    """This node's source address and the other eligible nodes (or the static peers);
    neither while there is no peer (keepalived then speaks multicast)."""
    if not settings.unicast:
        return Unicast(None, ())
    src: IPAddress | None = None
    me = nodes.me
    if me is not None:
        src = me.address(family)
    elif settings.node_address is not None and settings.node_address.version == family:
        src = settings.node_address
    found = {nodes.by_name[n].address(family) for n in eligible if n != nodes.name}
    static = {a for a in settings.unicast_peers if a.version == family and a != src}
    peers = {a for a in found if a is not None} | static
    if not peers:
        # A node alone (a one-node cluster, the first node of a rollout): keepalived
        # refuses unicast_src_ip without a peer, which refused every render.  Multicast
        # until a peer appears; the next render after it joins is unicast again.
        return Unicast(None, ())
    return Unicast(src, tuple(sorted(peers, key=int)))


def instance(
    *,
    name: str,
    vrid: int,
    family: int,
    vips: Iterable[IPAddress],
    settings: Settings,
    interface: str,
    node_name: str,
    unicast: Unicast,
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


def service_instances(
    service_vips: Mapping[IPAddress, list[str]],
    *,
    local_vips: Mapping[IPAddress, bool],
    settings: Settings,
    interface: str,
    nodes: NodeView,
) -> list[VrrpInstance]:
    """One instance per family holding every service VIP, or with ``spread`` one per
    hashed virtual_router_id."""
    out: list[VrrpInstance] = []
    for family in (4, 6):
        vips = sorted((v for v in service_vips if v.version == family), key=int)
        if not vips:
            continue
        common: dict[str, Any] = {
            "settings": settings,
            "interface": interface,
            "node_name": nodes.name,
            "unicast": unicast_for(
                settings, nodes=nodes, eligible=nodes.service_nodes, family=family
            ),
        }
        if not settings.spread:
            owners = tuple(sorted({o for v in vips for o in service_vips[v]}))
            out.append(
                instance(
                    name=f"services_v{family}",
                    vrid=settings.virtual_router_id,
                    family=family,
                    vips=vips,
                    owners=owners,
                    **common,
                )
            )
            continue
        out.extend(
            _spread_instances(
                vips, service_vips, local_vips=local_vips, settings=settings, common=common
            )
        )
    return out


def _spread_instances(
    vips: list[IPAddress],
    service_vips: Mapping[IPAddress, list[str]],
    *,
    local_vips: Mapping[IPAddress, bool],
    settings: Settings,
    common: dict[str, Any],
) -> list[VrrpInstance]:
    groups: dict[int, list[IPAddress]] = {}
    for vip in vips:
        groups.setdefault(vrid_for(vip, settings.hashed_vrids), []).append(vip)
    out: list[VrrpInstance] = []
    for vrid in sorted(groups):
        members = groups[vrid]
        # Local policy: prefer a node that has a local endpoint for every member
        lacking = any(not local_vips.get(v, True) for v in members)
        owners = tuple(sorted({o for v in members for o in service_vips[v]}))
        out.append(
            instance(
                name=f"vip_v{members[0].version}_{vrid}",
                vrid=vrid,
                family=members[0].version,
                vips=members,
                penalty=LOCAL_PENALTY if lacking else 0,
                owners=owners,
                **common,
            )
        )
    return out

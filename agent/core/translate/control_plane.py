"""The control-plane VIP: its VRRP instance, health track file and haproxy frontend."""

from __future__ import annotations

from dataclasses import dataclass

from agent.core import grammar
from agent.core.model import (
    ApiserverProxy,
    IPAddress,
    ProxyServer,
    Reason,
    TrackFile,
    VrrpInstance,
)
from agent.core.translate.common import Rejections
from agent.core.translate.nodes import NodeView
from agent.core.translate.vrrp import instance, unicast_for
from agent.settings import HealthMode, Settings

HEALTH_WEIGHT = -120
HEALTH_TRACK = "apiserver"


@dataclass(frozen=True)
class ControlPlane:
    instance: VrrpInstance
    track_file: TrackFile
    apiserver: ApiserverProxy


def control_plane(
    settings: Settings, *, vip: IPAddress, nodes: NodeView, interface: str, rej: Rejections
) -> ControlPlane:
    """The control-plane instance, tied to the apiserver prober's track file, and the
    haproxy frontend in front of the apiservers."""
    track = TrackFile(
        name=HEALTH_TRACK,
        path=settings.health_file,
        weight=0 if settings.health_mode is HealthMode.FAULT else HEALTH_WEIGHT,
    )
    vrrp = instance(
        name="control_plane",
        vrid=settings.control_plane_virtual_router_id,
        family=vip.version,
        vips=[vip],
        settings=settings,
        interface=interface,
        node_name=nodes.name,
        unicast=unicast_for(
            settings, nodes=nodes, eligible=nodes.control_plane_nodes, family=vip.version
        ),
        track_file=HEALTH_TRACK,
        owners=("settings control_plane_vip",),
        advert_int=settings.cp_advert_int,
        garp_master_refresh=settings.control_plane_garp_master_refresh,
    )
    return ControlPlane(
        instance=vrrp, track_file=track, apiserver=_apiserver(settings, vip, nodes=nodes, rej=rej)
    )


def _backends(
    settings: Settings, vip: IPAddress, *, nodes: NodeView, rej: Rejections
) -> list[ProxyServer]:
    if settings.control_plane_backends:
        return [
            ProxyServer(
                name=backend.name or f"apiserver_{grammar.ip_token(backend.address)}",
                address=backend.address,
                port=settings.control_plane_backend_port,
            )
            for backend in settings.control_plane_backends
        ]
    servers: list[ProxyServer] = []
    for name in nodes.control_plane_nodes:
        node = nodes.by_name[name]
        found = node.address(vip.version) or (node.addresses[0] if node.addresses else None)
        if found is None:
            rej.add(
                Reason.NO_BACKEND_ADDRESS,
                kind="Node",
                obj=name,
                key="status.addresses",
                reason="no address for the apiserver backend",
            )
            continue
        servers.append(
            ProxyServer(name=name, address=found, port=settings.control_plane_backend_port)
        )
    return servers


def _apiserver(
    settings: Settings, vip: IPAddress, *, nodes: NodeView, rej: Rejections
) -> ApiserverProxy:
    servers = _backends(settings, vip, nodes=nodes, rej=rej)
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

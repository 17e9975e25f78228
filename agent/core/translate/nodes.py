"""Nodes: their names, addresses (in the order of ``node_address_types``) and labels, and
which of them may hold service VIPs and the control-plane VIP."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

from agent.core import grammar
from agent.core.addresses import node_addresses
from agent.core.model import IPAddress, Reason
from agent.core.snapshot import Snapshot
from agent.core.translate.common import Rejections, as_list, as_mapping, meta_of
from agent.settings import Settings


@dataclass(frozen=True)
class NodeInfo:
    name: str
    addresses: tuple[IPAddress, ...]
    labels: Mapping[str, str]

    def address(self, family: int) -> IPAddress | None:
        return next((a for a in self.addresses if a.version == family), None)


def read_nodes(snapshot: Snapshot, settings: Settings, *, rej: Rejections) -> dict[str, NodeInfo]:
    out: dict[str, NodeInfo] = {}
    for name in sorted(snapshot.nodes):
        obj = snapshot.nodes[name]
        if not grammar.DNS_SUBDOMAIN.match(name):
            rej.add(
                Reason.BAD_NAME,
                kind="Node",
                obj=repr(name)[1:-1],
                key="metadata.name",
                reason="not a valid node name",
            )
            continue
        ranked: list[tuple[int, int, IPAddress]] = []
        site = rej.on("Node", name)
        for index, entry in enumerate(as_list(as_mapping(obj.get("status")).get("addresses"))):
            entry = as_mapping(entry)
            kind = entry.get("type")
            if kind not in settings.node_address_types:
                continue
            address = site.parse(
                grammar.parse_ip,
                entry.get("address"),
                code=Reason.BAD_ADDRESS,
                key=f"status.addresses[{index}]",
            )
            if address is not None:
                ranked.append((settings.node_address_types.index(kind), index, address))
        labels = {
            str(k): str(v)
            for k, v in as_mapping(meta_of(obj).get("labels")).items()
            if v is not None
        }
        addresses = tuple(dict.fromkeys(a for _, _, a in sorted(ranked)))
        out[name] = NodeInfo(name=name, addresses=addresses, labels=labels)
    return out


@dataclass(frozen=True)
class NodeView:
    """The cluster's nodes as one node sees them."""

    name: str
    """This node's name."""
    by_name: Mapping[str, NodeInfo]
    """Every valid Node, by name (sorted)."""
    known: bool
    """False when no Node objects were given at all (manifests without nodes, static mode):
    then this node serves everything and has no peers but static ones."""
    service_nodes: tuple[str, ...]
    """Nodes that may hold service VIPs (``node_selector``), sorted."""
    control_plane_nodes: tuple[str, ...]
    """Nodes that may hold the control-plane VIP (``control_plane_selector``), sorted."""

    @property
    def me(self) -> NodeInfo | None:
        return self.by_name.get(self.name)

    @property
    def serves_services(self) -> bool:
        return self.name in self.service_nodes or not self.known

    @property
    def serves_control_plane(self) -> bool:
        return self.name in self.control_plane_nodes or not self.known


def node_view(
    snapshot: Snapshot, settings: Settings, *, node_name: str, rej: Rejections
) -> NodeView:
    nodes = read_nodes(snapshot, settings, rej=rej)
    if snapshot.nodes_known and node_name not in nodes:
        rej.add(
            Reason.NODE_NOT_IN_CLUSTER,
            kind="Node",
            obj=node_name,
            key="",
            reason="this node is not in the cluster; holding no service VIPs",
        )
    services, control_plane = settings.node_selector, settings.control_plane_selector
    return NodeView(
        name=node_name,
        by_name=nodes,
        known=snapshot.nodes_known,
        service_nodes=tuple(n for n, v in nodes.items() if services.matches(v.labels)),
        control_plane_nodes=tuple(n for n, v in nodes.items() if control_plane.matches(v.labels)),
    )


def every_node_address(snapshot: Snapshot) -> dict[IPAddress, str]:
    """Every address any Node reports, of every type, with the Node's name: none of them
    may ever be a VIP (``agent.core.addresses``)."""
    entries: list[tuple[str, IPAddress]] = []
    for name, obj in snapshot.nodes.items():
        for entry in as_list(as_mapping(obj.get("status")).get("addresses")):
            with contextlib.suppress(ValueError):
                entries.append((name, grammar.parse_ip(as_mapping(entry).get("address"))))
    return node_addresses(entries)

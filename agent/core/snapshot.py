"""A point-in-time view of the cluster objects the agent reads.

Objects are the plain JSON-shaped dicts the API server serves (camelCase
keys, as ``kubectl get -o yaml`` prints and as the watcher stores them).
Nothing here is trusted: ``translate`` validates every field it uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Obj = Mapping[str, Any]
Key = tuple[str, str]

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
KINDS = ("Service", "EndpointSlice", "Endpoints", "ConfigMap", "Node")


@dataclass(frozen=True)
class Snapshot:
    services: Mapping[Key, Obj] = field(default_factory=dict)
    endpoint_slices: Mapping[Key, tuple[Obj, ...]] = field(default_factory=dict)
    """Slices by the (namespace, service name) of their service-name label."""
    endpoints: Mapping[Key, Obj] = field(default_factory=dict)
    configmaps: Mapping[Key, Obj] = field(default_factory=dict)
    nodes: Mapping[str, Obj] = field(default_factory=dict)
    nodes_known: bool = False
    """False when no Node objects were given at all (manifests without nodes, static mode)."""

    @classmethod
    def from_objects(cls, objects: Iterable[Obj]) -> Snapshot:
        """Index objects by kind; a later object with the same kind/namespace/name wins."""
        by_kind: dict[str, dict[Any, Obj]] = {kind: {} for kind in KINDS}
        for obj in objects:
            kind = obj.get("kind")
            if kind not in by_kind:
                continue
            meta = obj.get("metadata") or {}
            if not isinstance(meta, Mapping):
                continue
            namespace, name = meta.get("namespace") or "", meta.get("name")
            if not isinstance(name, str) or not isinstance(namespace, str):
                continue
            by_kind[kind][name if kind == "Node" else (namespace, name)] = obj
        return cls.build(
            services=by_kind["Service"],
            slices=by_kind["EndpointSlice"].values(),
            endpoints=by_kind["Endpoints"],
            configmaps=by_kind["ConfigMap"],
            nodes=by_kind["Node"],
            nodes_known=bool(by_kind["Node"]),
        )

    @classmethod
    def build(
        cls,
        *,
        services: Mapping[Key, Obj],
        slices: Iterable[Obj],
        endpoints: Mapping[Key, Obj],
        configmaps: Mapping[Key, Obj],
        nodes: Mapping[str, Obj],
        nodes_known: bool,
    ) -> Snapshot:
        grouped: dict[Key, list[Obj]] = {}
        for item in slices:
            meta = item.get("metadata") or {}
            labels = meta.get("labels") or {}
            service = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, Mapping) else None
            namespace = meta.get("namespace") or ""
            if isinstance(service, str) and isinstance(namespace, str):
                grouped.setdefault((namespace, service), []).append(item)
        ordered = {
            key: tuple(sorted(group, key=lambda s: str((s.get("metadata") or {}).get("name"))))
            for key, group in grouped.items()
        }
        return cls(
            services=dict(services),
            endpoint_slices=ordered,
            endpoints=dict(endpoints),
            configmaps=dict(configmaps),
            nodes=dict(nodes),
            nodes_known=nodes_known,
        )

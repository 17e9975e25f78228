"""A point-in-time view of the cluster objects the agent reads.

Objects are the plain JSON-shaped dicts the API server serves (camelCase
keys, as ``kubectl get -o yaml`` prints and as the watcher stores them).
Nothing here is trusted: ``translate`` validates every field it uses.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
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
        slices: Iterable[Obj] = (),
        endpoints: Mapping[Key, Obj],
        configmaps: Mapping[Key, Obj],
        nodes: Mapping[str, Obj],
        nodes_known: bool,
        grouped_slices: Mapping[Key, tuple[Obj, ...]] | None = None,
    ) -> Snapshot:
        """A snapshot of these objects.  Slices come as they are (``slices``) or already
        grouped by :class:`SliceGroups` (``grouped_slices``), which a live source keeps
        from one snapshot to the next instead of grouping every slice again."""
        if grouped_slices is None:
            grouped_slices = group_slices(slices)
        return cls(
            services=dict(services),
            endpoint_slices=dict(grouped_slices),
            endpoints=dict(endpoints),
            configmaps=dict(configmaps),
            nodes=dict(nodes),
            nodes_known=nodes_known,
        )


def slice_service(item: Obj) -> Key | None:
    """The (namespace, name) of the Service an EndpointSlice belongs to, by its label."""
    meta = item.get("metadata") or {}
    labels = meta.get("labels") or {}
    service = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, Mapping) else None
    namespace = meta.get("namespace") or ""
    if isinstance(service, str) and isinstance(namespace, str):
        return (namespace, service)
    return None


def _slice_name(item: Obj) -> str:
    return str((item.get("metadata") or {}).get("name"))


def group_slices(slices: Iterable[Obj]) -> dict[Key, tuple[Obj, ...]]:
    """EndpointSlices by their Service, each group ordered by slice name."""
    grouped: dict[Key, list[Obj]] = {}
    for item in slices:
        service = slice_service(item)
        if service is not None:
            grouped.setdefault(service, []).append(item)
    return {key: tuple(sorted(group, key=_slice_name)) for key, group in grouped.items()}


class SliceGroups:
    """EndpointSlices grouped by their Service, each group ordered by slice name, kept up
    to date one slice at a time: a change regroups one Service's slices, not all of
    them (at 5,000 Services, grouping every slice again, :func:`group_slices`, cost 10 ms
    a pass).  The caller owns it and names each slice by a key of its choosing (its
    store key)."""

    def __init__(self) -> None:
        self._members: dict[Key, dict[Hashable, Obj]] = {}
        self._service: dict[Hashable, Key] = {}
        self._ordered: dict[Key, tuple[Obj, ...]] = {}
        self._stale: set[Key] = set()

    def put(self, key: Hashable, item: Obj) -> None:
        self.remove(key)
        service = slice_service(item)
        if service is None:
            return
        self._members.setdefault(service, {})[key] = item
        self._service[key] = service
        self._stale.add(service)

    def remove(self, key: Hashable) -> None:
        service = self._service.pop(key, None)
        if service is None:
            return
        members = self._members[service]
        del members[key]
        if not members:
            del self._members[service]
        self._stale.add(service)

    def grouped(self) -> Mapping[Key, tuple[Obj, ...]]:
        """Each Service's slices by name (the same tuple while none of them changed);
        the mapping is the caller's to read, not to keep: the next change edits it."""
        for service in self._stale:
            members = self._members.get(service)
            if members is None:
                self._ordered.pop(service, None)
                continue
            self._ordered[service] = tuple(sorted(members.values(), key=_slice_name))
        self._stale.clear()
        return self._ordered

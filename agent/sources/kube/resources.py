"""What is watched, and what of each object is kept.

One list/watch target per kind:

    Services               /api/v1/services
    EndpointSlices (v1)    /apis/discovery.k8s.io/v1/endpointslices   when the server serves it,
    or Endpoints           /api/v1/endpoints                          else (chosen by discovery)
    the vip-configmap      /api/v1/namespaces/NS/configmaps?fieldSelector=metadata.name=NAME
    Nodes                  /api/v1/nodes

Objects are stored as the camelCase dicts the API serves, cut down to what
``agent.core.translate`` and ``agent.writeback`` read (metadata name/namespace/uid/labels/
annotations/resourceVersion, spec, status.addresses, status.loadBalancer, subsets,
endpoints, ports, addressType, data): managedFields, the last-applied-configuration
annotation, Node images and conditions are dropped, so memory follows the number of
objects, not their size.  Stores are keyed (namespace, name), Nodes by name
(``store_key``): what ``Snapshot`` expects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.sources.kube.transport import ApiError, KubeApi

StoreKey = str | tuple[str, str]

# Dropped: kubectl apply's copy of the whole object, often the largest annotation.
_DROPPED_ANNOTATIONS = frozenset({"kubectl.kubernetes.io/last-applied-configuration"})


@dataclass(frozen=True)
class Resource:
    """One list/watch target: a kind at a group/version, optionally narrowed."""

    kind: str
    group_version: str
    plural: str
    namespace: str | None = None
    field_selector: str | None = None

    @property
    def group(self) -> str:
        return self.group_version.rpartition("/")[0]

    @property
    def path(self) -> str:
        base = "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"
        where = f"/namespaces/{self.namespace}" if self.namespace else ""
        return f"{base}{where}/{self.plural}"

    def describe(self) -> str:
        """How RBAC names it: ``services``, ``endpointslices.discovery.k8s.io``."""
        name = f"{self.plural}.{self.group}" if self.group else self.plural
        if self.field_selector:
            name += f" ({self.field_selector})"
        return name

    def scope(self) -> str:
        return f'in namespace "{self.namespace}"' if self.namespace else "at the cluster scope"

    def query(self) -> list[tuple[str, str]]:
        return [("fieldSelector", self.field_selector)] if self.field_selector else []


SERVICES = Resource("Service", "v1", "services")
ENDPOINTS = Resource("Endpoints", "v1", "endpoints")
ENDPOINT_SLICES = Resource("EndpointSlice", "discovery.k8s.io/v1", "endpointslices")
NODES = Resource("Node", "v1", "nodes")


def configmap_resource(namespace: str, name: str) -> Resource:
    # RBAC can name the one ConfigMap: the API server takes the name of a list/watch
    # from an exact metadata.name field selector and checks resourceNames against it.
    return Resource("ConfigMap", "v1", "configmaps", namespace, f"metadata.name={name}")


def endpoints_resource(api: KubeApi) -> Resource:
    """EndpointSlices v1 when the server serves discovery.k8s.io/v1 (1.21+), else Endpoints.

    1.20 serves EndpointSlices only as v1beta1, whose endpoints carry ``topology`` instead
    of ``nodeName``; core/v1 Endpoints hold the same addresses in every version, so they
    are the fallback rather than a second slice schema.
    """
    try:
        group = api.request("GET", "/apis/discovery.k8s.io")
    except ApiError as err:
        if err.status == 404:
            return ENDPOINTS
        raise
    versions = {
        v.get("version") for v in (group or {}).get("versions") or [] if isinstance(v, Mapping)
    }
    return ENDPOINT_SLICES if "v1" in versions else ENDPOINTS


# --- trimming objects -------------------------------------------------------------


def _slim_meta(meta: Any) -> dict[str, Any]:
    meta = meta if isinstance(meta, Mapping) else {}
    # creationTimestamp: the oldest Service keeps a contested VIP (first come, first served)
    fields = ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
    out = {k: meta[k] for k in fields if k in meta}
    if meta.get("labels"):
        out["labels"] = meta["labels"]
    annotations = meta.get("annotations")
    if isinstance(annotations, Mapping):
        kept = {k: v for k, v in annotations.items() if k not in _DROPPED_ANNOTATIONS}
        if kept:
            out["annotations"] = kept
    return out


def _keep(value: Any, keys: Sequence[str]) -> Any:
    if not isinstance(value, Mapping):
        return value
    return {k: value[k] for k in keys if k in value}


def slim(kind: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of an object that translate and write-back read; the rest is dropped."""
    out: dict[str, Any] = {"metadata": _slim_meta(obj.get("metadata"))}
    raw_status = obj.get("status")
    status: Mapping[str, Any] = raw_status if isinstance(raw_status, Mapping) else {}
    if kind == "Service":
        if "spec" in obj:
            out["spec"] = obj["spec"]
        if status.get("loadBalancer"):
            out["status"] = {"loadBalancer": status["loadBalancer"]}
    elif kind == "Node":
        if status.get("addresses"):
            out["status"] = {"addresses": status["addresses"]}
    elif kind == "Endpoints":
        out.update(_slim_endpoints(obj))
    elif kind == "EndpointSlice":
        out.update(_slim_endpoint_slice(obj))
    elif kind == "ConfigMap" and "data" in obj:
        out["data"] = obj["data"]
    return out


def _slim_endpoints(obj: Mapping[str, Any]) -> dict[str, Any]:
    subsets = obj.get("subsets")
    if not isinstance(subsets, list):
        return {}
    # targetRef (pod uid, resourceVersion) is most of an address's bytes and is never
    # read; notReadyAddresses are never served.
    return {
        "subsets": [
            {
                "addresses": [_keep(a, ("ip", "nodeName")) for a in subset.get("addresses") or []],
                "ports": subset.get("ports") or [],
            }
            if isinstance(subset, Mapping)
            else subset
            for subset in subsets
        ]
    }


def _slim_endpoint_slice(obj: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"addressType": obj.get("addressType"), "ports": obj.get("ports")}
    endpoints = obj.get("endpoints")
    if isinstance(endpoints, list):
        out["endpoints"] = [_keep(e, ("addresses", "conditions", "nodeName")) for e in endpoints]
    return out


def same_but_for_version(a: Mapping[str, Any] | None, b: Mapping[str, Any]) -> bool:
    """Equal but for resourceVersion: a Node heartbeat or a managedFields-only update
    bumps it without changing anything the agent reads, and must not cause a reconcile."""
    if a is None:
        return False
    meta_a, meta_b = dict(a.get("metadata") or {}), dict(b.get("metadata") or {})
    meta_a.pop("resourceVersion", None)
    meta_b.pop("resourceVersion", None)
    return meta_a == meta_b and {**a, "metadata": None} == {**b, "metadata": None}


def store_key(kind: str, obj: Mapping[str, Any]) -> StoreKey | None:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
        return None
    if kind == "Node":
        return str(meta["name"])
    return (str(meta.get("namespace") or ""), str(meta["name"]))


def resource_version(obj: Any) -> str | None:
    """``metadata.resourceVersion`` of a served object, or None when it has none."""
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    rv = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    return rv if isinstance(rv, str) and rv else None

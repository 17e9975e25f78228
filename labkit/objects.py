"""Small builders for cluster objects, shaped exactly as the API server serves them."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]


def node(name: str, *addresses: str, control_plane: bool = False, **labels: str) -> Obj:
    all_labels = {"kubernetes.io/hostname": name, **labels}
    if control_plane:
        all_labels["node-role.kubernetes.io/control-plane"] = ""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": all_labels},
        "status": {"addresses": [{"type": "InternalIP", "address": a} for a in addresses]},
    }


def configmap(
    data: dict[str, str], namespace: str = "kube-system", name: str = "vip-configmap"
) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    }


def service(
    name: str,
    ports: list[Obj],
    namespace: str = "default",
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> Obj:
    meta: Obj = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {"ports": ports, **spec},
    }


def port(name: str, number: int, target: int | str | None = None, protocol: str = "TCP") -> Obj:
    out: Obj = {"name": name, "port": number, "protocol": protocol}
    if target is not None:
        out["targetPort"] = target
    return out


def endpoint(
    address: str, ready: bool | None = True, node_name: str | None = None, **cond: bool
) -> Obj:
    conditions: Obj = dict(cond)
    if ready is not None:
        conditions["ready"] = ready
    out: Obj = {"addresses": [address], "conditions": conditions}
    if node_name:
        out["nodeName"] = node_name
    return out


def endpoint_slice(
    service_name: str,
    ports: list[Obj],
    endpoints: list[Obj],
    namespace: str = "default",
    name: str | None = None,
    address_type: str = "IPv4",
) -> Obj:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name or f"{service_name}-x",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": address_type,
        "ports": ports,
        "endpoints": endpoints,
    }


def core_endpoints(
    name: str,
    addresses: list[str],
    ports: list[Obj],
    namespace: str = "default",
    not_ready: list[str] | None = None,
) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": name, "namespace": namespace},
        "subsets": [
            {
                "addresses": [{"ip": a} for a in addresses],
                "notReadyAddresses": [{"ip": a} for a in not_ready or []],
                "ports": ports,
            }
        ],
    }

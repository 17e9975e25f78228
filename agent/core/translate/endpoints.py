"""Service ports and the ready endpoints that serve each of them.

Endpoints come from the Service's EndpointSlices or, without any, from its core/v1
Endpoints; a named targetPort is resolved the way kube-proxy resolves it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from agent.core import grammar
from agent.core.addresses import endpoint_reason
from agent.core.model import IPAddress, Protocol, Reason
from agent.core.snapshot import Key, Obj, Snapshot
from agent.core.translate.common import Rejections, Site, as_list, as_mapping, as_str, meta_of


class Port(NamedTuple):
    """A Service port, validated (a tuple: see ``Endpoint``)."""

    name: str
    port: int
    protocol: Protocol
    target: int | str


class Endpoint(NamedTuple):
    """One ready endpoint serving a port (a tuple: a large cluster makes tens of
    thousands, and a frozen dataclass costs four times as much to make)."""

    address: IPAddress
    port: int
    node: str | None


def service_ports(service: Obj, ref: str, *, rej: Rejections) -> list[Port]:
    ports: list[Port] = []
    site = rej.on("Service", ref)
    for index, raw in enumerate(as_list(as_mapping(service.get("spec")).get("ports"))):
        port = _service_port(as_mapping(raw), f"spec.ports[{index}]", site=site)
        if port is not None:
            ports.append(port)
    return ports


def _service_port(raw: Mapping[str, Any], key: str, *, site: Site) -> Port | None:
    name = raw.get("name") or ""
    if not isinstance(name, str) or (name and not grammar.IANA_SVC_NAME.match(name)):
        site.add(Reason.BAD_PORT, key=f"{key}.name", reason="not a valid port name")
        return None
    try:
        protocol = Protocol(raw.get("protocol") or "TCP")
    except ValueError:
        site.add(Reason.BAD_PROTOCOL, key=f"{key}.protocol", reason="must be TCP, UDP or SCTP")
        return None
    port = site.parse(grammar.parse_port, raw.get("port"), code=Reason.BAD_PORT, key=f"{key}.port")
    if port is None:
        return None
    target = raw.get("targetPort", port)
    if isinstance(target, str) and target.isdigit():
        target = int(target)
    if isinstance(target, str):
        if not grammar.IANA_SVC_NAME.match(target):
            site.add(
                Reason.BAD_PORT, key=f"{key}.targetPort", reason="not a port number or port name"
            )
            return None
    else:
        target = site.parse(
            grammar.parse_port, target, code=Reason.BAD_PORT, key=f"{key}.targetPort"
        )
        if target is None:
            return None
    return Port(name=name, port=port, protocol=protocol, target=target)


def _ready(conditions: Mapping[str, Any]) -> bool:
    # EndpointSlice API: a nil "ready" is unknown and consumers treat it as ready;
    # terminating endpoints are never served, whatever "ready" says.
    return conditions.get("ready") is not False and conditions.get("terminating") is not True


def _target_number(ports: object, port: Port) -> object:
    """The endpoint port serving ``port``: the one with the Service port's name and
    protocol, as kube-proxy matches them (how a named targetPort is resolved)."""
    for entry in as_list(ports):
        entry = as_mapping(entry)
        if (entry.get("name") or "") == port.name and (
            entry.get("protocol") or "TCP"
        ) == port.protocol.value:
            return entry.get("port")
    return None


def _slice_endpoints(
    slices: Iterable[Obj], port: Port, *, family: int | None, rej: Rejections
) -> list[Endpoint]:
    found: list[Endpoint] = []
    for item in slices:
        address_type = item.get("addressType")
        if address_type == "IPv4":
            version = 4
        elif address_type == "IPv6":
            version = 6
        else:
            continue
        if family is not None and version != family:
            continue
        meta = meta_of(item)
        site = rej.on("EndpointSlice", f"{meta.get('namespace')}/{meta.get('name')}")
        number = _port_number(item.get("ports"), port, site=site, key="ports.port")
        if number is None:
            continue
        # This loop runs for every endpoint of the cluster: the reads of ``as_mapping``
        # and ``_ready`` are written out, and keys are spelled only for a rejection.
        for index, ep in enumerate(as_list(item.get("endpoints"))):
            if type(ep) is not dict:
                ep = as_mapping(ep)
            addresses = ep.get("addresses")
            if not addresses or type(addresses) is not list:
                continue
            conditions = ep.get("conditions")
            if conditions and not _ready(as_mapping(conditions)):
                continue
            # addresses of one endpoint are fungible; kube-proxy uses the first
            try:
                address = grammar.parse_ip(addresses[0])
            except ValueError as err:
                site.add(Reason.BAD_ADDRESS, key=f"endpoints[{index}].addresses", reason=str(err))
                continue
            if address.version != version:
                site.add(
                    Reason.ADDRESS_FAMILY, key=f"endpoints[{index}]", reason="wrong address family"
                )
                continue
            found.append(Endpoint(address, number, as_str(ep.get("nodeName"))))
    return found


def _core_endpoints(
    endpoints: Obj, port: Port, *, family: int | None, rej: Rejections
) -> list[Endpoint]:
    site = rej.on(
        "Endpoints", f"{meta_of(endpoints).get('namespace')}/{meta_of(endpoints).get('name')}"
    )
    found: list[Endpoint] = []
    for s_index, subset in enumerate(as_list(endpoints.get("subsets"))):
        subset = as_mapping(subset)
        number = _port_number(subset.get("ports"), port, site=site, key=f"subsets[{s_index}].ports")
        if number is None:
            continue
        # notReadyAddresses are left out on purpose: only ready endpoints serve
        for a_index, entry in enumerate(as_list(subset.get("addresses"))):
            entry = as_mapping(entry)
            try:
                address = grammar.parse_ip(entry.get("ip"))
            except ValueError as err:
                key = f"subsets[{s_index}].addresses[{a_index}].ip"
                site.add(Reason.BAD_ADDRESS, key=key, reason=str(err))
                continue
            if family is not None and address.version != family:
                continue
            found.append(Endpoint(address, number, as_str(entry.get("nodeName"))))
    return found


def _port_number(ports: object, port: Port, *, site: Site, key: str) -> int | None:
    """The valid endpoint port serving ``port``, or None (none serves it, or it is bad)."""
    number = _target_number(ports, port)
    if number is None:
        return None
    return site.parse(grammar.parse_port, number, code=Reason.BAD_PORT, key=key)


def endpoint_objects(snapshot: Snapshot, service: Key) -> tuple[bool, tuple[Obj, ...]]:
    """What a Service's endpoints come from: (True, its slices), else (False, its
    core/v1 Endpoints), else (False, ())."""
    slices = snapshot.endpoint_slices.get(service)
    if slices:
        return True, tuple(slices)
    endpoints = snapshot.endpoints.get(service)
    return False, ((endpoints,) if endpoints is not None else ())


def endpoints_for(
    endpoint_objs: tuple[bool, tuple[Obj, ...]],
    *,
    port: Port,
    family: int | None,
    vips: frozenset[IPAddress],
    service: str,
    rej: Rejections,
) -> list[Endpoint]:
    """The ready endpoints serving ``port`` (sorted, each once), less those that may not
    be a real server (``agent.core.addresses.endpoint_reason``), which are reported on
    the Service: a selectorless Service's hand-written endpoints are where they come from.
    """
    from_slices, objs = endpoint_objs
    if from_slices:
        found = _slice_endpoints(objs, port, family=family, rej=rej)
    elif objs:
        found = _core_endpoints(objs[0], port, family=family, rej=rej)
    else:
        return []
    unique = {(e.address.version, int(e.address), e.port): e for e in found}
    out: list[Endpoint] = []
    for key in sorted(unique):
        endpoint = unique[key]
        why = endpoint_reason(endpoint.address, vips)
        if why is None:
            out.append(endpoint)
            continue
        rej.add(
            Reason.BAD_ENDPOINT,
            kind="Service",
            obj=service,
            key=f"endpoints (port {port.name or port.port})",
            reason=f"endpoint {endpoint.address} {why}; not a real server",
        )
    return out

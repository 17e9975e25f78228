"""VIP requests: which address each source asks for, for which Service, by which method.

Sources, in the order their requests are served: the vip-configmap (cluster admins'),
then Services of type LoadBalancer sorted by namespace/name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from agent.core import grammar
from agent.core.model import IPAddress, Method, Reason, ServiceVips
from agent.core.snapshot import Key, Snapshot
from agent.core.translate.common import Rejections, as_mapping, meta_of
from agent.settings import Settings

ANNOTATION_LB_IPS = "kube-vip.io/loadbalancerIPs"
ANNOTATION_METHOD = "vip-agent.io/method"


@dataclass(frozen=True)
class VipRequest:
    vip: IPAddress
    service: Key | None
    method: Method | None
    kind: str
    obj: str
    key: str


def parse_configmap_key(key: str) -> IPAddress:
    """A vip-configmap key: an IPv4 address, or IPv6 with '-' in place of ':'."""
    text = key.replace("-", ":") if "-" in key else key
    return grammar.parse_ip(text)


def configmap_requests(snapshot: Snapshot, settings: Settings, rej: Rejections) -> list[VipRequest]:
    namespace, name = settings.configmap_ref
    cm = snapshot.configmaps.get((namespace, name))
    if cm is None:
        return []
    ref = f"{namespace}/{name}"
    data = cm.get("data") or {}
    if not isinstance(data, Mapping):
        rej.add(Reason.BAD_ENTRY, kind="ConfigMap", obj=ref, key="data", reason="not a mapping")
        return []
    out: list[VipRequest] = []
    for key in sorted(data, key=str):
        value = data[key]
        if not isinstance(key, str):
            rej.add(
                Reason.BAD_ENTRY,
                kind="ConfigMap",
                obj=ref,
                key=str(key),
                reason="key is not a string",
            )
            continue
        try:
            vip = parse_configmap_key(key)
        except ValueError:
            rej.add(
                Reason.BAD_ADDRESS,
                kind="ConfigMap",
                obj=ref,
                key=key,
                reason="not an IP address (IPv6: write '-' for ':')",
            )
            continue
        if not isinstance(value, str):
            rej.add(
                Reason.BAD_ENTRY, kind="ConfigMap", obj=ref, key=key, reason="value is not a string"
            )
            continue
        target, _, method_text = value.strip().partition(":")
        if not target:
            if method_text:
                rej.add(
                    Reason.BAD_ENTRY,
                    kind="ConfigMap",
                    obj=ref,
                    key=key,
                    reason="a method needs a namespace/service",
                )
                continue
            out.append(VipRequest(vip, None, None, "ConfigMap", ref, key))
            continue
        svc_ns, slash, svc_name = target.partition("/")
        if (
            not slash
            or not grammar.DNS_LABEL.match(svc_ns)
            or not grammar.DNS_LABEL.match(svc_name)
        ):
            rej.add(
                Reason.BAD_ENTRY,
                kind="ConfigMap",
                obj=ref,
                key=key,
                reason="value must be namespace/service[:NAT|DR|TUN|PROXY]",
            )
            continue
        try:
            method = Method(method_text.upper()) if method_text else Method.NAT
        except ValueError:
            rej.add(
                Reason.BAD_METHOD,
                kind="ConfigMap",
                obj=ref,
                key=key,
                reason="method must be NAT, DR, TUN or PROXY",
            )
            continue
        out.append(VipRequest(vip, (svc_ns, svc_name), method, "ConfigMap", ref, key))
    return out


def service_requests(
    snapshot: Snapshot, rej: Rejections
) -> tuple[list[VipRequest], tuple[ServiceVips, ...]]:
    """The requests of LoadBalancer Services, sorted by namespace/name, and the valid
    addresses each asks for (whether or not a request could be made of them: write-back
    clears the ingress of a Service none of whose VIPs is held)."""
    out: list[VipRequest] = []
    asked: list[ServiceVips] = []
    for key in sorted(snapshot.services):
        service = snapshot.services[key]
        spec = as_mapping(service.get("spec"))
        if spec.get("type") != "LoadBalancer":
            continue
        annotations = as_mapping(meta_of(service).get("annotations"))
        addresses = _addresses(spec, annotations)
        if addresses is not None:
            valid = tuple(dict.fromkeys(_valid(addresses[0])))
            if valid:
                asked.append(ServiceVips(service=key, requested=valid))
        namespace, name = key
        if not (grammar.DNS_LABEL.match(namespace) and grammar.DNS_LABEL.match(name)):
            rej.add(
                Reason.BAD_NAME,
                kind="Service",
                obj=repr(f"{namespace}/{name}")[1:-1],
                key="metadata.name",
                reason="not valid",
            )
            continue
        out.extend(_requests(key, annotations, addresses, rej))
    return out, tuple(asked)


def _addresses(
    spec: Mapping[str, Any], annotations: Mapping[str, Any]
) -> tuple[list[object], str] | None:
    """What a LoadBalancer Service writes its addresses as, and where (the key)."""
    if ANNOTATION_LB_IPS in annotations:
        raw = annotations[ANNOTATION_LB_IPS]
        texts = [t.strip() for t in raw.split(",")] if isinstance(raw, str) else [raw]
        return texts, f"annotations[{ANNOTATION_LB_IPS}]"
    if spec.get("loadBalancerIP"):
        return [spec.get("loadBalancerIP")], "spec.loadBalancerIP"
    return None


def _valid(texts: list[object]) -> Iterator[IPAddress]:
    for text in texts:
        with contextlib.suppress(ValueError):
            yield grammar.parse_ip(text)


def _requests(
    key: Key,
    annotations: Mapping[str, Any],
    addresses: tuple[list[object], str] | None,
    rej: Rejections,
) -> Iterator[VipRequest]:
    ref = "/".join(key)
    method: Method | None = None
    if ANNOTATION_METHOD in annotations:
        try:
            method = Method(str(annotations[ANNOTATION_METHOD]).strip().upper())
        except ValueError:
            rej.add(
                Reason.BAD_METHOD,
                kind="Service",
                obj=ref,
                key=f"annotations[{ANNOTATION_METHOD}]",
                reason="NAT, DR, TUN or PROXY",
            )
            return
    if addresses is None:
        return
    texts, source = addresses
    for text in texts:
        try:
            vip = grammar.parse_ip(text)
        except ValueError as err:
            rej.add(Reason.BAD_ADDRESS, kind="Service", obj=ref, key=source, reason=str(err))
            continue
        yield VipRequest(vip, key, method, "Service", ref, source)

"""VIP requests: which address each source asks for, for which Service, by which method.

Sources, in the order their requests are served (first come, first served): the
vip-configmap (cluster admins'), then Services of type LoadBalancer from the oldest
(``metadata.creationTimestamp``; uid, then namespace/name break ties, and a Service
without a timestamp counts as the newest).  Ordering by age, not by name, is what keeps
a Service created later from taking an address away by picking a name that sorts first.

Services of type LoadBalancer with a ``spec.loadBalancerClass`` other than ours
(``vip-agent.io/vip-agent``) belong to another load-balancer implementation and are left
alone entirely.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from agent.core import grammar
from agent.core.model import IPAddress, Method, Reason, Rejection, ServiceVips
from agent.core.snapshot import Key, Snapshot
from agent.core.translate.common import Rejections, Site, as_mapping, meta_of
from agent.settings import Settings

ANNOTATION_LB_IPS = "kube-vip.io/loadbalancerIPs"
ANNOTATION_METHOD = "vip-agent.io/method"
ANNOTATION_SHARED = "vip-agent.io/allow-shared-ip"
ANNOTATION_SHARED_METALLB = "metallb.universe.tf/allow-shared-ip"
LOAD_BALANCER_CLASS = "vip-agent.io/vip-agent"


class VipRequest(NamedTuple):
    """One VIP an object asks for (a tuple, as the model's per-Service records are)."""

    vip: IPAddress
    service: Key | None
    """The Service whose endpoints serve the VIP (None: held without virtual servers)."""
    method: Method | None
    kind: str
    obj: str
    """Who asks: the vip-configmap or the Service, as namespace/name."""
    key: str
    shared: str | None = None
    """A Service's allow-shared-ip value: Services of one namespace with the same value
    may share the VIP (on different ports)."""
    created: str | None = None
    """A Service's creationTimestamp, for the message that names the owner."""

    @property
    def owner(self) -> str:
        return f"{self.kind} {self.obj}"


@dataclass(frozen=True)
class ServiceAsks:
    """What LoadBalancer Services ask for, oldest first."""

    requests: list[VipRequest]
    asked: tuple[ServiceVips, ...]
    """Every Service asking for a valid address, by namespace/name."""
    unaddressed: tuple[Key, ...]
    """Services of ours that ask for no address at all (allocation's candidates)."""


def ours(spec: Mapping[str, Any]) -> bool:
    """A LoadBalancer Service of no class, or of ours (the rest are another LB's)."""
    cls = spec.get("loadBalancerClass")
    return cls is None or cls == LOAD_BALANCER_CLASS


def age_key(key: Key, service: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """Oldest first: creationTimestamp (RFC 3339 in UTC sorts as text), uid, namespace/name.
    No timestamp sorts last ('~' follows every digit)."""
    meta = meta_of(service)
    created = meta.get("creationTimestamp")
    uid = meta.get("uid")
    return (
        created if isinstance(created, str) else "~",
        uid if isinstance(uid, str) else "",
        *key,
    )


def parse_configmap_key(key: str) -> IPAddress:
    """A vip-configmap key: an IPv4 address, or IPv6 with '-' in place of ':'."""
    text = key.replace("-", ":") if "-" in key else key
    return grammar.parse_ip(text)


EntryMemo = dict[tuple[str, str, str], tuple["VipRequest | None", tuple[Rejection, ...]]]
"""vip-configmap entries already read: (ConfigMap, key, value) -> (request, rejections)."""


def configmap_requests(
    snapshot: Snapshot, settings: Settings, *, rej: Rejections, memo: EntryMemo | None = None
) -> list[VipRequest]:
    """The vip-configmap's requests, in key order.  With ``memo`` (kept by the caller) an
    entry read last time is not read again, and gives the very same request object; the
    memo is left holding this ConfigMap's entries alone.  Without one, entries are read
    straight into ``rej``: nothing is kept."""
    namespace, name = settings.configmap_ref
    cm = snapshot.configmaps.get((namespace, name))
    if cm is None:
        return []
    ref = f"{namespace}/{name}"
    site = rej.on("ConfigMap", ref)
    data = cm.get("data") or {}
    if not isinstance(data, Mapping):
        site.add(Reason.BAD_ENTRY, key="data", reason="not a mapping")
        return []
    seen: EntryMemo = {}
    out: list[VipRequest] = []
    for key in sorted(data, key=str):
        if not isinstance(key, str):
            site.add(Reason.BAD_ENTRY, key=str(key), reason="key is not a string")
            continue
        value = data[key]
        if memo is None or not isinstance(value, str):
            request = _configmap_request(key, value, ref=ref, site=site)
        else:
            entry = memo.get((ref, key, value))
            if entry is None:
                own = Rejections()
                found = _configmap_request(key, value, ref=ref, site=own.on("ConfigMap", ref))
                entry = (found, tuple(own.items))
            seen[ref, key, value] = entry
            request = entry[0]
            rej.items.extend(entry[1])
        if request is not None:
            out.append(request)
    if memo is not None:
        memo.clear()
        memo.update(seen)
    return out


def _configmap_request(key: str, value: object, *, ref: str, site: Site) -> VipRequest | None:
    """One vip-configmap entry: ``VIP: namespace/service[:METHOD]`` or ``VIP: ""``."""
    try:
        vip = parse_configmap_key(key)
    except ValueError:
        site.add(Reason.BAD_ADDRESS, key=key, reason="not an IP address (IPv6: write '-' for ':')")
        return None
    if not isinstance(value, str):
        site.add(Reason.BAD_ENTRY, key=key, reason="value is not a string")
        return None
    target, _, method_text = value.strip().partition(":")
    if not target:
        if method_text:
            site.add(Reason.BAD_ENTRY, key=key, reason="a method needs a namespace/service")
            return None
        return VipRequest(vip, None, None, "ConfigMap", ref, key)
    svc_ns, slash, svc_name = target.partition("/")
    if not slash or not grammar.DNS_LABEL.match(svc_ns) or not grammar.DNS_LABEL.match(svc_name):
        site.add(
            Reason.BAD_ENTRY, key=key, reason="value must be namespace/service[:NAT|DR|TUN|PROXY]"
        )
        return None
    try:
        method = Method(method_text.upper()) if method_text else Method.NAT
    except ValueError:
        site.add(Reason.BAD_METHOD, key=key, reason="method must be NAT, DR, TUN or PROXY")
        return None
    return VipRequest(vip, (svc_ns, svc_name), method, "ConfigMap", ref, key)


def service_requests(snapshot: Snapshot, rej: Rejections) -> ServiceAsks:
    """The requests of LoadBalancer Services, oldest first, the valid addresses each asks
    for (whether or not a request could be made of them: write-back clears the ingress of
    a Service none of whose VIPs is held), and the Services that ask for none."""
    out: list[VipRequest] = []
    asked: list[ServiceVips] = []
    unaddressed: list[Key] = []
    lbs = [
        (key, service)
        for key, service in snapshot.services.items()
        if as_mapping(service.get("spec")).get("type") == "LoadBalancer"
        and ours(as_mapping(service.get("spec")))
    ]
    lbs.sort(key=lambda item: age_key(*item))
    for key, service in lbs:
        spec = as_mapping(service.get("spec"))
        annotations = as_mapping(meta_of(service).get("annotations"))
        addresses = _addresses(spec, annotations)
        if addresses is None:
            unaddressed.append(key)
        else:
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
        out.extend(_requests(key, service, addresses=addresses, rej=rej))
    asked.sort(key=lambda a: a.service)
    return ServiceAsks(requests=out, asked=tuple(asked), unaddressed=tuple(unaddressed))


def shared_key(annotations: Mapping[str, Any]) -> str | None:
    """The Service's allow-shared-ip value (ours, else MetalLB's), if any."""
    for name in (ANNOTATION_SHARED, ANNOTATION_SHARED_METALLB):
        value = annotations.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _addresses(
    spec: Mapping[str, Any], annotations: Mapping[str, Any]
) -> tuple[list[object], str] | None:
    """What a LoadBalancer Service writes its addresses as, and where (the key)."""
    raw = annotations.get(ANNOTATION_LB_IPS)
    blank = isinstance(raw, str) and not raw.strip()  # asks for nothing: as if absent
    if ANNOTATION_LB_IPS in annotations and not blank:
        texts: list[object] = [t.strip() for t in raw.split(",")] if isinstance(raw, str) else [raw]
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
    service: Mapping[str, Any],
    *,
    addresses: tuple[list[object], str] | None,
    rej: Rejections,
) -> Iterator[VipRequest]:
    ref = "/".join(key)
    meta = meta_of(service)
    annotations = as_mapping(meta.get("annotations"))
    created = meta.get("creationTimestamp")
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
        yield VipRequest(
            vip,
            key,
            method,
            "Service",
            ref,
            source,
            shared=shared_key(annotations),
            created=created if isinstance(created, str) else None,
        )

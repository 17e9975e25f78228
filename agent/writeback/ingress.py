"""LoadBalancer ingress: ``status.loadBalancer.ingress`` of the Services that ask for VIPs.

A Service of type LoadBalancer asks for VIPs (``kube-vip.io/loadbalancerIPs``, else
``spec.loadBalancerIP``); translate reads them into ``DesiredState.service_vips`` and
says which of them the Service was admitted to (it owns or shares them), with the Nodes
eligible to hold them in ``DesiredState.nodes``.  Its desired ingress is those admitted
VIPs that the rendered state holds, sorted.  Every node computes the same list from the
same cluster state, and writes it when

* it holds the Service's lowest VIP now (``held_vips``: the addresses on the VIP
  interface, read through netlink): keepalived decides who that is, so the writer
  follows failovers without any election of our own; or
* it is the eligible node with the highest rendezvous priority for that VIP's VRRP
  instance (``translate.priority_for``, ties to the lowest name): the node keepalived
  prefers when all are healthy, so the ingress is written even when no node holds the
  VIP (keepalived not yet MASTER anywhere, ``--daemons none``).

A Service that still asks but none of whose VIPs it was admitted to gets its ingress
cleared by the rendezvous winner for ``service/NS/NAME``.  When a Service stops asking
(annotation removed, type changed), the node that last wrote clears what it wrote, and
only if the ingress is still exactly that (a JSON Patch ``test`` makes the server check),
so an ingress another load-balancer controller set is never touched; a restarted agent
has forgotten what it wrote and leaves such an ingress alone.

Level-triggered: a patch goes out whenever the watched Service's ingress differs from the
desired one.  The one exception is a patch already sent for the very same Service object
and version (uid, resourceVersion): the watch has not delivered its effect yet.  So a
Service deleted and created again under the same name, or an ingress cleared by hand, is
written again at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from agent.core.model import DesiredState, IPAddress
from agent.core.snapshot import Key, Obj, Snapshot
from agent.core.translate import priority_for
from agent.sources.kube import ApiError, KubeApi, Unreachable

log = logging.getLogger("vip-agent.writeback")

CONTROL_PLANE_INSTANCE = "control_plane"


def seen_version(obj: Obj) -> tuple[str, str]:
    """(uid, resourceVersion) of an object as watched."""
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    return str(meta.get("uid") or ""), str(meta.get("resourceVersion") or "")


def rendezvous_winner(nodes: Iterable[str], instance: str) -> str | None:
    """The node with the highest ``priority_for(node, instance)``; ties to the lowest name."""
    ranked = sorted(nodes, key=lambda n: (-priority_for(n, instance), n))
    return ranked[0] if ranked else None


def current_ingress(service: Obj) -> tuple[str, ...]:
    status = service.get("status")
    lb = status.get("loadBalancer") if isinstance(status, Mapping) else None
    ingress = lb.get("ingress") if isinstance(lb, Mapping) else None
    if not isinstance(ingress, list):
        return ()
    return tuple(str(i.get("ip")) for i in ingress if isinstance(i, Mapping) and i.get("ip"))


@dataclass(frozen=True)
class IngressChange:
    service: Key
    ingress: tuple[str, ...]
    """Desired ``ip`` values; empty clears."""
    current: tuple[str, ...]
    """What the Service has now (a clear is made conditional on it)."""
    conditional: bool = False
    """Clear only if the ingress is still ``current`` (JSON Patch test)."""
    seen: tuple[str, str] = ("", "")
    """(uid, resourceVersion) of the Service this change was planned from."""


def plan_ingress(
    *,
    snapshot: Snapshot,
    state: DesiredState,
    node_name: str,
    held_vips: set[IPAddress] | None,
) -> list[IngressChange]:
    """The ingress changes this node should make now (usually none).

    What each Service asks for and who is eligible come from translate
    (``state.service_vips``, ``state.nodes``); the snapshot only says what the Services'
    ingress is now.
    """
    served: dict[IPAddress, str] = {}
    for instance in state.instances:
        if instance.name == CONTROL_PLANE_INSTANCE:
            continue
        for vip in (*instance.vips, *instance.excluded_vips):
            served[vip] = instance.name
    eligible = state.nodes.eligible if state.nodes.known else (node_name,)
    if node_name not in eligible:
        return []  # renders no service VIPs: its empty view must not clear anyone's
    changes: list[IngressChange] = []
    for asked in state.service_vips:
        service = snapshot.services.get(asked.service)
        if service is None:
            continue
        # only what translate admitted for this Service: never another Service's VIP
        desired = sorted(
            (v for v in asked.accepted if v in served), key=lambda v: (v.version, int(v))
        )
        current = current_ingress(service)
        if desired:
            anchor = desired[0]
            # the holder writes, and so does the preferred owner, so the ingress is right
            # even when nobody holds the VIP yet (keepalived not MASTER anywhere, or
            # --daemons none); both write the same list, and a write that changes nothing
            # is not repeated (the apiserver makes no new resourceVersion for it)
            writer = (held_vips is not None and anchor in held_vips) or rendezvous_winner(
                eligible, served[anchor]
            ) == node_name
        else:
            namespace, name = asked.service
            writer = rendezvous_winner(eligible, f"service/{namespace}/{name}") == node_name
        wanted = tuple(str(v) for v in desired)
        if writer and wanted != current:
            changes.append(
                IngressChange(
                    service=asked.service,
                    ingress=wanted,
                    current=current,
                    conditional=not wanted,
                    seen=seen_version(service),
                )
            )
    return changes


def _ingress_patch(change: IngressChange) -> tuple[object, str]:
    if change.ingress:
        body = {"status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in change.ingress]}}}
        return body, "application/merge-patch+json"
    ops: list[dict[str, Any]] = []
    if change.conditional:
        # RFC 6902 test: the server applies the removal only if nobody changed the ingress
        ops.append(
            {
                "op": "test",
                "path": "/status/loadBalancer/ingress",
                "value": [{"ip": ip} for ip in change.current],
            }
        )
    ops.append({"op": "remove", "path": "/status/loadBalancer/ingress"})
    return ops, "application/json-patch+json"


class IngressWriter:
    """Applies ``plan_ingress`` through the API, without repeating a patch in flight."""

    def __init__(
        self, *, api: KubeApi, node_name: str, registry: CollectorRegistry | None = None
    ) -> None:
        self.api = api
        self.node_name = node_name
        self.registry = registry if registry is not None else CollectorRegistry()
        self.results = Counter(
            "vip_agent_ingress_writes_total",
            "Patches of a Service's status.loadBalancer.ingress, by result: ok, conflict "
            "(someone else changed it first; theirs now) or failed.",
            ["result"],
            registry=self.registry,
        )
        self.last_error: str | None = None
        self._written: dict[Key, tuple[str, ...]] = {}
        """Services whose ingress this process set, and to what."""
        self._sent: dict[Key, tuple[tuple[str, str], tuple[str, ...]]] = {}
        """((uid, resourceVersion) seen, desired) of the last patch of each Service."""

    def sync(
        self,
        *,
        snapshot: Snapshot,
        state: DesiredState,
        held_vips: set[IPAddress] | None,
    ) -> list[IngressChange]:
        changes = plan_ingress(
            snapshot=snapshot, state=state, node_name=self.node_name, held_vips=held_vips
        )
        planned = {c.service for c in changes}
        asking = {asked.service for asked in state.service_vips}
        for key in [k for k in self._sent if k not in snapshot.services]:
            del self._sent[key]
        # Services that stopped asking: clear what we wrote, if it is still there
        for key, wrote in sorted(self._written.items()):
            service = snapshot.services.get(key)
            if key in planned:
                continue
            if service is None:
                del self._written[key]
                continue
            if key in asking:
                continue
            if current_ingress(service) == wrote and wrote:
                changes.append(
                    IngressChange(key, (), wrote, conditional=True, seen=seen_version(service))
                )
            else:
                del self._written[key]
        done: list[IngressChange] = []
        try:
            for change in changes:
                if self._sent.get(change.service) == (change.seen, change.ingress):
                    continue  # sent for this very version; the watch has not caught up
                if self._patch(change):
                    done.append(change)
        except Unreachable as err:
            # the rest would wait out the same timeout one by one; the next pass retries
            self.results.labels(result="failed").inc()
            self.last_error = str(err)
            log.warning("ingress: API server unreachable (%s); trying again later", err)
        return done

    def _patch(self, change: IngressChange) -> bool:
        namespace, name = change.service
        body, content_type = _ingress_patch(change)
        path = f"/api/v1/namespaces/{namespace}/services/{name}/status"
        try:
            self.api.request("PATCH", path, body=body, content_type=content_type)
        except ApiError as err:
            if err.status in (409, 422) and change.conditional:
                # the test op failed: someone changed the ingress; theirs now
                self.results.labels(result="conflict").inc()
                self._written.pop(change.service, None)
                return False
            if err.status == 404:
                return False  # deleted meanwhile
            self.results.labels(result="failed").inc()
            self.last_error = str(err)
            level = logging.ERROR if err.status == 403 else logging.WARNING
            hint = (
                ' (RBAC must allow verb "patch" on "services/status")' if err.status == 403 else ""
            )
            log.log(level, "ingress of Service %s/%s: %s%s", namespace, name, err, hint)
            return False
        self.results.labels(result="ok").inc()
        self._sent[change.service] = (change.seen, change.ingress)
        if change.ingress:
            self._written[change.service] = change.ingress
            log.info("Service %s/%s: ingress %s", namespace, name, ", ".join(change.ingress))
        else:
            self._written.pop(change.service, None)
            log.info("Service %s/%s: ingress cleared", namespace, name)
        return True

"""What the agent writes back to the cluster: Service ingress status and Events.

LoadBalancer ingress
    A Service of type LoadBalancer asks for VIPs (``kube-vip.io/loadbalancerIPs``, else
    ``spec.loadBalancerIP``); translate reads them into ``DesiredState.service_vips``,
    with the Nodes eligible to hold them in ``DesiredState.nodes``.  Its desired
    ``status.loadBalancer.ingress`` is those of its VIPs that the rendered state holds
    (translate accepted them), sorted.  Every node computes the same list from the same
    cluster state, and exactly one node writes it:

    * the node that holds the Service's lowest VIP now (``held_vips``: the addresses on
      the VIP interface, which the caller reads through netlink); keepalived decides who
      that is, so the writer follows failovers without any election of our own;
    * when the caller cannot tell (``held_vips`` is None), the eligible node with the
      highest rendezvous priority for that VIP's VRRP instance
      (``translate.priority_for``, ties to the lowest name): the node keepalived prefers
      when all are healthy.

    A Service that still asks but none of whose VIPs is held (each was rejected) gets its
    ingress cleared by the rendezvous winner for ``service/NS/NAME``.  When a Service stops
    asking (annotation removed, type changed), the node that last wrote clears what it
    wrote, and only if the ingress is still exactly that (a JSON Patch ``test`` makes the
    server check), so an ingress another load-balancer controller set is never touched;
    a restarted agent has forgotten what it wrote and leaves such an ingress alone.

    A patch goes out only when the Service's current ingress differs from the desired one;
    our own write comes back through the watch and then they agree.  No churn, and the
    other nodes never write at all.

Events for rejected input
    A rejected ConfigMap key or Service field becomes one core/v1 Event (type Warning,
    reason ``InvalidVIP`` for a VIP that could not be used, ``Rejected`` otherwise) on that
    ConfigMap or Service, so ``kubectl describe`` shows it.  Deduplicated: the same
    object + key + reason is one Event; when it comes back after it had gone, or is still
    there ``repeat_after`` seconds later (Events expire after an hour), its ``count`` and
    ``lastTimestamp`` are patched instead of a new Event being made.  Rate limited: a token
    bucket allows ``per_minute`` writes a minute (burst the same); what the bucket refuses
    is tried again on a later reconcile, never queued without bound.  One node reports (the
    rendezvous winner among the eligible nodes), so a 50-node cluster writes one Event per
    problem, not 50.  Event names carry a per-process suffix as kubelet's do, so a restarted
    agent never collides with its predecessor's Events and needs no ``get`` permission.

Nothing here blocks the reconcile loop: ``WriteBack.submit`` stores the latest inputs and
wakes a worker thread, which also re-checks every ``resync_seconds`` (VRRP ownership moves
without any cluster event).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from agent.core.model import DesiredState, IPAddress, NodeSet, Rejection
from agent.core.snapshot import Key, Obj, Snapshot
from agent.core.translate import ANNOTATION_LB_IPS, priority_for
from agent.sources.kube import ApiError, KubeApi, Unreachable

log = logging.getLogger("vip-agent.writeback")

COMPONENT = "vip-agent"
CONTROL_PLANE_INSTANCE = "control_plane"
EVENTS_KEY = "vip-agent/events"
MESSAGE_LIMIT = 1024  # kubectl shows more, but an Event is no place for a flood of text
VIP_KEYS = ("spec.loadBalancerIP", f"annotations[{ANNOTATION_LB_IPS}]")


# --- who writes --------------------------------------------------------------------


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
            if held_vips is not None:
                writer = anchor in held_vips
            else:
                writer = rendezvous_winner(eligible, served[anchor]) == node_name
        else:
            namespace, name = asked.service
            writer = rendezvous_winner(eligible, f"service/{namespace}/{name}") == node_name
        wanted = tuple(str(v) for v in desired)
        if writer and wanted != current:
            changes.append(
                IngressChange(
                    service=asked.service, ingress=wanted, current=current, conditional=not wanted
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


# --- events ------------------------------------------------------------------------


def event_reason(rejection: Rejection) -> str:
    """``InvalidVIP`` when the rejected key is where a VIP is written, else ``Rejected``."""
    if rejection.kind == "ConfigMap" or rejection.key in VIP_KEYS:
        return "InvalidVIP"
    return "Rejected"


def event_reporter(nodes: NodeSet, node_name: str) -> bool:
    """Is this node the one that reports Events? (rendezvous over the eligible nodes)"""
    if not nodes.known:
        return True
    candidates = nodes.eligible or nodes.all
    return rendezvous_winner(candidates, EVENTS_KEY) in (node_name, None)


def _timestamp(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; ``take()`` is False when empty."""

    def __init__(self, *, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = float(burst)
        self.at = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class _Recorded:
    name: str
    namespace: str
    count: int
    last: float
    """clock() of the last write."""


EventKey = tuple[str, str, str, str]


class EventRecorder:
    """Deduplicated, rate-limited Warning Events for rejected input (module docstring)."""

    KINDS = ("ConfigMap", "Service")

    def __init__(
        self,
        *,
        api: KubeApi,
        node_name: str,
        per_minute: int = 10,
        repeat_after: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        suffix: str | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.api = api
        self.node_name = node_name
        self.repeat_after = repeat_after
        self.clock, self.wall = clock, wall
        self.bucket = TokenBucket(rate=per_minute / 60.0, burst=per_minute, clock=clock)
        self.suffix = suffix if suffix is not None else f"{int(wall() * 1e9):x}"
        self.registry = registry if registry is not None else CollectorRegistry()
        self.results = Counter(
            "vip_agent_events_total",
            "Kubernetes Events about rejected input, by result: created, patched (the same "
            "problem again), limited (held back by the rate limit, tried again on a later "
            "pass) or failed.",
            ["result"],
            registry=self.registry,
        )
        self.names: dict[EventKey, str] = {}
        """The Event made for each problem (object, key, reason)."""
        self.last_error: str | None = None
        self._recorded: dict[EventKey, _Recorded] = {}
        self._active: set[EventKey] = set()
        self._denied: set[str] = set()

    def record(self, rejections: Sequence[Rejection], snapshot: Snapshot) -> None:
        """Report what is rejected now; call after every reconcile (cheap when unchanged)."""
        current: dict[EventKey, Rejection] = {}
        for r in rejections:
            if r.kind in self.KINDS and r.obj.count("/") == 1:
                current.setdefault((r.kind, r.obj, r.key, r.reason), r)
        now = self.clock()
        try:
            for key in sorted(current):
                seen = self._recorded.get(key)
                if seen is None:
                    self._create(key, current[key], snapshot)
                elif key not in self._active or now - seen.last >= self.repeat_after:
                    self._repeat(key, current[key], seen)
        except Unreachable as err:
            # the rest would wait out the same timeout one by one; try again next pass
            self.results.labels(result="failed").inc()
            self.last_error = str(err)
            log.warning("events: API server unreachable (%s); trying again later", err)
            return
        self._active = set(current)

    def _involved(self, rejection: Rejection, snapshot: Snapshot) -> dict[str, Any] | None:
        namespace, _, name = rejection.obj.partition("/")
        store = snapshot.configmaps if rejection.kind == "ConfigMap" else snapshot.services
        obj = store.get((namespace, name))
        if obj is None:
            return None
        meta = obj.get("metadata")
        meta = meta if isinstance(meta, Mapping) else {}
        involved = {"apiVersion": "v1", "kind": rejection.kind, "namespace": namespace}
        involved["name"] = name
        # kubectl describe finds Events by involvedObject uid as well as name
        for src, dst in (("uid", "uid"), ("resourceVersion", "resourceVersion")):
            if isinstance(meta.get(src), str):
                involved[dst] = meta[src]
        return involved

    def _create(self, key: EventKey, rejection: Rejection, snapshot: Snapshot) -> None:
        involved = self._involved(rejection, snapshot)
        if involved is None:
            return  # the object went away before we could say what was wrong with it
        if not self.bucket.take():
            self.results.labels(result="limited").inc()
            return
        digest = hashlib.sha256("\0".join((self.node_name, *key)).encode()).hexdigest()[:16]
        name = f"{involved['name'][:200]}.{digest}{self.suffix}"
        namespace = involved["namespace"]
        stamp = _timestamp(self.wall())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": involved,
            "reason": event_reason(rejection),
            "message": str(rejection)[:MESSAGE_LIMIT],
            "type": "Warning",
            "count": 1,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "source": {"component": COMPONENT, "host": self.node_name},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.node_name,
        }
        if self._send("create", "POST", f"/api/v1/namespaces/{namespace}/events", body, None):
            self._recorded[key] = _Recorded(name, namespace, 1, self.clock())
            self.results.labels(result="created").inc()
            self.names[key] = name

    def _repeat(self, key: EventKey, rejection: Rejection, seen: _Recorded) -> None:
        if not self.bucket.take():
            self.results.labels(result="limited").inc()
            return
        body = {
            "count": seen.count + 1,
            "lastTimestamp": _timestamp(self.wall()),
            "message": str(rejection)[:MESSAGE_LIMIT],
        }
        path = f"/api/v1/namespaces/{seen.namespace}/events/{seen.name}"
        if self._send("patch", "PATCH", path, body, "application/merge-patch+json"):
            seen.count += 1
            seen.last = self.clock()
            self.results.labels(result="patched").inc()

    def _send(
        self, verb: str, method: str, path: str, body: object, content_type: str | None
    ) -> bool:
        try:
            self.api.request(method, path, body=body, content_type=content_type)
        except ApiError as err:
            self.results.labels(result="failed").inc()
            self.last_error = str(err)
            if err.status == 403:
                if verb not in self._denied:
                    self._denied.add(verb)
                    log.error(
                        'forbidden: cannot %s events (%s); RBAC must allow verb "%s" on "events"',
                        verb,
                        err.message,
                        verb,
                    )
            else:
                log.warning("event %s %s: %s", verb, path, err)
            return False
        return True


# --- the worker ------------------------------------------------------------------------


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
        self._sent: dict[Key, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        """(desired, current seen) of the last patch, until the watch shows its effect."""

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
                changes.append(IngressChange(key, (), wrote, conditional=True))
            else:
                del self._written[key]
        done: list[IngressChange] = []
        try:
            for change in changes:
                if self._sent.get(change.service) == (change.ingress, change.current):
                    continue  # already asked for exactly this; the watch has not caught up
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
        self._sent[change.service] = (change.ingress, change.current)
        if change.ingress:
            self._written[change.service] = change.ingress
            log.info("Service %s/%s: ingress %s", namespace, name, ", ".join(change.ingress))
        else:
            self._written.pop(change.service, None)
            log.info("Service %s/%s: ingress cleared", namespace, name)
        return True


class WriteBack:
    """Runs the IngressWriter and the EventRecorder off the reconcile loop's thread.

    ``submit`` is the ``Agent(after_reconcile=...)`` hook: it stores the latest snapshot
    and state and wakes the worker.  The worker also wakes every ``resync_seconds``,
    because the VIP holder changes with VRRP, not with cluster events.
    """

    def __init__(
        self,
        *,
        ingress: IngressWriter | None,
        events: EventRecorder | None,
        held_vips: Callable[[], set[IPAddress] | None],
        node_name: str,
        resync_seconds: float = 5.0,
    ) -> None:
        self.ingress = ingress
        self.events = events
        self.held_vips = held_vips
        self.node_name = node_name
        self.resync_seconds = resync_seconds
        self._lock = threading.Lock()
        self._latest: tuple[Snapshot, DesiredState] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def submit(self, snapshot: Snapshot, state: DesiredState) -> None:
        with self._lock:
            self._latest = (snapshot, state)
        self._wake.set()

    def run_once(self) -> None:
        """One pass with the latest inputs (the worker's body; tests call it directly)."""
        with self._lock:
            latest = self._latest
        if latest is None:
            return
        snapshot, state = latest
        if self.ingress is not None:
            try:
                held = self.held_vips()
            except Exception as err:  # pyroute2's NetlinkError is not an OSError
                log.warning("cannot read the VIPs this node holds (%s); using priorities", err)
                held = None
            self.ingress.sync(snapshot=snapshot, state=state, held_vips=held)
        # every pass, not only after a reconcile: what the rate limit held back goes now
        if self.events is not None and event_reporter(state.nodes, self.node_name):
            self.events.record(state.rejections, snapshot)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="writeback", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.resync_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.run_once()
            except Exception:  # write-back is best effort; it must not die
                log.exception("write-back failed")

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

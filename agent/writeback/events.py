"""Kubernetes Events for rejected input, reported by the holder of the agents' Lease.

A rejected ConfigMap key or Service field becomes one core/v1 Event (type Warning,
reason ``InvalidVIP`` for a VIP that could not be used, ``Rejected`` otherwise) on that
ConfigMap or Service, so ``kubectl describe`` shows it.

* One reporter: the agent holding the Lease (``agent.lease``, the same one that
  allocates addresses), so a 50-node cluster writes one Event per problem, not 50, and
  an agent that runs on only some Nodes still reports (a rendezvous over all Nodes once
  chose a Node without an agent, and no Event ever appeared).
* Deterministic names: ``<object>.<hash of kind, object, uid, key, reason>``.  The same
  problem is the same Event whoever reports it and however often agents restart: a
  create that finds it existing (409) patches it instead, so no Event is duplicated,
  and no ``get`` permission is needed (such an Event's count is not read, so a patch
  after a restart moves ``lastTimestamp`` and leaves ``count`` alone).
* Deduplicated: when a problem comes back after it had gone, or is still there
  ``repeat_after`` seconds later (Events expire after an hour), the Event is patched.
* Rate limited: a token bucket allows ``per_minute`` writes a minute (burst the same);
  what it refuses is tried again on a later pass, never queued without bound.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from agent.core.model import Reason, Rejection
from agent.core.snapshot import Snapshot
from agent.core.translate import ANNOTATION_LB_IPS
from agent.sources.kube import ApiError, KubeApi, Unreachable

log = logging.getLogger("vip-agent.events")

COMPONENT = "vip-agent"
MESSAGE_LIMIT = 1024  # kubectl shows more, but an Event is no place for a flood of text
VIP_KEYS = ("spec.loadBalancerIP", f"annotations[{ANNOTATION_LB_IPS}]")


def event_name(involved: Mapping[str, Any], key: tuple[str, ...]) -> str:
    """The same name for the same problem on the same object, on every node, every run."""
    parts = (str(involved.get("uid") or ""), *key)
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    return f"{str(involved['name'])[:200]}.{digest}"


def event_reason(rejection: Rejection) -> str:
    """``AllocationFailed`` for a Service the pools could not serve, ``InvalidVIP`` when
    the rejected key is where a VIP is written, else ``Rejected``."""
    if rejection.code is Reason.POOL_EXHAUSTED:
        return "AllocationFailed"
    if rejection.kind == "ConfigMap" or rejection.key in VIP_KEYS:
        return "InvalidVIP"
    return "Rejected"


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
    count: int | None
    """None when the Event existed before this agent started (its count is not read)."""
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
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.api = api
        self.node_name = node_name
        self.repeat_after = repeat_after
        self.clock, self.wall = clock, wall
        self.bucket = TokenBucket(rate=per_minute / 60.0, burst=per_minute, clock=clock)
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
                    self._create(key, current[key], snapshot=snapshot)
                elif key not in self._active or now - seen.last >= self.repeat_after:
                    self._repeat(key, current[key], seen=seen)
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

    def _create(self, key: EventKey, rejection: Rejection, *, snapshot: Snapshot) -> None:
        involved = self._involved(rejection, snapshot)
        if involved is None:
            return  # the object went away before we could say what was wrong with it
        if not self.bucket.take():
            self.results.labels(result="limited").inc()
            return
        name = event_name(involved, key)
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
        created = self._send(
            "create", "POST", f"/api/v1/namespaces/{namespace}/events", body, None, exists_ok=True
        )
        if created is None:
            # made before this agent started (a restart, or another node held the Lease):
            # the same problem is the same Event; the next pass patches it (a repeat that
            # is due at once), none is duplicated
            self._recorded[key] = _Recorded(name, namespace, None, float("-inf"))
            self.names[key] = name
        elif created:
            self._recorded[key] = _Recorded(name, namespace, 1, self.clock())
            self.results.labels(result="created").inc()
            self.names[key] = name

    def _repeat(self, key: EventKey, rejection: Rejection, *, seen: _Recorded) -> None:
        if not self.bucket.take():
            self.results.labels(result="limited").inc()
            return
        body: dict[str, Any] = {
            "lastTimestamp": _timestamp(self.wall()),
            "message": str(rejection)[:MESSAGE_LIMIT],
        }
        if seen.count is not None:
            body["count"] = seen.count + 1
        path = f"/api/v1/namespaces/{seen.namespace}/events/{seen.name}"
        if self._send("patch", "PATCH", path, body, "application/merge-patch+json"):
            seen.count = None if seen.count is None else seen.count + 1
            seen.last = self.clock()
            self.results.labels(result="patched").inc()

    def _send(
        self,
        verb: str,
        method: str,
        path: str,
        body: object,
        content_type: str | None,
        *,
        exists_ok: bool = False,
    ) -> bool | None:
        """True when sent; False when it failed; None when it exists already (409)."""
        try:
            self.api.request(method, path, body=body, content_type=content_type)
        except ApiError as err:
            if exists_ok and err.status == 409:
                return None
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

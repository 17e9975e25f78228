"""Leader election on a ``coordination.k8s.io/v1`` Lease, the way client-go does it.

Some work must be done by one agent at a time: handing out pool addresses (two agents
must never give the same address to two Services) and reporting Events (one Event per
problem, not one per node).  The agents elect one of themselves with a Lease
(``kube-system/vip-agent-ipam`` by default), as client-go's ``leaderelection`` does:

* the holder renews the Lease every ``retry_period``; it counts itself the leader only
  while its last successful renewal is younger than ``renew_deadline``, so an agent cut
  off from the API server stops acting before anyone else may start;
* another agent takes the Lease over once the record it last *observed* has not changed
  for ``duration`` seconds, measured on its own clock (never by comparing the holder's
  timestamps with its own: node clocks disagree);
* every write is a PUT carrying the resourceVersion that was read, so two agents racing
  for an expired Lease cannot both win (the API server refuses the second with 409);
* on a clean shutdown the holder releases the Lease (empty holder, duration 1 s), so
  another agent takes over at once instead of after ``duration``.

The holder identity is ``<node name>_<random>``: the node shows who holds it, the suffix
keeps a restarted agent from mistaking its predecessor's Lease for its own.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.sources.kube import ApiError, KubeApi, Unreachable

log = logging.getLogger("vip-agent.lease")


@dataclass(frozen=True)
class LeaseTimings:
    duration: float = 5.0
    """Seconds without a renewal after which another agent may take the Lease over."""
    renew_deadline: float = 3.0
    """The holder stops acting when it could not renew for this long (< duration)."""
    retry_period: float = 1.0
    """Seconds between two attempts to acquire or renew."""


def micro_time(wall: float) -> str:
    """A Kubernetes MicroTime: RFC 3339 with microseconds, UTC."""
    whole = int(wall)
    fraction = int((wall - whole) * 1e6)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{fraction:06d}Z"


class LeaseElector:
    """Acquires and renews one Lease; ``is_leader()`` says whether to act now."""

    def __init__(
        self,
        *,
        api: KubeApi,
        namespace: str,
        name: str,
        node_name: str,
        timings: LeaseTimings = LeaseTimings(),
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.namespace, self.name = namespace, name
        self.identity = f"{node_name}_{secrets.token_hex(4)}"
        self.timings = timings
        self._listeners: list[Callable[[bool], None]] = []
        self.clock, self.wall = clock, wall
        self.holder: str | None = None
        """Who holds the Lease as last seen (for status)."""
        self.last_error: str | None = None
        self._renewed: float | None = None
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._leader = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"

    def is_leader(self) -> bool:
        return self._leader and self._fresh()

    def _fresh(self) -> bool:
        """The last successful renewal is younger than the renew deadline."""
        renewed = self._renewed
        return renewed is not None and self.clock() - renewed < self.timings.renew_deadline

    # --- one round -------------------------------------------------------------------

    def try_once(self) -> bool:
        """Acquire or renew once; True when this agent holds the Lease now."""
        try:
            held = self._acquire_or_renew()
            self.last_error = None
        except (ApiError, Unreachable) as err:
            if self.last_error != str(err):
                log.warning("lease %s/%s: %s", self.namespace, self.name, err)
            self.last_error = str(err)
            held = False
        self._set_leader(held and self._fresh())
        return self._leader

    def _acquire_or_renew(self) -> bool:
        try:
            lease = self.api.request("GET", self.path)
        except ApiError as err:
            if err.status != 404:
                raise
            return self._create()
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or None
        self.holder = holder
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
        now = self.clock()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = float(spec.get("leaseDurationSeconds") or self.timings.duration)
        expired = holder is None or now - self._observed_at >= duration
        if holder != self.identity and not expired:
            return False
        return self._update(lease, taking_over=holder != self.identity)

    def _body(self, acquire: str, transitions: int) -> dict[str, Any]:
        stamp = micro_time(self.wall())
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.timings.duration)),
            "acquireTime": acquire or stamp,
            "renewTime": stamp,
            "leaseTransitions": transitions,
        }

    def _create(self) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": self._body("", 0),
        }
        path = self.path.rsplit("/", 1)[0]
        try:
            self.api.request("POST", path, body=body)
        except ApiError as err:
            if err.status == 409:  # another agent created it first
                return False
            raise
        self._took()
        return True

    def _update(self, lease: dict[str, Any], *, taking_over: bool) -> bool:
        spec = lease.get("spec") or {}
        transitions = int(spec.get("leaseTransitions") or 0) + (1 if taking_over else 0)
        acquire = "" if taking_over else str(spec.get("acquireTime") or "")
        body = {**lease, "spec": {**spec, **self._body(acquire, transitions)}}
        try:
            self.api.request("PUT", self.path, body=body)
        except ApiError as err:
            if err.status == 409:  # someone else wrote it since we read it
                return False
            raise
        if taking_over:
            self._took()
        self._renewed = self.clock()
        return True

    def _took(self) -> None:
        self._renewed = self.clock()
        self.holder = self.identity
        log.info("lease %s/%s: acquired as %s", self.namespace, self.name, self.identity)

    def subscribe(self, callback: Callable[[bool], None]) -> None:
        """``callback(leader)`` whenever this agent becomes or stops being the holder."""
        self._listeners.append(callback)

    def _set_leader(self, leader: bool) -> None:
        if leader != self._leader:
            self._leader = leader
            if not leader:
                log.info("lease %s/%s: no longer the holder", self.namespace, self.name)
            for callback in self._listeners:
                callback(leader)

    # --- the loop ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.try_once()
            self._stop.wait(self.timings.retry_period)

    def stop(self, *, release: bool = True) -> None:
        """Stop renewing; with ``release``, hand the Lease back so another takes over now."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if release and self._leader:
            self._release()
        self._set_leader(False)

    def _release(self) -> None:
        try:
            lease = self.api.request("GET", self.path)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return
            released = {**spec, "holderIdentity": None, "leaseDurationSeconds": 1}
            self.api.request("PUT", self.path, body={**lease, "spec": released})
            log.info("lease %s/%s: released", self.namespace, self.name)
        except (ApiError, Unreachable) as err:
            log.warning("lease %s/%s: not released (%s)", self.namespace, self.name, err)

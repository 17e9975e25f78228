"""What the agent writes back to the cluster, off the reconcile loop's thread.

``agent.writeback.ingress`` (Service status), ``.events`` (Events about rejected input)
and ``.allocation`` (addresses for Services that ask for none) each own one kind of
write; :class:`WriteBack` runs them.  ``WriteBack.submit`` is the reconcile loop's hook:
it stores the latest snapshot and state and wakes the worker, which also re-checks every
``resync_seconds`` (VRRP ownership and the Lease move without any cluster event).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from agent.core.model import DesiredState, IPAddress
from agent.core.snapshot import Snapshot
from agent.writeback.allocation import AddressWriter
from agent.writeback.events import EventRecorder
from agent.writeback.ingress import IngressWriter

log = logging.getLogger("vip-agent.writeback")


class WriteBack:
    """Runs the write-back parts off the reconcile loop's thread.

    Every agent writes ingress (``IngressWriter`` decides whose turn it is); only the
    holder of the Lease (``leader``) reports Events and writes allocations.

    ``submit`` is the ``Agent(after_reconcile=...)`` hook: it stores the latest snapshot
    and state and wakes the worker.  The worker also wakes every ``resync_seconds``,
    because the VIP holder changes with VRRP, not with cluster events.
    """

    def __init__(
        self,
        *,
        ingress: IngressWriter | None,
        events: EventRecorder | None,
        addresses: AddressWriter | None = None,
        leader: Callable[[], bool] = lambda: True,
        lease_holder: Callable[[], str | None] = lambda: None,
        lease_error: Callable[[], str | None] = lambda: None,
        held_vips: Callable[[], set[IPAddress] | None],
        node_name: str,
        resync_seconds: float = 5.0,
    ) -> None:
        self.ingress = ingress
        self.events = events
        self.addresses = addresses
        self.leader = leader
        self.lease_holder = lease_holder
        self.lease_error = lease_error
        self.held_vips = held_vips
        self.node_name = node_name
        self.resync_seconds = resync_seconds
        self._lock = threading.Lock()
        self._latest: tuple[Snapshot, DesiredState] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """Run a pass soon (the Lease changed hands: allocations and Events wait on it)."""
        self._wake.set()

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
        if not self.leader():
            return
        if self.addresses is not None:
            self.addresses.apply(state.allocations)
        # every pass, not only after a reconcile: what the rate limit held back goes now
        if self.events is not None:
            self.events.record(state.rejections, snapshot)

    def report(self) -> dict[str, Any]:
        """For status: who allocates and reports, and what last failed (None: fine)."""
        return {
            "leader": self.leader(),
            "lease_holder": self.lease_holder(),
            "lease_error": self.lease_error(),
            "ingress_error": self.ingress.last_error if self.ingress else None,
            "events_error": self.events.last_error if self.events else None,
            "allocation_error": self.addresses.last_error if self.addresses else None,
        }

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

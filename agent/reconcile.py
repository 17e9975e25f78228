"""The agent's loop: events in, one coalesced reconcile out, daemons reloaded when bytes change.

    source event ─┐
    template edit ├─> trigger ──(at once, or when the interval allows)──> reconcile:
    settings edit ┘      snapshot -> translate -> render -> apply (validate, swap)
                                                          -> reload changed daemons

* Bounded frequency (kube-proxy's BoundedFrequencyRunner): a change after a quiet moment
  is reconciled at once; passes start at most once per ``coalesce_seconds``, so events
  that arrive while a pass runs, or soon after it started, join the next pass.  A burst
  of a thousand EndpointSlice updates renders a few times, not a thousand, and a lone
  change never waits out a window.
* Identical output writes nothing and reloads nothing.
* Which files are rendered, which daemon a changed file reloads, each daemon's reload
  throttle and the order daemons start and stop in all come from the daemon modules'
  :class:`agent.daemons.ConfigFile` list; the code here names no daemon.
* keepalived reloads are throttled to one per ``keepalived_reload_interval``: a burst of
  changes ends in one reload with the last configuration, never in a stream of SIGHUPs
  (keepalived misbehaves when reloaded in quick succession).  The last change always
  lands: a throttled reload is kept pending, not dropped.
* In the loop, a reload and its confirmation run beside it, one at a time per daemon:
  keepalived takes seconds to confirm a reload of thousands of virtual servers, and the
  loop goes on rendering, checking and installing files meanwhile.  A file installed
  while its daemon reloads keeps the reload pending; the next one starts when the one in
  flight has ended and the throttle allows, and reads the last file.
* Any failure (a broken template, a file the checker rejects, a reload that is not
  confirmed) leaves the running configuration alone and is reported in ``status``.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agent.apply import Target, apply
from agent.core import render as render_mod
from agent.core.addresses import HostFacts
from agent.core.model import DesiredState, Rejection
from agent.core.snapshot import Snapshot
from agent.core.translate import PlanMemo, translate
from agent.daemons import CONFIG_FILES, ConfigFile, Daemon, ReloadOutcome
from agent.daemons.spec import outputs, start_order, stop_order
from agent.settings import LiveSettings, Settings

log = logging.getLogger("vip-agent.reconcile")


class Source(Protocol):
    error: str | None

    def start(self, notify: Callable[[], None]) -> None: ...

    def snapshot(self) -> Snapshot: ...

    def stop(self) -> None: ...


class Observer(Protocol):
    """What metrics and status want to hear about (see agent.telemetry.metrics)."""

    def reconciled(self, seconds: float, ok: bool) -> None: ...

    def rendered(self, state: DesiredState) -> None: ...

    def applied(self, changed: frozenset[str], errors: Mapping[str, str]) -> None: ...

    def reloaded(self, daemon: str, outcome: ReloadOutcome) -> None: ...


class NullObserver:
    """Hears everything, does nothing: a base for observers that want one event."""

    def reconciled(self, seconds: float, ok: bool) -> None:
        return None

    def rendered(self, state: DesiredState) -> None:
        return None

    def applied(self, changed: frozenset[str], errors: Mapping[str, str]) -> None:
        return None

    def reloaded(self, daemon: str, outcome: ReloadOutcome) -> None:
        return None


class Fanout:
    """Tells several observers, in order."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = observers

    def reconciled(self, seconds: float, ok: bool) -> None:
        for o in self.observers:
            o.reconciled(seconds, ok)

    def rendered(self, state: DesiredState) -> None:
        for o in self.observers:
            o.rendered(state)

    def applied(self, changed: frozenset[str], errors: Mapping[str, str]) -> None:
        for o in self.observers:
            o.applied(changed, errors)

    def reloaded(self, daemon: str, outcome: ReloadOutcome) -> None:
        for o in self.observers:
            o.reloaded(daemon, outcome)


@dataclass
class Status:
    """What happened last, for /healthz, ``vip-agent status`` and the logs."""

    reconciles: int = 0
    last_apply_ok: bool | None = None
    last_apply_wall: float | None = None
    last_error: str | None = None
    rejections: tuple[Rejection, ...] = ()
    state: DesiredState | None = None
    pending_reloads: set[str] = field(default_factory=set)
    reload_outcomes: dict[str, ReloadOutcome] = field(default_factory=dict)
    heartbeat: float | None = None
    """Clock time the loop last went round (liveness: /healthz)."""


class Agent:
    def __init__(
        self,
        *,
        settings: Settings | LiveSettings,
        source: Source,
        daemons: Mapping[str, Daemon],
        targets: Sequence[Target],
        config_files: Sequence[ConfigFile] = CONFIG_FILES,
        template_dirs: Callable[[], list[Path]],
        node_name: str,
        interface: str,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        after_reconcile: Callable[[Snapshot, DesiredState], None] | None = None,
        host: Callable[[], HostFacts] | None = None,
    ) -> None:
        self.live = settings if isinstance(settings, LiveSettings) else LiveSettings(settings)
        """The settings, read at each use: an edited config file takes effect next pass."""
        self.host = host
        """This node's own network, which no VIP may take (None: not known, a test)."""
        # told every translated state (write-back to the cluster); must return quickly
        self.after_reconcile = after_reconcile
        self.source = source
        self.daemons = dict(daemons)
        self.targets = list(targets)
        self.config_files = tuple(config_files)
        """What is rendered, and which daemon reads each file (targets say where it goes)."""
        self._outputs = outputs(self.config_files)
        self._file = {f.name: f for f in self.config_files}
        self._daemon = {f.daemon: f for f in self.config_files}
        unknown = sorted({t.name for t in self.targets} - self._file.keys())
        if unknown:
            raise ValueError(f"targets without a daemon module's file: {', '.join(unknown)}")
        self.template_dirs = template_dirs
        self.node_name = node_name
        self.interface = interface
        self.observer = observer or NullObserver()
        self.clock = clock
        self.wall = wall
        self.status = Status()
        self._wakeup = threading.Event()
        """Set by an event from the source (``trigger``) or a reload that ended."""
        self._changed = False
        """An event from the source came since the loop last looked."""
        self._last_reload: dict[str, float] = {}
        """When each daemon's last reload ended (its throttle counts from there)."""
        self._reloading: dict[str, threading.Thread] = {}
        """The reload in flight of each daemon, in the loop (at most one each)."""
        self._background = False
        """Reload beside the loop (``run``); a lone ``reconcile()`` reloads before it
        returns."""
        self._lock = threading.Lock()
        self._renderer_cache: render_mod.Renderer | None = None
        self._plans = PlanMemo()
        """What translate keeps between reconciles: one change recomputes one Service."""

    @property
    def settings(self) -> Settings:
        return self.live.get()

    # --- events -------------------------------------------------------------------

    def trigger(self) -> None:
        """Ask for a reconcile (thread-safe, cheap, coalesced)."""
        self._changed = True  # before the wakeup: the loop reads it after waking
        self._wakeup.set()

    # --- one reconcile --------------------------------------------------------------

    def reconcile(self) -> bool:
        """Render and apply the current snapshot; schedule reloads. True when all went well."""
        started = self.clock()
        with self._lock:
            ok = self._reconcile()
        self.status.reconciles += 1
        self.observer.reconciled(self.clock() - started, ok)
        return ok

    def _reconcile(self) -> bool:
        snapshot = self.source.snapshot()
        state = translate(
            snapshot,
            self.settings,
            node_name=self.node_name,
            interface=self.interface,
            memo=self._plans,
            host=self.host() if self.host is not None else None,
        )
        self.status.state = state
        self.status.rejections = state.rejections
        self.observer.rendered(state)
        if self.after_reconcile is not None:
            try:
                self.after_reconcile(snapshot, state)
            except Exception:  # write-back is best effort; the files must still go out
                log.exception("after_reconcile hook failed")
        try:
            files = self._renderer().render(state, self._outputs)
        except render_mod.RenderError as err:
            return self._failed(f"render: {err}")
        result = apply(self.targets, files)
        self.observer.applied(result.changed, result.errors)
        if not result.ok:
            detail = "; ".join(f"{k}: {v}" for k, v in sorted(result.errors.items()))
            return self._failed(f"validation failed, running configuration kept: {detail}")
        self.status.last_apply_ok = True
        self.status.last_apply_wall = self.wall()
        self.status.last_error = None
        if result.changed:
            log.info("applied %s", ", ".join(sorted(result.changed)))
        for name in result.changed:
            daemon = self._file[name].daemon
            if daemon in self.daemons:
                self.status.pending_reloads.add(daemon)
        self._reload_due()
        return True

    def _renderer(self) -> render_mod.Renderer:
        """The Renderer for the current template directories (kept while they stay)."""
        dirs = tuple(self.template_dirs())
        if self._renderer_cache is None or self._renderer_cache.template_dirs != dirs:
            self._renderer_cache = render_mod.Renderer(dirs)
        return self._renderer_cache

    def _failed(self, message: str) -> bool:
        log.error("%s", message)
        self.status.last_apply_ok = False
        self.status.last_error = message
        return False

    def _interval(self, daemon: str) -> float:
        return self._daemon[daemon].reload_interval(self.settings)

    def _reload_due(self) -> float | None:
        """Start the pending reloads whose throttle allows; seconds until the next one
        (None: none due, or only ones waiting for a reload in flight, whose end wakes
        the loop)."""
        wait: float | None = None
        for name in sorted(self.status.pending_reloads):
            if name in self._reloading:
                continue  # one at a time: this one reads the file when it comes
            since = self.clock() - self._last_reload.get(name, float("-inf"))
            remaining = self._interval(name) - since
            if remaining > 0:
                wait = remaining if wait is None else min(wait, remaining)
                continue
            self.status.pending_reloads.discard(name)
            daemon = self.daemons[name]
            if not daemon.running():
                continue  # it reads the new file when it (re)starts
            if not self._background:
                self._reload(name, daemon)
                continue
            worker = threading.Thread(
                target=self._reload, args=(name, daemon), name=f"reload-{name}", daemon=True
            )
            self._reloading[name] = worker
            worker.start()
        return wait

    def _reload(self, name: str, daemon: Daemon) -> None:
        """Reload ``daemon`` and wait for its confirmation (in the loop: in a thread)."""
        try:
            outcome = daemon.reload()
        except Exception as err:  # a broken daemon module must not end the reloads
            log.exception("%s reload raised", name)
            outcome = ReloadOutcome(False, f"raised {err!r}", 0.0)
        self._last_reload[name] = self.clock()
        self.status.reload_outcomes[name] = outcome
        self.observer.reloaded(name, outcome)
        if outcome.ok:
            log.info("%s reloaded in %.0f ms: %s", name, outcome.seconds * 1000, outcome.detail)
        else:
            log.error("%s reload failed: %s", name, outcome.detail)
        if self._reloading.pop(name, None) is not None:
            self._wakeup.set()  # a reload that waited for this one may be due

    # --- the loop -------------------------------------------------------------------

    def run(self, stop: threading.Event, tick: float = 0.5) -> None:
        """Reconcile on events until ``stop`` is set; supervise daemons every ``tick``."""
        interval = self.settings.coalesce_seconds
        self.source.start(self.trigger)
        # cleared before the first pass, not after: that pass reads everything the source
        # has now, and an event arriving while it runs must bring another pass (clearing
        # afterwards lost such events until the next one came: found by 3 agents whose
        # first pass raced the creation of 30 Services)
        self._changed = False
        self._wakeup.clear()
        last_pass = self.clock()
        self.reconcile()
        # Everything the first pass built (the cluster's objects, the caches) lives long;
        # leave it out of the cyclic collector, whose full runs over a 5,000-Service heap
        # paused a reconcile for 90 ms and more.  Objects are still freed by reference
        # counting when a change replaces them; only cycles among them would never be
        # collected, and the agent's data has none.
        gc.freeze()
        for daemon in self._start_order():
            daemon.start()
        self._background = True
        dirty = False
        while not stop.is_set():
            self.status.heartbeat = self.clock()
            timeout = tick
            if dirty:
                timeout = min(timeout, max(0.0, last_pass + interval - self.clock()))
            pending = self._reload_due()
            if pending is not None:
                timeout = min(timeout, pending)
            if self._wakeup.wait(timeout):
                self._wakeup.clear()
                if self._changed:  # read after the clear: a later event sets both again
                    self._changed = False
                    dirty = True
            if dirty and self.clock() >= last_pass + interval:
                dirty = False
                last_pass = self.clock()  # the start: a slow pass delays no later event
                self.reconcile()
            for daemon in self.daemons.values():
                daemon.supervise()

    def _start_order(self) -> list[Daemon]:
        # haproxy first: when keepalived brings the VIP up, the listeners are ready
        return [self.daemons[n] for n in start_order(self.config_files) if n in self.daemons]

    def shutdown(self) -> None:
        """Stop daemons (keepalived first, so peers take the VIPs over at once)."""
        self.source.stop()
        for name in stop_order(self.config_files):
            if name in self.daemons:
                self.daemons[name].stop()
        for worker in list(self._reloading.values()):
            worker.join(timeout=1.0)  # daemon threads: a confirmation never coming holds no exit

"""Prometheus metrics, and the one HTTP port that serves them with /healthz and /readyz.

Every collector lives on the registry handed to :class:`Metrics` (never the global one),
so tests and several agents in one process do not share counters.  Names follow the
Prometheus conventions: ``vip_agent_`` prefix, ``_total`` counters, ``_seconds`` units,
``_timestamp_seconds`` for Unix times.

Label values come only from bounded sets the agent defines: daemon and file names (from
the daemon modules' :data:`agent.daemons.CONFIG_FILES`), result words, rejection reason
codes (:class:`agent.core.model.Reason`), VRRP states, and instance names of the agent's
own grammar.  Text from the cluster (object names, VIPs,
checker output) never becomes a label value: it would let a cluster user create
unbounded series, and put arbitrary bytes into the exposition format.

The HTTP side (stdlib ``http.server`` in a daemon thread):

* ``/metrics``: the registry in the text exposition format.
* ``/healthz`` (liveness): the agent's loop went round recently.  A stuck loop is the
  one failure a restart fixes; an apiserver outage or a rejected file is not.
* ``/readyz`` (readiness): the last apply succeeded, the daemons it runs are up, and the
  cluster source reads without error (an agent rendering from stale objects because the
  API server refuses or cannot be reached is not ready, though it keeps serving).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from agent.core.model import DesiredState, Reason
from agent.daemons import CONFIG_FILES, ConfigFile, Daemon, ReloadOutcome
from agent.daemons.bird import Session as BgpSession
from agent.telemetry.vrrp_state import PROBLEMS, STATES, InstanceState, Mismatch

log = logging.getLogger("vip-agent.metrics")

KINDS = frozenset({"ConfigMap", "Service", "EndpointSlice", "Endpoints", "Node"})
RESOURCES = frozenset({"services", "endpointslices", "endpoints", "configmaps", "nodes"})
_INSTANCE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

REASON_CODES = frozenset(reason.value for reason in Reason)
"""Every value the ``reason`` label can take (translate chooses one per rejection)."""


def kind_label(kind: str) -> str:
    return kind if kind in KINDS else "other"


def build_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vip-agent")
    except PackageNotFoundError:
        return "unknown"


class Metrics:
    """The agent's collectors, and an :class:`agent.reconcile.Observer` that moves them.

    Also the sink for what other parts of ``run`` learn: the apiserver prober
    (:meth:`set_apiserver_healthy`), the kube watchers (:meth:`watch_restarted`) and the
    VRRP monitor (:meth:`vrrp_changed`, :meth:`mismatches_changed`).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        version: str | None = None,
        wall: Callable[[], float] = time.time,
        config_files: Sequence[ConfigFile] = CONFIG_FILES,
    ) -> None:
        self.registry = registry
        self.wall = wall
        self.config_files = tuple(config_files)
        """The ``file`` and ``daemon`` label values: every file, and the daemon reading it."""
        self._daemons = frozenset(f.daemon for f in self.config_files)
        self.apiserver_healthy: bool | None = None
        """The prober's last verdict (None until it reported), for the status file."""
        self._listeners: list[Callable[[], None]] = []
        self._rejection_series: set[tuple[str, str]] = set()
        self._vrrp_instances: set[str] = set()
        self._applied_since_render = False
        r = registry
        self.reconciles = Counter(
            "vip_agent_reconciles_total", "Reconciles run (render, validate, apply).", registry=r
        )
        self.reconcile_errors = Counter(
            "vip_agent_reconcile_errors_total",
            "Reconciles that failed (render or validation); the running config was kept.",
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            "vip_agent_reconcile_duration_seconds",
            "Time one reconcile took, validation by keepalived -t / haproxy -c included.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.renders = Counter(
            "vip_agent_renders_total",
            "Configurations rendered per daemon; result: changed (installed), unchanged, "
            "invalid (rejected by the daemon's checker) or error (the template failed).",
            ["daemon", "result"],
            registry=r,
        )
        self.reloads = Counter(
            "vip_agent_reloads_total",
            "Daemon reloads; result ok (confirmed) or failed.",
            ["daemon", "result"],
            registry=r,
        )
        self.reload_seconds = Histogram(
            "vip_agent_reload_duration_seconds",
            "Time from asking a daemon to reload to its confirmation.",
            ["daemon"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.validation_failures = Counter(
            "vip_agent_validation_failures_total",
            "Rendered files the daemon's own checker rejected (kept as <file>.failed).",
            ["file"],
            registry=r,
        )
        self.rejected = Gauge(
            "vip_agent_rejected_inputs",
            "Inputs rejected by the last translation, by object kind and reason code.",
            ["kind", "reason"],
            registry=r,
        )
        self.vips = Gauge(
            "vip_agent_vips_managed",
            "VIPs in this node's desired state (held by VRRP instances here).",
            registry=r,
        )
        self.vrrp_state = Gauge(
            "vip_agent_vrrp_state",
            "VRRP state per instance from keepalived's notify FIFO; 1 for the current state.",
            ["instance", "state"],
            registry=r,
        )
        self.vrrp_priority = Gauge(
            "vip_agent_vrrp_priority",
            "Effective VRRP priority keepalived announced with its last state change.",
            ["instance"],
            registry=r,
        )
        self.vrrp_transitions = Counter(
            "vip_agent_vrrp_transitions_total",
            "VRRP state changes seen on the notify FIFO.",
            ["instance", "state"],
            registry=r,
        )
        self.vrrp_mismatch = Gauge(
            "vip_agent_vrrp_vip_mismatch",
            "1 when VRRP state and the interface disagree: MASTER without its VIP, or the "
            "VIP present while not MASTER (a duplicate VIP on the segment).",
            ["instance", "problem"],
            registry=r,
        )
        # registered at the prober's first verdict: before it (or without a control-plane
        # VIP, when nothing probes) the series is absent rather than a misleading 0
        self.apiserver = Gauge(
            "vip_agent_apiserver_healthy",
            "1 when the apiserver health check passes, 0 when it fails.",
            registry=None,
        )
        self.watch_restarts = Counter(
            "vip_agent_watch_restarts_total",
            "Kubernetes watches started again (error, timeout or 410 Gone).",
            ["resource"],
            registry=r,
        )
        self.source_healthy = Gauge(
            "vip_agent_source_healthy",
            "1 when the cluster source (the API watches or the manifest files) reads without "
            "error; 0 while it fails and the last good objects are rendered.",
            registry=r,
        )
        self.bgp_changes = Counter(
            "vip_agent_bgp_announcement_changes_total",
            "Times the set of VIPs this node announces over BGP changed (mode bgp).",
            registry=r,
        )
        self._announced: frozenset[str] | None = None
        self.last_apply = Gauge(
            "vip_agent_last_apply_success_timestamp_seconds",
            "Unix time of the last reconcile whose files passed validation.",
            registry=r,
        )
        self.build_info = Gauge(
            "vip_agent_build_info", "The running agent's version.", ["version"], registry=r
        )
        self.build_info.labels(version=version or build_version()).set(1)

    # --- listeners --------------------------------------------------------------------

    def add_listener(self, callback: Callable[[], None]) -> None:
        """``callback()`` after a change the status file shows (apiserver health)."""
        self._listeners.append(callback)

    def _changed(self) -> None:
        for callback in self._listeners:
            try:
                callback()
            except Exception:
                log.exception("metrics listener failed")

    # --- Observer ---------------------------------------------------------------------

    def reconciled(self, seconds: float, ok: bool) -> None:
        self.reconciles.inc()
        self.reconcile_seconds.observe(seconds)
        if not ok:
            self.reconcile_errors.inc()
            if not self._applied_since_render:  # failed before apply: the template
                for f in self.config_files:
                    self.renders.labels(daemon=f.daemon, result="error").inc()
        self._applied_since_render = False

    def rendered(self, state: DesiredState) -> None:
        self._applied_since_render = False
        if state.bgp is not None:
            announced = frozenset(str(a.vip) for a in state.bgp.announcements)
            if self._announced is not None and announced != self._announced:
                self.bgp_changes.inc()
            self._announced = announced
        self.vips.set(sum(len(i.vips) + len(i.excluded_vips) for i in state.instances))
        counts: dict[tuple[str, str], int] = {}
        for rejection in state.rejections:
            key = (kind_label(rejection.kind), rejection.code.value)
            counts[key] = counts.get(key, 0) + 1
        for key in self._rejection_series - counts.keys():
            self.rejected.labels(*key).set(0)
        for key, count in counts.items():
            self.rejected.labels(*key).set(count)
        self._rejection_series |= counts.keys()

    def applied(self, changed: frozenset[str], errors: Mapping[str, str]) -> None:
        self._applied_since_render = True
        for f in self.config_files:
            if f.name in errors:
                result = "invalid"
                self.validation_failures.labels(file=f.name).inc()
            elif f.name in changed:
                result = "changed"
            else:
                result = "unchanged"
            self.renders.labels(daemon=f.daemon, result=result).inc()
        if not errors:
            self.last_apply.set(self.wall())

    def reloaded(self, daemon: str, outcome: ReloadOutcome) -> None:
        name = daemon if daemon in self._daemons else "other"
        self.reloads.labels(daemon=name, result="ok" if outcome.ok else "failed").inc()
        self.reload_seconds.labels(daemon=name).observe(outcome.seconds)

    # --- other parts of run -----------------------------------------------------------

    def set_apiserver_healthy(self, healthy: bool) -> None:
        """The apiserver prober's verdict (after its fall/rise hysteresis)."""
        if self.apiserver_healthy is None:
            self.registry.register(self.apiserver)
        self.apiserver.set(1 if healthy else 0)
        if self.apiserver_healthy is not healthy:
            self.apiserver_healthy = healthy
            self._changed()

    def source_error(self, error: str | None) -> None:
        """What the cluster source says after a pass: None when it reads fine."""
        self.source_healthy.set(0 if error else 1)

    def watch_restarted(self, resource: str) -> None:
        """A kube watch for ``resource`` (plural, lower case) had to start over."""
        self.watch_restarts.labels(resource=resource if resource in RESOURCES else "other").inc()

    def vrrp_changed(self, name: str, entry: InstanceState | None) -> None:
        """An instance changed state (``None``: it stopped or was removed)."""
        if not _INSTANCE.match(name):
            return
        if entry is None:
            # the series go (not to 0): with spread, instances come and go with VIPs
            self._vrrp_instances.discard(name)
            with contextlib.suppress(KeyError):
                self.vrrp_priority.remove(name)
            for state in STATES:
                with contextlib.suppress(KeyError):
                    self.vrrp_state.remove(name, state)
            for problem in PROBLEMS:
                with contextlib.suppress(KeyError):
                    self.vrrp_mismatch.remove(name, problem)
            return
        self._vrrp_instances.add(name)
        for state in STATES:
            self.vrrp_state.labels(instance=name, state=state).set(1 if state == entry.state else 0)
        self.vrrp_transitions.labels(instance=name, state=entry.state).inc()
        self.vrrp_priority.labels(instance=name).set(entry.priority)

    def mismatches_changed(self, found: list[Mismatch]) -> None:
        now = {(m.instance, m.problem) for m in found if _INSTANCE.match(m.instance)}
        for instance in self._vrrp_instances | {i for i, _ in now}:
            for problem in PROBLEMS:
                value = 1 if (instance, problem) in now else 0
                self.vrrp_mismatch.labels(instance=instance, problem=problem).set(value)


class BgpSessions:
    """BGP sessions and announced routes, asked of BIRD when Prometheus scrapes (mode bgp):
    ``vip_agent_bgp_session_up{peer}`` (1 while Established), ``vip_agent_bgp_sessions_up``
    and ``vip_agent_bgp_routes_announced{peer}``.  Peer names are bird.conf's protocol
    names, made from validated peer addresses: a bounded set from settings."""

    def __init__(self, ask: Callable[[], Sequence[BgpSession]]) -> None:
        self.ask = ask

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            found = list(self.ask())
        except OSError:
            found = []  # BIRD not up (yet): the sessions are absent, not 0
        per_peer = GaugeMetricFamily(
            "vip_agent_bgp_session_up", "1 while the BGP session is Established.", labels=["peer"]
        )
        routes = GaugeMetricFamily(
            "vip_agent_bgp_routes_announced",
            "Routes BIRD announces to the peer (every family).",
            labels=["peer"],
        )
        for session in found:
            if _INSTANCE.match(session.name):
                per_peer.add_metric([session.name], 1 if session.up else 0)
                routes.add_metric([session.name], session.exported)
        yield per_peer
        yield routes
        yield GaugeMetricFamily(
            "vip_agent_bgp_sessions_up",
            "BGP sessions Established now.",
            value=sum(1 for s in found if s.up),
        )


class DaemonRestarts:
    """``vip_agent_daemon_restarts_total{daemon}``, read from the supervised daemons when
    Prometheus scrapes (a custom collector, as client_python's process collector is): the
    count lives where the restart happens, and is never kept twice."""

    def __init__(self, daemons: Callable[[], Mapping[str, Daemon]]) -> None:
        self.daemons = daemons

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "vip_agent_daemon_restarts",
            "Times the agent started a supervised daemon again after it died.",
            labels=["daemon"],
        )
        for name, daemon in sorted(self.daemons().items()):
            family.add_metric([name], daemon.restarts)
        yield family


# --- health ---------------------------------------------------------------------------


Check = Callable[[], tuple[bool, str]]


def liveness(
    heartbeat: Callable[[], float | None],
    *,
    clock: Callable[[], float] = time.monotonic,
    started: float,
    max_age: float = 120.0,
) -> Check:
    """Alive when the loop went round within ``max_age`` s (or start-up is that recent).

    ``max_age`` exceeds the longest a healthy iteration can take: two checker runs of
    up to 30 s each and a confirmed reload of up to 10 s.
    """

    def check() -> tuple[bool, str]:
        now = clock()
        beat = heartbeat()
        if beat is None:
            age = now - started
            return age < max_age, f"starting for {age:.0f}s"
        age = now - beat
        if age < max_age:
            return True, f"loop ran {age:.1f}s ago"
        return False, f"loop stuck: last ran {age:.0f}s ago"

    return check


def readiness(
    last_apply_ok: Callable[[], bool | None],
    daemons_running: Callable[[], Mapping[str, bool]],
    *,
    source_error: Callable[[], str | None] = lambda: None,
) -> Check:
    """Ready when the last apply passed validation, every daemon we run is up and the
    cluster source reads without error."""

    def check() -> tuple[bool, str]:
        ok = last_apply_ok()
        if ok is None:
            return False, "no configuration applied yet"
        if not ok:
            return False, "last apply failed; the previous configuration is running"
        down = sorted(name for name, up in daemons_running().items() if not up)
        if down:
            return False, "not running: " + ", ".join(down)
        error = source_error()
        if error:
            return False, f"cluster source failing, rendering the last good objects: {error}"
        return True, "ok"

    return check


# --- HTTP -----------------------------------------------------------------------------


def parse_address(address: str) -> tuple[str, int, socket.AddressFamily]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port, family)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET
    try:
        if ipaddress.ip_address(host).version == 6:
            family = socket.AF_INET6
    except ValueError:
        pass  # a host name: resolved by bind, IPv4
    return host, int(port), family


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on one port, in a daemon thread."""

    def __init__(
        self, address: str, registry: CollectorRegistry, *, healthz: Check, readyz: Check
    ) -> None:
        host, port, family = parse_address(address)
        handler = _handler(registry, {"/healthz": healthz, "/readyz": readyz})

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        self.httpd = Server((host, port), handler)
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def _handler(registry: CollectorRegistry, checks: Mapping[str, Check]) -> type[Any]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a client that sends nothing does not hold a thread forever
        server_version = "vip-agent"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in checks:
                try:
                    ok, detail = checks[path]()
                except Exception as err:  # a probe must answer, not hang up
                    ok, detail = False, f"check failed: {type(err).__name__}"
                self._send(200 if ok else 503, f"{detail}\n".encode(), "text/plain")
            else:
                self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http %s " + format, self.client_address[0], *args)

    return Handler

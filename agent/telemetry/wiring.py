"""What ``vip-agent run`` tells people and machines, wired in one place.

One object owns the parts that watch the agent rather than do its job: the Prometheus
registry and :class:`agent.telemetry.metrics.Metrics`, the HTTP endpoint (``/metrics``,
``/healthz``, ``/readyz``), the VRRP notify FIFO monitor, the status file and the
systemd readiness notification.  ``run`` builds it, passes :attr:`observer` to the
:class:`agent.reconcile.Agent`, then calls :meth:`start` before the loop and
:meth:`stop` after it; the apiserver prober reports to ``telemetry.metrics``.

Order matters in two places:

* The FIFO is created in :meth:`start`, before the loop starts keepalived, so
  keepalived writes to the FIFO the agent reads (see agent.telemetry.vrrp_state).
* ``READY=1`` goes to systemd (``Type=notify``) after the first reconcile, before the
  daemons are started: keepalived.service is ordered after vip-agent.service, so it
  starts with the configuration just written, and the agent's own
  ``systemctl start keepalived.service`` does not wait on a start job that waits on it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from agent.core.model import DesiredState, IPAddress
from agent.daemons import Daemon, ReloadOutcome
from agent.logs import redactor
from agent.reconcile import Agent
from agent.settings import Daemons, Settings
from agent.telemetry import status as status_mod
from agent.telemetry.metrics import (
    DaemonRestarts,
    Metrics,
    MetricsServer,
    build_version,
    liveness,
    readiness,
)
from agent.telemetry.vrrp_state import InstanceState, Mismatch, VrrpMonitor, VrrpStates

log = logging.getLogger("vip-agent")


def sd_notify(message: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send ``message`` to systemd's notify socket when there is one (Type=notify)."""
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock,
    ):
        sock.connect(address)
        sock.sendall(message.encode())
        return True
    return False


class _Fanout:
    """The Observer the Agent gets: metrics first, then the status file, then READY=1."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.t = telemetry

    def reconciled(self, seconds: float, ok: bool) -> None:
        self.t.metrics.reconciled(seconds, ok)
        # a source's error changes notify the loop, so every change ends in a pass
        self.t.metrics.source_error(self.t.source_error())
        self.t.writer.reconciled(seconds, ok)
        if not self.t.notified_ready:
            self.t.notified_ready = True
            sd_notify("READY=1\nSTATUS=configuration written")

    def rendered(self, state: DesiredState) -> None:
        self.t.metrics.rendered(state)
        self.t.rejections.rendered(state)

    def applied(self, changed: frozenset[str], errors: Mapping[str, str]) -> None:
        self.t.metrics.applied(changed, errors)

    def reloaded(self, daemon: str, outcome: ReloadOutcome) -> None:
        self.t.metrics.reloaded(daemon, outcome)
        self.t.writer.reloaded(daemon, outcome)


class RejectionLog:
    """Rejected input in the log, once when it appears and once when it is gone: the
    same lines a dry run prints on stderr, without repeating them every pass."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("vip-agent.input")
        self._seen: set[str] = set()

    def rendered(self, state: DesiredState) -> None:
        now = {str(r) for r in state.rejections}
        for text in sorted(now - self._seen):
            self.log.warning("rejected: %s", text)
        for text in sorted(self._seen - now):
            self.log.info("no longer rejected: %s", text)
        self._seen = now


class ClusterWrites(Protocol):
    """What the write-back tells people (agent.writeback.WriteBack)."""

    def report(self) -> dict[str, Any]: ...


class Telemetry:
    def __init__(
        self,
        settings: Settings,
        *,
        node_name: str,
        interface: str,
        addresses: Callable[[str], list[tuple[IPAddress, int]]],
        registry: CollectorRegistry | None = None,
        metrics: Metrics | None = None,
        cluster: ClusterWrites | None = None,
    ) -> None:
        self.settings = settings
        self.interface = interface
        self.addresses = addresses
        self.registry = (
            metrics.registry if metrics is not None else (registry or CollectorRegistry())
        )
        self.metrics = metrics if metrics is not None else Metrics(self.registry)
        self.cluster = cluster
        self.rejections = RejectionLog()
        self.redact = redactor(settings.secrets())
        self.run_dir = Path(settings.run_dir)
        self.identity = status_mod.Identity(
            node=node_name,
            interface=interface,
            daemons=settings.daemons.value,
            version=build_version(),
            pid=os.getpid(),
        )
        self.agent: Agent | None = None
        self.server: MetricsServer | None = None
        self.notified_ready = False
        self.states = VrrpStates()
        fifo = settings.vrrp_notify_fifo
        self.monitor = VrrpMonitor(
            fifo=Path(fifo) if fifo else None,
            states=self.states,
            desired=lambda: self.agent.status.state if self.agent else None,
            addresses=self._on_interface,
            on_state=self._vrrp_changed,
            on_mismatch=self._mismatches_changed,
        )
        self.writer = status_mod.StatusWriter(self.run_dir / status_mod.FILE_NAME, self.document)
        self.metrics.add_listener(self.writer.write_now)
        self.observer = _Fanout(self)

    # --- lifecycle --------------------------------------------------------------------

    def start(self, agent: Agent, started: float) -> None:
        """Open the FIFO, serve HTTP, follow VRRP; before ``agent.run``.

        Raises OSError (with a message for people) when the port cannot be bound.
        """
        self.agent = agent
        self.registry.register(DaemonRestarts(lambda: agent.daemons))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.monitor.open()
        self.monitor.start()
        try:
            self.server = MetricsServer(
                self.settings.metrics_address,
                self.registry,
                healthz=liveness(
                    lambda: agent.status.heartbeat, clock=agent.clock, started=started
                ),
                readyz=readiness(
                    lambda: agent.status.last_apply_ok,
                    self._daemons_running,
                    source_error=self.source_error,
                ),
            )
        except OSError as err:
            self.monitor.stop()
            raise OSError(
                f"metrics_address {self.settings.metrics_address}: {err.strerror or err}"
            ) from err
        self.server.start()
        port_file = self.run_dir / "metrics.port"
        tmp = port_file.with_name(".metrics.port.tmp")
        tmp.write_text(f"{self.server.port}\n", encoding="utf-8")
        os.replace(tmp, port_file)  # a reader never sees it empty
        log.info(
            "metrics, /healthz and /readyz on %s (port %d, also in %s)",
            self.settings.metrics_address,
            self.server.port,
            port_file,
        )

    def stop(self) -> None:
        self.monitor.stop()
        if self.server is not None:
            self.server.stop()
        with contextlib.suppress(OSError):
            (self.run_dir / "metrics.port").unlink()

    # --- what the parts report --------------------------------------------------------

    def _on_interface(self) -> set[IPAddress]:
        return {address for address, _ in self.addresses(self.interface)}

    def _vrrp_changed(self, name: str, entry: InstanceState | None) -> None:
        self.metrics.vrrp_changed(name, entry)
        self.writer.write_now()

    def _mismatches_changed(self, found: list[Mismatch]) -> None:
        self.metrics.mismatches_changed(found)
        self.writer.write_now()

    def source_error(self) -> str | None:
        """What the cluster source says is wrong now (None: fine, or not started)."""
        return self.agent.source.error if self.agent is not None else None

    def _daemons(self) -> Mapping[str, Daemon]:
        if self.agent is None or self.settings.daemons is Daemons.NONE:
            return {}  # nothing runs: readiness is about the files alone
        return self.agent.daemons

    def _daemons_running(self) -> dict[str, bool]:
        return {name: daemon.running() for name, daemon in self._daemons().items()}

    def document(self) -> dict[str, Any] | None:
        import time

        agent = self.agent
        if agent is None:
            return None
        return status_mod.build(
            identity=self.identity,
            status=agent.status,
            vrrp=self.states.snapshot(),
            mismatches=self.monitor.mismatches,
            apiserver_healthy=self.metrics.apiserver_healthy,
            source_error=self.source_error(),
            cluster=self.cluster.report() if self.cluster is not None else None,
            daemons_running=self._daemons_running(),
            metrics_port=self.server.port if self.server else None,
            redact=self.redact,
            wall=time.time(),
        )

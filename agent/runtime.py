"""The composition root of ``vip-agent run``: every part built once, in dependency order.

    settings ─> logs, node identity, interface
             ─> metrics (the one registry everything reports to)
             ─> source (manifests | static | kube watches) ─> Lease elector ─> write-back
             ─> telemetry (status file, /metrics /healthz /readyz, VRRP FIFO)
             ─> managed VIPs, host facts ─> daemons ─> the reconcile loop (Agent)
             ─> file watchers, apiserver prober

Each part gets its collaborators as explicit keyword arguments; nothing reaches back for
a part built later.  Settings that change while running (an edited ``--config`` file) go
through one :class:`agent.settings.LiveSettings` cell, read by the parts that must follow
an edit (the loop, the prober, template directories); everything else keeps the settings
it was built with, and changes that need new parts (another source, other daemons) need a
restart, which the log says.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry

from agent import assets, health, netlink
from agent.core.model import DesiredState, IPAddress
from agent.daemons import bird, config_files_for, haproxy
from agent.daemons.modes import daemons_for
from agent.daemons.spec import targets
from agent.lease import LeaseElector, LeaseTimings
from agent.reconcile import Agent, Fanout, NullObserver, Source
from agent.settings import LiveSettings, Mode, Settings, SettingsError, node_name_of
from agent.sources.kube import KubeApi, KubeSource, api_client_for
from agent.sources.static import ManifestSource, StaticSource, Stoppable, watch_paths
from agent.telemetry import Telemetry
from agent.telemetry.metrics import BgpSessions, Metrics
from agent.writeback import AddressWriter, EventRecorder, IngressWriter, WriteBack

log = logging.getLogger("vip-agent")


class StartError(RuntimeError):
    """The agent cannot start: a message for people (the command exits 2)."""


class Reload(Protocol):
    def __call__(self) -> Settings: ...


@dataclass
class Runtime:
    """Everything ``vip-agent run`` runs, built by :func:`build`."""

    live: LiveSettings
    agent: Agent
    telemetry: Telemetry
    writeback: WriteBack | None
    elector: LeaseElector | None
    prober: health.Prober | None
    reload_settings: Reload | None
    watched: list[Path] = field(default_factory=list)
    config_file: Path | None = None
    _observers: list[Stoppable] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set; then stop every part, the daemons last but one."""
        if self.watched:
            self._observers.append(watch_paths(self.watched, self.agent.trigger))
        if self.config_file is not None:
            self._observers.append(watch_paths([self.config_file], self.settings_changed))
        if self.prober is not None:
            threading.Thread(
                target=self.prober.run, args=(stop,), name="prober", daemon=True
            ).start()
        if self.elector is not None:
            self.elector.start()
        if self.writeback is not None:
            self.writeback.start()
        try:
            self.agent.run(stop)
        finally:
            for observer in self._observers:
                observer.stop()
            self.agent.shutdown()
            if self.writeback is not None:
                self.writeback.stop()
            if self.elector is not None:
                self.elector.stop(release=True)  # another agent takes over at once
            self.telemetry.stop()

    def stop(self, stop: threading.Event) -> None:
        """Ask the loop to end now (SIGTERM): set ``stop`` and wake the loop, which would
        otherwise see it only at its next tick (up to half a second later)."""
        stop.set()
        self.agent.trigger()

    def settings_changed(self) -> None:
        """The config file changed: the new settings, or the old ones and an error."""
        if self.reload_settings is None:
            return
        try:
            self.live.set(self.reload_settings())
        except SettingsError as err:
            log.error("config file: %s; keeping the old settings", err)
            return
        self.agent.trigger()


def build(settings: Settings, *, reload: Reload | None, config_file: str | None) -> Runtime:
    """Every part, in dependency order.  Raises StartError with a message for people."""
    # the limit haproxy will run under, found once here and again after each config file
    # edit: render refuses a haproxy.cfg that could not load within it
    settings = haproxy.with_fd_limit(settings)
    reload = _with_fd_limit(reload) if reload is not None else None
    live = LiveSettings(settings)
    node_name = node_name_of(settings)
    interface = _interface(settings)
    files = config_files_for(settings)
    metrics = Metrics(CollectorRegistry(), config_files=files)
    source, api = _source(settings, metrics)
    elector = _elector(settings, api=api, node_name=node_name)
    writeback = _writeback(
        api, elector=elector, node_name=node_name, interface=interface, metrics=metrics
    )
    telemetry = Telemetry(
        settings,
        node_name=node_name,
        interface=interface,
        addresses=netlink.addresses,
        metrics=metrics,
        cluster=writeback,
    )
    managed = netlink.ManagedVips(Path(settings.keepalived_config), Path(settings.bird_config))
    daemons = daemons_for(
        settings,
        files=files,
        before_start={
            "keepalived": _stale_vip_cleaner(settings, interface=interface, managed=managed)
        },
    )
    agent = Agent(
        settings=live,
        source=source,
        daemons=daemons,
        targets=targets(settings, files),
        config_files=files,
        template_dirs=lambda: assets.template_dirs(live.get().templates),
        node_name=node_name,
        interface=interface,
        observer=Fanout(telemetry.observer, managed, *_announcers(settings, managed)),
        after_reconcile=writeback.submit if writeback is not None else None,
        host=netlink.HostFactsCache(managed=managed),
    )
    if settings.mode is Mode.BGP:
        socket = bird.socket_path(settings)
        metrics.registry.register(
            BgpSessions(lambda: bird.sessions(binary=settings.birdc_binary, socket=socket))
        )
    try:  # before the loop: the FIFO must exist when keepalived starts
        telemetry.start(agent, started=agent.clock())
    except OSError as err:
        raise StartError(str(err)) from err
    log.info("starting: node=%s interface=%s daemons=%s", node_name, interface, settings.daemons)
    return Runtime(
        live=live,
        agent=agent,
        telemetry=telemetry,
        writeback=writeback,
        elector=elector,
        prober=_prober(live, metrics, gate=_gate(settings)),
        reload_settings=reload,
        watched=[Path(settings.templates)] if settings.templates else [],
        config_file=Path(config_file) if config_file else None,
    )


def _with_fd_limit(reload: Reload) -> Reload:
    def reread() -> Settings:
        return haproxy.with_fd_limit(reload())

    return reread


def _interface(settings: Settings) -> str:
    interface = settings.interface
    if interface is None and settings.node_address is not None:
        interface = netlink.interface_for(settings.node_address)
    if interface is None:
        raise StartError("setting interface is required (or node_address, to find it)")
    return interface


def _source(settings: Settings, metrics: Metrics) -> tuple[Source, KubeApi | None]:
    if settings.manifests:
        return ManifestSource(settings.manifests), None
    if not settings.kubernetes:
        return StaticSource(), None
    try:
        api = KubeApi(api_client_for(settings))
    except Exception as err:  # kubernetes.config.ConfigException, OSError, bad YAML
        raise StartError(
            f"no Kubernetes client configuration ({err}); set --kubeconfig or run in a pod"
        ) from err
    source = KubeSource(
        api=api,
        configmap=settings.configmap_ref,
        pool_configmap=settings.pool_configmap_ref,
        on_restart=metrics.watch_restarted,
    )
    return source, api


def _elector(settings: Settings, *, api: KubeApi | None, node_name: str) -> LeaseElector | None:
    if api is None:
        return None
    return LeaseElector(
        api=api,
        namespace=settings.lease.namespace,
        name=settings.lease.name,
        node_name=node_name,
        timings=LeaseTimings(
            duration=settings.lease_duration,
            renew_deadline=settings.lease_renew_deadline,
            retry_period=settings.lease_retry_period,
        ),
    )


def _writeback(
    api: KubeApi | None,
    *,
    elector: LeaseElector | None,
    node_name: str,
    interface: str,
    metrics: Metrics,
) -> WriteBack | None:
    if api is None or elector is None:
        return None
    registry = metrics.registry

    def held_vips() -> set[IPAddress] | None:
        # the VIPs keepalived holds here now: the holder writes the Service's ingress
        return {address for address, _prefix in netlink.addresses(interface)}

    writeback = WriteBack(
        ingress=IngressWriter(api=api, node_name=node_name, registry=registry),
        events=EventRecorder(api=api, node_name=node_name, registry=registry),
        addresses=AddressWriter(api=api, registry=registry),
        leader=elector.is_leader,
        lease_holder=lambda: elector.holder,
        lease_error=lambda: elector.last_error,
        held_vips=held_vips,
        node_name=node_name,
    )
    # a new holder allocates at once, not at the next resync
    elector.subscribe(lambda leader: writeback.wake())
    return writeback


def _stale_vip_cleaner(
    settings: Settings, *, interface: str, managed: netlink.ManagedVips
) -> Callable[[], None]:
    """Remove the VIPs no VRRP process holds any more: before a fresh keepalived starts
    (an earlier one left them behind), and at once when its VRRP child dies."""

    def clean() -> None:
        keep = {settings.node_address} if settings.node_address is not None else set()
        removed = netlink.remove_stale_vips(interface, managed(), keep=keep)
        if removed:
            log.warning(
                "removed VIPs no VRRP process holds: %s",
                ", ".join(map(str, removed)),
            )

    return clean


class LoopbackVips(NullObserver):
    """Mode bgp: the VIPs BIRD announces live on ``bgp_vip_interface`` (``lo``), so the node
    accepts their traffic; each desired state adds what is new and removes what went (the
    agent's own addresses only)."""

    def __init__(self, routes: netlink.HostRoutes) -> None:
        self.routes = routes

    def rendered(self, state: DesiredState) -> None:
        try:
            added, removed = self.routes.sync(netlink.desired_vips(state))
        except Exception as err:  # pyroute2's NetlinkError is not an OSError
            log.error("cannot set the VIPs on %s: %s", self.routes.ifname, err)
            return
        if added or removed:
            log.info(
                "%s: added %s, removed %s",
                self.routes.ifname,
                ", ".join(map(str, added)) or "-",
                ", ".join(map(str, removed)) or "-",
            )


def _announcers(settings: Settings, managed: netlink.ManagedVips) -> list[LoopbackVips]:
    if settings.mode is not Mode.BGP:
        return []  # keepalived puts VRRP's VIPs on the interface itself
    return [LoopbackVips(netlink.HostRoutes(ifname=settings.bgp_vip_interface, managed=managed))]


def _gate(settings: Settings) -> Callable[[bool], None]:
    """Mode bgp: open or close the health gate of the control-plane VIP (BIRD announces
    it only while its route is in the gate table); VRRP mode: nothing (the track file)."""
    vip = settings.control_plane_vip
    if settings.mode is not Mode.BGP or vip is None:
        return lambda healthy: None

    def gate(healthy: bool) -> None:
        try:
            netlink.set_gate(
                vip, table=settings.bgp_gate_table, ifname=settings.bgp_vip_interface, open_=healthy
            )
        except Exception as err:  # pyroute2's NetlinkError is not an OSError
            log.error("cannot %s the gate of %s: %s", "open" if healthy else "close", vip, err)

    return gate


def _prober(
    live: LiveSettings, metrics: Metrics, *, gate: Callable[[bool], None]
) -> health.Prober | None:
    settings = live.get()
    vip = settings.control_plane_vip
    if vip is None:
        return None

    def changed(healthy: bool) -> None:
        gate(healthy)
        metrics.set_apiserver_healthy(healthy)

    return health.Prober(
        check=lambda: health.check(
            health.probe_config(live.get()),
            vip=vip,
            holds_vip=health.holds(vip),
            vip_port=live.get().control_plane_port,
        ),
        track_file=Path(settings.health_file),
        interval=settings.health_interval,
        fall=settings.health_fall,
        rise=settings.health_rise,
        on_change=changed,
    )

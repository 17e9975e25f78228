"""agent.daemons.CONFIG_FILES is the one source of the rendered files and their daemons.

Render, install, reload (and its throttle), start and stop order, and the metrics labels
all follow the list: a third daemon declared as one ConfigFile with one template is
rendered, installed with its mode, reloaded when its file changes, started and stopped in
its place and counted under its own label, with no other edit.  No process runs here:
daemons are recorders and checkers accept every file.
"""

from __future__ import annotations

import dataclasses
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agent.apply import Target
from agent.assets import template_dirs
from agent.core import render
from agent.core.snapshot import Snapshot
from agent.daemons import CONFIG_FILES, ConfigFile, ReloadOutcome
from agent.daemons.haproxy import HAPROXY_CFG
from agent.daemons.keepalived import KEEPALIVED_CONF
from agent.daemons.modes import NoDaemon, SystemdService, daemons_for
from agent.daemons.spec import Hook, outputs, start_order, stop_order, targets
from agent.reconcile import Agent
from agent.settings import Settings
from agent.telemetry.metrics import Metrics
from agent.validate import CheckResult
from labkit import objects


class Recorder:
    """A daemon that only notes what the agent asked of it, in one shared list."""

    def __init__(
        self, name: str, calls: list[tuple[str, str]], before_start: Hook = lambda: None
    ) -> None:
        self.name = name
        self.calls = calls
        self.before_start = before_start
        self.up = False

    def start(self) -> None:
        self.before_start()
        self.calls.append(("start", self.name))
        self.up = True

    def running(self) -> bool:
        return self.up

    def reload(self) -> ReloadOutcome:
        self.calls.append(("reload", self.name))
        return ReloadOutcome(True, "recorded", 0.0)

    def supervise(self) -> None:
        return None

    def stop(self) -> None:
        self.calls.append(("stop", self.name))
        self.up = False


class Objects:
    """A Source holding cluster objects the test sets."""

    def __init__(self, items: list[objects.Obj]) -> None:
        self.items = items
        self.error: str | None = None

    def start(self, notify: object) -> None:
        return None

    def snapshot(self) -> Snapshot:
        return Snapshot.from_objects(self.items)

    def stop(self) -> None:
        return None


def accept(_path: Path, _settings: Settings | None = None) -> CheckResult:
    return CheckResult(True, "")


def _bird(settings: Settings, before_start: Hook) -> Recorder:
    return Recorder("bird", [], before_start)


BIRD = ConfigFile(
    name="bird.conf",
    template="bird.conf.j2",
    mode=0o640,
    daemon="bird",
    unit="bird.service",
    path=lambda settings: Path(settings.run_dir) / "bird.conf",
    check=accept,
    supervised=_bird,
    announces=True,
)
"""A third daemon, as its module would declare it (BGP announces VIPs, like VRRP)."""

WEB = [
    objects.service("web", [objects.port("http", 80, 8080)]),
    objects.endpoint_slice("web", [objects.port("http", 8080)], [objects.endpoint("203.0.113.5")]),
]


def settings(**overrides: Any) -> Settings:
    base = Settings(
        node_name="n1",
        interface="eth0",
        kubernetes=False,
        vrrp_notify_fifo=None,
        coalesce_seconds=0,
        keepalived_reload_interval=0,
        real_server_check="none",
    )
    return dataclasses.replace(base, **overrides)


def agent_with(
    tmp_path: Path,
    files: tuple[ConfigFile, ...],
    calls: list[tuple[str, str]],
    *,
    config: Settings | None = None,
    source: Objects | None = None,
    clock: list[float] | None = None,
) -> Agent:
    (tmp_path / "templates").mkdir(exist_ok=True)
    (tmp_path / "templates" / "bird.conf.j2").write_text("router id {{ router_id }};\n")
    now = clock if clock is not None else [0.0]
    return Agent(
        settings=config or settings(),
        source=source or Objects([objects.configmap({"192.0.2.50": ""})]),
        daemons={f.daemon: Recorder(f.daemon, calls) for f in files},
        targets=[Target(f.name, tmp_path / "etc" / f.name, f.mode, accept) for f in files],
        config_files=files,
        template_dirs=lambda: [tmp_path / "templates", *template_dirs(None)],
        node_name="n1",
        interface="eth0",
        clock=lambda: now[0],
    )


def test_the_list_holds_todays_two_files_and_render_defaults_to_it() -> None:
    assert [(f.name, f.template, f.mode, f.daemon, f.unit) for f in CONFIG_FILES] == [
        ("keepalived.conf", "keepalived.conf.j2", 0o600, "keepalived", "keepalived.service"),
        ("haproxy.cfg", "haproxy.cfg.j2", 0o640, "haproxy", "haproxy.service"),
    ]
    # tests and labs that render with the core's default render the agent's files
    assert dict(outputs(CONFIG_FILES)) == dict(render.OUTPUTS)
    assert KEEPALIVED_CONF.reload_interval(settings(keepalived_reload_interval=7)) == 7
    assert HAPROXY_CFG.reload_interval(settings(keepalived_reload_interval=7)) == 0


def test_listeners_start_before_the_vip_is_announced_and_stop_after() -> None:
    assert start_order(CONFIG_FILES) == ["haproxy", "keepalived"]
    assert stop_order(CONFIG_FILES) == ["keepalived", "haproxy"]
    # a new announcer joins keepalived's side, whatever its place in the list
    assert start_order((BIRD, *CONFIG_FILES)) == ["haproxy", "bird", "keepalived"]
    assert stop_order((*CONFIG_FILES, BIRD)) == ["keepalived", "bird", "haproxy"]


def test_the_agent_starts_and_stops_daemons_in_the_lists_order(tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []
    agent = agent_with(tmp_path, CONFIG_FILES, calls)
    stop = threading.Event()
    stop.set()
    agent.run(stop)
    agent.shutdown()
    assert calls == [
        ("start", "haproxy"),
        ("start", "keepalived"),
        ("stop", "keepalived"),
        ("stop", "haproxy"),
    ]


def test_a_third_daemon_is_one_config_file_and_one_template(tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []
    agent = agent_with(tmp_path, (*CONFIG_FILES, BIRD), calls)
    for daemon in agent.daemons.values():
        daemon.start()
    calls.clear()
    assert agent.reconcile()
    bird = tmp_path / "etc" / "bird.conf"
    state = agent.status.state
    assert state is not None
    assert bird.read_text() == f"router id {state.router_id};\n"
    assert stat.S_IMODE(bird.stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "etc" / "keepalived.conf").stat().st_mode) == 0o600
    assert sorted(calls) == [("reload", "bird"), ("reload", "haproxy"), ("reload", "keepalived")]
    # only bird.conf changes: only the daemon its file names is reloaded
    calls.clear()
    (tmp_path / "templates" / "bird.conf.j2").write_text("# changed\nrouter id {{ router_id }};\n")
    assert agent.reconcile()
    assert calls == [("reload", "bird")]


def test_the_reload_throttle_is_the_one_the_files_daemon_declares(tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []
    now = [100.0]
    source = Objects([objects.configmap({"192.0.2.50": ""})])
    config = settings(keepalived_reload_interval=10)
    agent = agent_with(tmp_path, CONFIG_FILES, calls, config=config, source=source, clock=now)
    for daemon in agent.daemons.values():
        daemon.start()
    calls.clear()
    assert agent.reconcile()
    assert sorted(calls) == [("reload", "haproxy"), ("reload", "keepalived")]
    # both files change again at once: haproxy reloads now, keepalived waits its interval
    calls.clear()
    source.items = [objects.configmap({"192.0.2.50": "", "192.0.2.53": "default/web:PROXY"}), *WEB]
    now[0] += 1
    assert agent.reconcile()
    assert calls == [("reload", "haproxy")]
    assert agent.status.pending_reloads == {"keepalived"}
    now[0] += 9
    assert agent.reconcile()
    assert calls == [("reload", "haproxy"), ("reload", "keepalived")]


def test_targets_must_be_files_of_the_list(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"bird\.conf"):
        Agent(
            settings=settings(),
            source=Objects([]),
            daemons={},
            targets=[Target("bird.conf", tmp_path / "bird.conf", 0o640, accept)],
            template_dirs=lambda: template_dirs(None),
            node_name="n1",
            interface="eth0",
        )


def test_metrics_labels_come_from_the_same_list() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, version="t")
    metrics.applied(frozenset({"haproxy.cfg"}), {"keepalived.conf": "rejected"})
    metrics.reloaded("bird", ReloadOutcome(True, "", 0.1))
    samples = {
        (s.name, tuple(sorted(s.labels.items())))
        for family in registry.collect()
        for s in family.samples
        if s.name in ("vip_agent_renders_total", "vip_agent_validation_failures_total")
    }
    assert samples == {
        ("vip_agent_renders_total", (("daemon", "keepalived"), ("result", "invalid"))),
        ("vip_agent_renders_total", (("daemon", "haproxy"), ("result", "changed"))),
        ("vip_agent_validation_failures_total", (("file", "keepalived.conf"),)),
    }
    labels = {"daemon": "other", "result": "ok"}
    assert registry.get_sample_value("vip_agent_reloads_total", labels) == 1

    registry = CollectorRegistry()
    metrics = Metrics(registry, version="t", config_files=(*CONFIG_FILES, BIRD))
    metrics.applied(frozenset({"bird.conf"}), {})
    metrics.reloaded("bird", ReloadOutcome(True, "", 0.1))
    labels = {"daemon": "bird", "result": "changed"}
    assert registry.get_sample_value("vip_agent_renders_total", labels) == 1
    labels = {"daemon": "bird", "result": "ok"}
    assert registry.get_sample_value("vip_agent_reloads_total", labels) == 1


def test_run_installs_and_runs_what_the_list_names(tmp_path: Path) -> None:
    config = settings(
        keepalived_config=str(tmp_path / "k.conf"),
        haproxy_config=str(tmp_path / "h.cfg"),
        keepalived_binary=str(tmp_path / "no-keepalived"),
        daemons="systemd",
    )
    built = targets(config, CONFIG_FILES)
    assert [(t.name, t.path, t.mode) for t in built] == [
        ("keepalived.conf", tmp_path / "k.conf", 0o600),
        ("haproxy.cfg", tmp_path / "h.cfg", 0o640),
    ]
    # the checker is the daemon's own, run with the binary the settings name
    result = built[0].validate(tmp_path / "k.conf")
    assert not result.ok
    assert result.output.startswith(f"{tmp_path / 'no-keepalived'}: ")

    systemd = daemons_for(config, files=CONFIG_FILES)
    assert list(systemd) == ["keepalived", "haproxy"]
    assert [(d.name, d.unit) for d in systemd.values() if isinstance(d, SystemdService)] == [
        ("keepalived", "keepalived.service"),
        ("haproxy", "haproxy.service"),
    ]
    none = daemons_for(settings(daemons="none"), files=CONFIG_FILES)
    assert all(isinstance(d, NoDaemon) for d in none.values())
    assert list(none) == ["keepalived", "haproxy"]

    hooked: list[str] = []
    supervised = daemons_for(
        settings(daemons="supervise"),
        files=(BIRD,),
        before_start={"bird": lambda: hooked.append("bird")},
    )
    assert isinstance(supervised["bird"], Recorder)
    supervised["bird"].start()
    assert hooked == ["bird"]

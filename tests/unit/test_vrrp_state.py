"""The VRRP notify FIFO reader and the VRRP/interface cross-check.

Lines go through a real FIFO (mkfifo), written the way keepalived writes them
(``INSTANCE "name" STATE PRIORITY``, non-blocking); keepalived itself writes to it in
tests/lab/test_operability_lab.py.  The interface addresses and the clock are injected.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.core.model import DesiredState
from agent.core.snapshot import Snapshot
from agent.core.translate import translate
from agent.settings import Settings
from agent.telemetry.metrics import Metrics
from agent.telemetry.vrrp_state import VrrpMonitor, VrrpStates, cross_check, ensure_fifo, parse_line
from labkit.netlab import wait_for

VIP = ipaddress.ip_address("192.0.2.10")


def desired() -> DesiredState:
    settings = Settings(interface="eth0", control_plane_vip=str(VIP), node_name="n1")
    return translate(Snapshot(), settings, node_name="n1", interface="eth0")


def test_parse_line() -> None:
    assert parse_line('INSTANCE "control_plane" MASTER 220\n') == ("control_plane", "MASTER", 220)
    assert parse_line('INSTANCE "vip_v4_7" STOP 0') == ("vip_v4_7", "STOP", 0)
    for bad in (
        'GROUP "g" MASTER 100',
        'INSTANCE "control_plane" MASTER 300',
        'INSTANCE "control_plane" BOSS 100',
        'INSTANCE "a b" MASTER 100',
        'INSTANCE "x\\"} 1\\nevil" MASTER 100',
        "",
        "garbage",
    ):
        assert parse_line(bad) is None, bad


class Fake:
    """Injected clock and interface addresses."""

    def __init__(self) -> None:
        self.now = 100.0
        self.addresses: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    return tmp_path / "run" / "vrrp.fifo"


@pytest.fixture
def monitored(fifo: Path) -> Iterator[tuple[VrrpMonitor, CollectorRegistry, Fake]]:
    registry = CollectorRegistry()
    metrics = Metrics(registry, version="t")
    fake = Fake()
    state = desired()
    monitor = VrrpMonitor(
        fifo=fifo,
        states=VrrpStates(wall=lambda: 1234.0),
        desired=lambda: state,
        addresses=lambda: fake.addresses,
        on_state=metrics.vrrp_changed,
        on_mismatch=metrics.mismatches_changed,
        check_interval=3600,  # checks are run by hand below
        clock=lambda: fake.now,
    )
    monitor.start()
    try:
        yield monitor, registry, fake
    finally:
        monitor.stop()


def write(fifo: Path, text: str) -> None:
    """As keepalived does: non-blocking, a whole line per write."""
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def state_of(registry: CollectorRegistry, state: str) -> float | None:
    return registry.get_sample_value(
        "vip_agent_vrrp_state", {"instance": "control_plane", "state": state}
    )


def test_fifo_lines_become_one_hot_state(
    fifo: Path, monitored: tuple[VrrpMonitor, CollectorRegistry, Fake]
) -> None:
    monitor, registry, _ = monitored
    assert stat.S_ISFIFO(fifo.stat().st_mode) and stat.S_IMODE(fifo.stat().st_mode) == 0o600
    write(fifo, 'INSTANCE "control_plane" BACKUP 231\n')
    wait_for(lambda: state_of(registry, "BACKUP") == 1, timeout=5, what="BACKUP")
    assert state_of(registry, "MASTER") == 0 and state_of(registry, "FAULT") == 0
    # a line split over two writes, then garbage, then the transition
    write(fifo, 'INSTANCE "control_pl')
    write(fifo, 'ane" MASTER 231\nnot a keepalived line\nINSTANCE "evil\\n" MASTER 1\n')
    wait_for(lambda: state_of(registry, "MASTER") == 1, timeout=5, what="MASTER")
    assert state_of(registry, "BACKUP") == 0
    assert (
        registry.get_sample_value("vip_agent_vrrp_priority", {"instance": "control_plane"}) == 231
    )
    transitions = "vip_agent_vrrp_transitions_total"
    assert registry.get_sample_value(transitions, {"instance": "control_plane", "state": "MASTER"})
    entry = monitor.states.snapshot()["control_plane"]
    assert (entry.state, entry.priority, entry.since) == ("MASTER", 231, 1234.0)
    assert set(monitor.states.snapshot()) == {"control_plane"}, "garbage added nothing"
    # keepalived stopping: the instance has no state any more
    write(fifo, 'INSTANCE "control_plane" STOP 231\n')
    wait_for(lambda: state_of(registry, "MASTER") is None, timeout=5, what="STOP")
    assert monitor.states.snapshot() == {}


def test_a_master_hearing_a_lower_priority_is_no_stray_line(
    monitored: tuple[VrrpMonitor, CollectorRegistry, Fake], caplog: pytest.LogCaptureFixture
) -> None:
    """keepalived 2.x writes MASTER_RX_LOWER_PRI whenever a master hears a lower-priority
    advert (every partition heal, seen in the soak lab): it changes no state and is not
    logged as a stray line, which also used up the ten warnings kept for real strays."""
    monitor, registry, _ = monitored
    monitor.feed('INSTANCE "control_plane" MASTER 231')
    with caplog.at_level(logging.WARNING, logger="vip-agent.vrrp"):
        for _ in range(20):
            monitor.feed('INSTANCE "control_plane" MASTER_RX_LOWER_PRI 231')
        monitor.feed("not a keepalived line")
    assert state_of(registry, "MASTER") == 1
    assert monitor.states.snapshot()["control_plane"].state == "MASTER"
    assert [r.getMessage() for r in caplog.records] == [
        "VRRP notify FIFO: ignoring line 'not a keepalived line'"
    ]


def test_reader_survives_writers_coming_and_going(
    fifo: Path, monitored: tuple[VrrpMonitor, CollectorRegistry, Fake]
) -> None:
    """No EOF when the last writer closes (keepalived restarting): later lines still arrive."""
    _, registry, _ = monitored
    for state in ("BACKUP", "MASTER", "FAULT", "BACKUP", "MASTER"):
        write(fifo, f'INSTANCE "control_plane" {state} 200\n')
        wait_for(lambda s=state: state_of(registry, s) == 1, timeout=5, what=state)


def test_cross_check_reports_master_without_vip_after_grace(
    fifo: Path, monitored: tuple[VrrpMonitor, CollectorRegistry, Fake]
) -> None:
    monitor, registry, fake = monitored

    def mismatch(problem: str) -> float | None:
        return registry.get_sample_value(
            "vip_agent_vrrp_vip_mismatch", {"instance": "control_plane", "problem": problem}
        )

    write(fifo, 'INSTANCE "control_plane" MASTER 231\n')
    wait_for(lambda: state_of(registry, "MASTER") == 1, timeout=5, what="MASTER")
    assert monitor.check() == [], "a first sighting is not confirmed"
    fake.now += 2
    [found] = monitor.check()
    assert (found.problem, found.vips) == ("master_without_vip", (VIP,))
    assert mismatch("master_without_vip") == 1
    fake.addresses.add(VIP)
    fake.now += 2
    assert monitor.check() == []
    assert mismatch("master_without_vip") == 0
    # BACKUP with the VIP still on the interface: a duplicate VIP on the segment
    write(fifo, 'INSTANCE "control_plane" BACKUP 231\n')
    wait_for(lambda: state_of(registry, "BACKUP") == 1, timeout=5, what="BACKUP")
    monitor.check()
    fake.now += 2
    [found] = monitor.check()
    assert found.problem == "vip_without_master"
    assert mismatch("vip_without_master") == 1


def test_cross_check_pure() -> None:
    state = desired()
    assert cross_check({}, desired=state, on_interface=set()) == []
    assert cross_check({}, desired=None, on_interface={VIP}) == []


def test_something_else_at_the_fifo_path_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "vrrp.fifo"
    path.write_text("a file")
    assert not ensure_fifo(path)
    assert path.read_text() == "a file"
    monitor = VrrpMonitor(
        fifo=path, states=VrrpStates(), desired=lambda: None, addresses=lambda: set()
    )
    monitor.start()
    monitor.stop()

"""agent.daemons.haproxy.Haproxy against a real haproxy in master-worker mode on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.daemons.haproxy import Haproxy
from labkit.ports import free_port
from tests.support.requirements import require_binaries


@pytest.fixture
def haproxy_cfg(tmp_path: Path) -> Path:
    require_binaries("haproxy")
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        "global\n  master-worker\n"
        "defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n"
        f"frontend f\n  bind 127.0.0.1:{free_port()}\n  default_backend b\n"
        "backend b\n  server s 127.0.0.1:9\n",
        encoding="utf-8",
    )
    return cfg


@pytest.fixture
def slow_starting_haproxy(haproxy_cfg: Path, tmp_path: Path) -> Iterator[Haproxy]:
    """haproxy whose exec is delayed 0.3 s: start() returns before the master socket exists,
    as it does (for a few milliseconds) with every real start."""
    daemon = Haproxy(
        binary="haproxy",
        config=haproxy_cfg,
        run_dir=tmp_path / "run",
        prefix=["sh", "-c", 'sleep 0.3; exec "$@"', "sh"],
    )
    daemon.start()
    yield daemon
    daemon.stop()


def test_reload_right_after_start_waits_for_the_master_socket(
    slow_starting_haproxy: Haproxy,
) -> None:
    assert not slow_starting_haproxy.master_socket.exists()
    outcome = slow_starting_haproxy.reload()
    assert outcome.ok, outcome
    assert slow_starting_haproxy.processes().reloads == 1


def test_reload_of_a_daemon_whose_master_never_listens_fails_in_bounded_time(
    haproxy_cfg: Path, tmp_path: Path
) -> None:
    daemon = Haproxy(
        binary="haproxy",
        config=haproxy_cfg,
        run_dir=tmp_path / "run",
        confirm_timeout=0.5,
        prefix=["sh", "-c", "sleep 30", "sh"],
    )
    daemon.start()
    try:
        outcome = daemon.reload()
    finally:
        daemon.stop()
    assert not outcome.ok
    assert "master socket" in outcome.detail
    assert outcome.seconds < 2.0

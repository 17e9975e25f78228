"""agent.daemons.keepalived.Keepalived against a real keepalived (supervise mode)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.daemons.keepalived import Keepalived
from labkit.checkers import ScratchNamespace, root_skip_reason
from tests.support.cluster import eventually
from tests.support.requirements import require_binaries, unavailable


@pytest.fixture
def idle_keepalived(tmp_path: Path) -> Iterator[Keepalived]:
    """keepalived with nothing to run (mode bgp without IPVS; a node with no VIPs yet):
    the parent alone, no VRRP or checker child."""
    reason = root_skip_reason()
    if reason:
        unavailable(reason)
    require_binaries("keepalived")
    config = tmp_path / "keepalived.conf"
    config.write_text("global_defs {\n    router_id idle\n}\n", encoding="utf-8")
    daemon = Keepalived(binary="keepalived", config=config, run_dir=tmp_path / "run", ipvs=False)
    daemon.start()
    yield daemon
    daemon.stop()


def test_reload_of_a_keepalived_without_children_is_confirmed_at_once(
    idle_keepalived: Keepalived,
) -> None:
    # with no child keepalived logs no "Reload complete"; waiting for one blocked the loop 5 s
    # per change in mode bgp
    for _ in range(3):
        outcome = idle_keepalived.reload()
        assert outcome.ok, outcome
        assert outcome.seconds < 1.0, outcome
    assert idle_keepalived.running()


class _Recording(Keepalived):
    """The real Keepalived, keeping every line keepalived logged (for the assertions)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.lines: list[str] = []

    def on_line(self, line: str) -> None:
        self.lines.append(line)
        super().on_line(line)


def test_reload_with_two_children_is_confirmed_by_the_parents_one_line(tmp_path: Path) -> None:
    """keepalived logs "Reload complete" once per reload, from the parent, when all its
    children have read the file (core/config_notify.c), not once per child: waiting for
    one line per child made every reload of a node running VRRP and the IPVS checker
    wait out the timeout and count as failed.  The checker cannot run on this kernel (no
    IPVS; tests/guest shows the same single line with it), so the second child here is
    BFD's.  keepalived runs in a scratch network namespace (a VRRP instance with no VIP
    on a down veth, a BFD session over its loopback)."""
    reason = root_skip_reason()
    if reason:
        unavailable(reason)
    require_binaries("keepalived", "ip")
    netns = ScratchNamespace(f"vipagent-kd-{os.getpid()}")
    try:
        netns.ensure_links(["eth0"])
        subprocess.run(["ip", "-n", netns.name, "link", "set", "lo", "up"], check=True)
        wrapper = tmp_path / "keepalived-in-netns"
        # exec all the way down: the pid the agent supervises is keepalived's own
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {netns.name} keepalived "$@"\n')
        wrapper.chmod(0o755)
        config = tmp_path / "keepalived.conf"
        config.write_text(
            "global_defs {\n    router_id two\n}\n"
            "bfd_instance peer {\n    neighbor_ip 127.0.0.2\n    source_ip 127.0.0.1\n}\n"
            "vrrp_instance one {\n    state BACKUP\n    interface eth0\n"
            "    virtual_router_id 51\n    priority 100\n    advert_int 1\n}\n",
            encoding="utf-8",
        )
        daemon = _Recording(binary=str(wrapper), config=config, run_dir=tmp_path / "run", ipvs=True)
        daemon.start()
        try:
            _reload_three_times(daemon)
        finally:
            daemon.stop()
    finally:
        netns.delete()


def _reload_three_times(daemon: _Recording) -> None:
    children = ("Starting VRRP child", "Starting BFD child")
    eventually(
        lambda: all(any(mark in line for line in daemon.lines) for mark in children),
        what="keepalived logging both children started",
        timeout=10,
    )
    for n in range(1, 4):
        outcome = daemon.reload()
        assert outcome.ok, (outcome, daemon.lines[-20:])
        assert outcome.seconds < 2.0, outcome
        assert sum("Reload complete" in line for line in daemon.lines) == n
    assert daemon.running()

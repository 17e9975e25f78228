"""agent.daemons.process.Supervised with real processes: restart after a death, and the
children a SIGKILLed daemon leaves behind are killed before the new one starts."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil

from agent.daemons.process import Supervised
from labkit.netlab import wait_for


class Forking(Supervised):
    """A daemon that forks a long-lived child, as keepalived forks its VRRP process."""

    name = "forking"
    exe = "sh"

    def argv(self) -> list[str]:
        child = self.run_dir / "child.pid"
        return ["sh", "-c", f"sleep 300 & echo $! > {child}; echo $$ > {self.pidfile}; wait"]


def forking(tmp_path: Path) -> Forking:
    return Forking(
        config=tmp_path / "unused.conf",
        run_dir=tmp_path / "run",
        pidfile=tmp_path / "run" / "forking.pid",
        clock=time.monotonic,
        prefix=[],
    )


def pid_in(path: Path) -> int:
    wait_for(
        lambda: path.exists() and path.read_text().strip().isdigit(), timeout=5, what=path.name
    )
    return int(path.read_text())


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_children_of_a_killed_daemon_die_with_it_and_one_restart_follows(tmp_path: Path) -> None:
    daemon = forking(tmp_path)
    daemon.start()
    try:
        parent, orphan = daemon.child.pid, pid_in(daemon.run_dir / "child.pid")
        assert parent is not None
        os.kill(parent, signal.SIGKILL)
        wait_for(lambda: not daemon.running(), timeout=5, what="parent dies")
        assert not gone(orphan), "the forked child outlives its parent (what the fix is for)"
        (daemon.run_dir / "child.pid").unlink()
        daemon.supervise()  # notices the death: reaps the group, backoff starts
        assert gone(orphan)
        wait_for(lambda: daemon.supervise() or daemon.running(), timeout=5, what="restart")
        assert daemon.restarts == 1
        assert daemon.child.pid != parent
    finally:
        daemon.stop()


def test_stop_leaves_no_child_behind(tmp_path: Path) -> None:
    daemon = forking(tmp_path)
    daemon.start()
    orphan = pid_in(daemon.run_dir / "child.pid")
    daemon.stop()  # sh waits on its child, and sleep ignores nothing: SIGTERM ends sh only
    assert not daemon.running()
    wait_for(lambda: gone(orphan), timeout=3, what="forked child killed on stop")

"""The reconcile loop's event handling: nothing the source says is lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from agent.apply import Target
from agent.assets import template_dirs
from agent.core.snapshot import Snapshot
from agent.reconcile import Agent
from agent.settings import Settings
from agent.validate import CheckResult


class ChangesDuringTheFirstPass:
    """A source whose objects change while the agent's first pass reads them (a Service
    created right after the watches listed)."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.notify: Callable[[], None] = lambda: None
        self.reads = 0

    def start(self, notify: Callable[[], None]) -> None:
        self.notify = notify
        notify()  # the first sync, as KubeSource does

    def snapshot(self) -> Snapshot:
        self.reads += 1
        if self.reads == 1:
            self.notify()  # an event arrives while the first pass is running
        return Snapshot()

    def stop(self) -> None:
        return None


def test_an_event_during_the_first_pass_brings_another_pass(tmp_path: Path) -> None:
    source = ChangesDuringTheFirstPass()
    accept = lambda _p: CheckResult(True, "")  # noqa: E731 - the checkers are not the subject
    agent = Agent(
        settings=Settings(interface="eth0", coalesce_seconds=0.01),
        source=source,
        daemons={},
        targets=[
            Target("keepalived.conf", tmp_path / "keepalived.conf", 0o600, accept),
            Target("haproxy.cfg", tmp_path / "haproxy.cfg", 0o640, accept),
        ],
        template_dirs=lambda: template_dirs(None),
        node_name="n1",
        interface="eth0",
    )
    stop = threading.Event()
    loop = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    loop.start()
    deadline = time.monotonic() + 3
    while source.reads < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    loop.join(timeout=5)
    assert source.reads >= 2, "the change seen during the first pass was never reconciled"

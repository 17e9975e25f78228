"""The reconcile loop's event handling: nothing the source says is lost."""

from __future__ import annotations

import contextlib
import gc
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from agent.apply import Target
from agent.assets import template_dirs
from agent.core.snapshot import Snapshot
from agent.daemons import Daemon, ReloadOutcome
from agent.reconcile import Agent, Source
from agent.settings import Settings
from agent.validate import CheckResult
from labkit import objects
from tests.unit.test_render_incremental import BASE, KINDS, SETTINGS, changed

MODES = {"keepalived.conf": 0o600, "haproxy.cfg": 0o640}


def make_agent(
    tmp_path: Path,
    source: Source,
    settings: Settings,
    *,
    files: tuple[str, ...] = tuple(MODES),
    daemons: dict[str, Daemon] | None = None,
    node_name: str = "n1",
) -> Agent:
    """An agent installing ``files`` in ``tmp_path``, with checkers that accept all (the
    checkers are not the subject here)."""
    accept = lambda _p: CheckResult(True, "")  # noqa: E731
    return Agent(
        settings=settings,
        source=source,
        daemons=daemons or {},
        targets=[Target(name, tmp_path / name, MODES[name], accept) for name in files],
        template_dirs=lambda: template_dirs(None),
        node_name=node_name,
        interface="eth0",
    )


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
    agent = make_agent(tmp_path, source, Settings(interface="eth0", coalesce_seconds=0.01))
    stop = threading.Event()
    loop = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    loop.start()
    deadline = time.monotonic() + 3
    while source.reads < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    loop.join(timeout=5)
    assert source.reads >= 2, "the change seen during the first pass was never reconciled"


class Counting:
    """A source that counts the passes reading it and when each began."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.notify: Callable[[], None] = lambda: None
        self.reads: list[float] = []

    def start(self, notify: Callable[[], None]) -> None:
        self.notify = notify

    def snapshot(self) -> Snapshot:
        self.reads.append(time.monotonic())
        return Snapshot()

    def stop(self) -> None:
        return None


@contextlib.contextmanager
def running_agent(tmp_path: Path, source: Counting, interval: float) -> Iterator[None]:
    """The agent's loop in a thread, stopped and joined on the way out."""
    settings = Settings(interface="eth0", coalesce_seconds=interval)
    agent = make_agent(tmp_path, source, settings, files=("keepalived.conf",))
    stop = threading.Event()
    loop = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    loop.start()
    try:
        yield
    finally:
        stop.set()
        loop.join(timeout=5)
        assert not loop.is_alive(), "the loop did not stop"


def wait_reads(source: Counting, count: int, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while len(source.reads) < count and time.monotonic() < deadline:
        time.sleep(0.005)


def test_a_lone_change_after_a_quiet_moment_is_reconciled_at_once(tmp_path: Path) -> None:
    source = Counting()
    with running_agent(tmp_path, source, interval=0.5):
        wait_reads(source, 1)
        time.sleep(0.6)  # quiet for longer than the interval
        changed = time.monotonic()
        source.notify()
        wait_reads(source, 2)
        assert len(source.reads) == 2
        # not after a 0.5 s window: at once
        assert source.reads[1] - changed < 0.1, source.reads[1] - changed


def test_a_burst_is_reconciled_a_few_times_and_its_last_event_lands(tmp_path: Path) -> None:
    source = Counting()
    with running_agent(tmp_path, source, interval=0.2):
        wait_reads(source, 1)
        time.sleep(0.3)
        started = time.monotonic()
        for _ in range(500):  # 500 events over about 0.5 s
            source.notify()
            time.sleep(0.001)
        last = time.monotonic()
        time.sleep(0.5)
        passes = [t for t in source.reads if t >= started]
        # at most one pass per interval (plus the one at the start of the burst)
        assert 2 <= len(passes) <= (last - started) / 0.2 + 2, passes
        assert passes[-1] >= last - 0.005, "the burst's last event was not reconciled"
        gaps = [b - a for a, b in itertools.pairwise(passes)]
        assert min(gaps) >= 0.19, gaps


class SlowReload:
    """keepalived with thousands of virtual servers: a reload confirms only when the test
    lets it.  Counts how many reloads ran at once and what file each one read."""

    name = "keepalived"
    restarts = 0

    def __init__(self, config: Path) -> None:
        self.config = config
        self.release = threading.Event()
        self.read: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.up = False

    def start(self) -> None:
        self.up = True

    def running(self) -> bool:
        return self.up

    def reload(self) -> ReloadOutcome:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.read.append(self.config.read_text())
        self.release.wait(10)
        self.in_flight -= 1
        return ReloadOutcome(True, "released", 0.0)

    def supervise(self) -> None:
        return None

    def stop(self) -> None:
        self.up = False


class Endpoint:
    """A source with one Service whose one endpoint the test moves."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.notify: Callable[[], None] = lambda: None
        self.address = "203.0.113.1"

    def start(self, notify: Callable[[], None]) -> None:
        self.notify = notify

    def move(self, address: str) -> None:
        self.address = address
        self.notify()

    def snapshot(self) -> Snapshot:
        return Snapshot.from_objects(
            [
                objects.configmap({"192.0.2.50": "default/web"}),
                objects.service("web", [objects.port("http", 80, 8080)]),
                objects.endpoint_slice(
                    "web", [objects.port("http", 8080)], [objects.endpoint(self.address)]
                ),
            ]
        )

    def stop(self) -> None:
        return None


def wait_for(condition: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_files_go_on_being_installed_while_keepalived_confirms_a_reload(tmp_path: Path) -> None:
    """A slow reload does not hold the loop: later changes are rendered, checked and
    installed meanwhile; one reload at a time, and the next one reads the last file."""
    config = tmp_path / "keepalived.conf"
    keepalived, source = SlowReload(config), Endpoint()
    settings = Settings(
        interface="eth0", coalesce_seconds=0.01, keepalived_reload_interval=0, spread=False
    )
    agent = make_agent(
        tmp_path, source, settings, files=("keepalived.conf",), daemons={"keepalived": keepalived}
    )
    stop = threading.Event()
    loop = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    loop.start()
    try:
        wait_for(lambda: keepalived.up and config.exists())
        source.move("203.0.113.2")
        wait_for(lambda: len(keepalived.read) == 1)  # in flight, held
        assert "203.0.113.2" in keepalived.read[0]
        for last in ("203.0.113.3", "203.0.113.4"):
            source.move(last)
            wait_for(lambda: last in config.read_text())  # noqa: B023 - waited on at once
        assert len(keepalived.read) == 1, "a second reload began while one was in flight"
        keepalived.release.set()
        wait_for(lambda: len(keepalived.read) == 2)
        assert "203.0.113.4" in keepalived.read[1], "the reload after it read the last file"
        time.sleep(0.1)
        assert len(keepalived.read) == 2 and keepalived.most_in_flight == 1
    finally:
        keepalived.release.set()
        stop.set()
        loop.join(timeout=5)


class Changing:
    """A source whose objects are replaced between passes, as watch events replace them."""

    error: str | None = None

    def __init__(self) -> None:
        self.objs = BASE

    def start(self, notify: Callable[[], None]) -> None:
        return None

    def snapshot(self) -> Snapshot:
        return Snapshot.from_objects(self.objs)

    def stop(self) -> None:
        return None


def test_a_pass_leaves_no_cyclic_garbage(tmp_path: Path) -> None:
    """The loop freezes the first pass's objects out of the cyclic collector
    (``Agent.run``), which is sound only while a pass builds no reference cycles: the
    first pass's would never be freed once replaced, and later ones would bring back the
    collector's runs over a large heap.  Every kind of change, a pass each."""
    source = Changing()
    agent = make_agent(tmp_path, source, SETTINGS, node_name="worker-1")
    agent.reconcile()
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for pick, change in enumerate(KINDS):
            source.objs = changed(source.objs, change, pick)
            agent.reconcile()
            gc.collect()
            assert not gc.garbage, f"after a {change!r} change: {gc.garbage[:5]!r}"
        assert "real_server" in (tmp_path / "keepalived.conf").read_text()
    finally:
        gc.set_debug(0)
        gc.garbage.clear()

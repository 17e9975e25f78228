"""VRRP state from keepalived's notify FIFO, cross-checked with the interface.

keepalived writes one line per state change of an instance to ``vrrp_notify_fifo``
(global_defs)::

    INSTANCE "control_plane" BACKUP 200     (at start-up: every instance enters BACKUP)
    INSTANCE "control_plane" MASTER 200     (the priority is the effective one)
    INSTANCE "control_plane" STOP 200       (keepalived is stopping)

Nothing is written on a reload, and nothing while an instance stays in its state, so
the reader keeps the last line per instance.  Three details decide how the FIFO is
handled:

* The FIFO is created (``mkfifo``, mode 0600) before keepalived starts.  keepalived
  creates a missing FIFO itself, but also deletes one it created when it stops, and
  a FIFO recreated by a restarted agent would not be the one a running keepalived
  still writes to.
* The reader opens it ``O_RDWR | O_NONBLOCK``: holding a write end of its own, it
  never sees end-of-file when keepalived restarts, and the open never blocks waiting
  for a writer.  keepalived's writes never block either: while the agent is down the
  pipe buffers the lines (64 KiB), and a restarted agent reads them first.
* Lines are parsed strictly (an instance name of the agent's own grammar, a known
  state, a priority of 0..255); anything else is logged once and dropped, so a stray
  writer cannot add metric labels or status entries of its choosing.

The cross-check compares what VRRP says with the addresses on the interface: an
instance in MASTER whose advertised VIP is not on the interface forwards nothing
(``master_without_vip``); one in BACKUP or FAULT that still has it is a duplicate VIP
on the segment (``vip_without_master``: the stale-address defect of keepalived-vip and
kube-vip).  keepalived adds the addresses a moment after entering MASTER and removes
them a moment after leaving it, so a mismatch is only reported once two checks in a
row, at least ``grace`` seconds apart, saw it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import select
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.core.model import DesiredState, IPAddress

log = logging.getLogger("vip-agent.vrrp")

STATES = ("MASTER", "BACKUP", "FAULT")
"""The states an instance can be in (what the one-hot metric is over)."""
GONE = ("STOP", "DELETED")
"""Lines that end an instance's state (keepalived stopped, or the instance was removed)."""
EVENTS = ("MASTER_RX_LOWER_PRI",)
"""Lines that report an event, not a state: keepalived 2.x writes this one whenever a
master hears a lower-priority advert (after a partition heals; the template's
``garp_lower_prio_repeat`` answers it), configured script or not.  The instance stays
MASTER, so the line changes nothing and is no stray writer's either."""
PROBLEMS = ("master_without_vip", "vip_without_master")

_LINE = re.compile(
    r'^INSTANCE "(?P<name>[A-Za-z0-9_.-]{1,64})" (?P<state>[A-Z]{1,10}) (?P<priority>\d{1,3})$'
)
_EVENT = re.compile(rf'^INSTANCE "[A-Za-z0-9_.-]{{1,64}}" (?:{"|".join(EVENTS)}) \d{{1,3}}$')
_MAX_LINE = 512
_MAX_INSTANCES = 4096
"""More instances than keepalived could run on one interface (255 VRIDs x 2 families)."""


@dataclass(frozen=True)
class InstanceState:
    """The last state keepalived announced for one VRRP instance."""

    name: str
    state: str
    """MASTER, BACKUP or FAULT."""
    priority: int
    """The effective priority keepalived announced with it (after track weights)."""
    since: float
    """Unix time the line was read."""


@dataclass(frozen=True)
class Mismatch:
    """VRRP and the interface disagree about one instance."""

    instance: str
    problem: str
    """One of PROBLEMS."""
    vips: tuple[IPAddress, ...]
    """The instance's advertised VIPs that are missing (master) or present (backup)."""


def parse_line(line: str) -> tuple[str, str, int] | None:
    """``(instance, state, priority)`` of one FIFO line, or None for anything else.

    ``GROUP`` lines (sync groups, which the agent does not render) and states other than
    those keepalived documents are None too.
    """
    match = _LINE.match(line.strip())
    if match is None:
        return None
    state = match["state"]
    priority = int(match["priority"])
    if state not in STATES + GONE or priority > 255:
        return None
    return match["name"], state, priority


class VrrpStates:
    """Per-instance state, thread-safe: written by the FIFO reader, read by status/metrics."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self._lock = threading.Lock()
        self._states: dict[str, InstanceState] = {}

    def update(self, name: str, *, state: str, priority: int) -> InstanceState | None:
        """Record a FIFO line; the new state, or None when the instance is gone."""
        with self._lock:
            if state in GONE:
                self._states.pop(name, None)
                return None
            if name not in self._states and len(self._states) >= _MAX_INSTANCES:
                return None
            entry = InstanceState(name=name, state=state, priority=priority, since=self._wall())
            self._states[name] = entry
            return entry

    def forget(self, keep: Iterable[str]) -> list[str]:
        """Drop instances not in ``keep`` (removed from the configuration); their names."""
        wanted = set(keep)
        with self._lock:
            gone = [n for n in self._states if n not in wanted]
            for name in gone:
                del self._states[name]
        return gone

    def snapshot(self) -> dict[str, InstanceState]:
        with self._lock:
            return dict(self._states)


def cross_check(
    states: Mapping[str, InstanceState],
    *,
    desired: DesiredState | None,
    on_interface: set[IPAddress],
) -> list[Mismatch]:
    """Instances whose VRRP state and the interface's addresses disagree.

    Only the advertised VIPs (``virtual_ipaddress``) are compared: they are added and
    removed together with the state, while excluded VIPs may legitimately lag.
    """
    if desired is None:
        return []
    out: list[Mismatch] = []
    for instance in desired.instances:
        entry = states.get(instance.name)
        if entry is None or not instance.vips:
            continue
        if entry.state == "MASTER":
            missing = tuple(v for v in instance.vips if v not in on_interface)
            if missing:
                out.append(Mismatch(instance.name, "master_without_vip", missing))
        else:
            present = tuple(v for v in instance.vips if v in on_interface)
            if present:
                out.append(Mismatch(instance.name, "vip_without_master", present))
    return out


def ensure_fifo(path: Path) -> bool:
    """Create the FIFO (mode 0600) unless it exists; False when something else is there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkfifo(path, 0o600)
    return stat.S_ISFIFO(path.lstat().st_mode)


class VrrpMonitor:
    """Reads the FIFO and runs the cross-check, in one daemon thread.

    ``on_state(name, state_or_None)`` is told every accepted line, ``on_mismatch(list)``
    every confirmed change of the set of mismatches; both run in the monitor's thread
    and must return quickly.
    """

    def __init__(
        self,
        *,
        fifo: Path | None,
        states: VrrpStates,
        desired: Callable[[], DesiredState | None],
        addresses: Callable[[], set[IPAddress]],
        on_state: Callable[[str, InstanceState | None], None] = lambda name, state: None,
        on_mismatch: Callable[[list[Mismatch]], None] = lambda found: None,
        check_interval: float = 2.0,
        grace: float = 1.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fifo = fifo
        self.states = states
        self.desired = desired
        self.addresses = addresses
        self.on_state = on_state
        self.on_mismatch = on_mismatch
        self.check_interval = check_interval
        self.grace = grace
        self.clock = clock
        self.mismatches: list[Mismatch] = []
        """The confirmed mismatches of the last check (empty when all agree)."""
        self._fd: int | None = None
        self._wake_r: int | None = None
        self._wake_w: int | None = None
        self._buffer = b""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._suspect: dict[tuple[str, str], float] = {}
        self._bad_lines = 0

    def open(self) -> None:
        """Create and open the FIFO; call before keepalived starts."""
        if self.fifo is None:
            return
        try:
            if not ensure_fifo(self.fifo):
                log.error("%s exists and is not a FIFO: VRRP state is not followed", self.fifo)
                return
            self._fd = os.open(self.fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as err:
            log.error("cannot open VRRP notify FIFO %s: %s", self.fifo, err.strerror)

    def start(self) -> None:
        if self._fd is None:
            self.open()
        # a pipe of its own wakes the thread from select at once when the agent stops
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="vrrp-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        for fd in (self._wake_r, self._wake_w):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    # --- the thread -----------------------------------------------------------------

    def _run(self) -> None:
        next_check = self.clock()
        while not self._stop.is_set():
            timeout = max(0.0, min(0.5, next_check - self.clock()))
            watched = [fd for fd in (self._fd, self._wake_r) if fd is not None]
            with contextlib.suppress(InterruptedError):
                ready, _, _ = select.select(watched, [], [], timeout)
                if self._fd is not None and self._fd in ready:
                    self.read_available()
            if self.clock() >= next_check:
                next_check = self.clock() + self.check_interval
                try:
                    self.check()
                except Exception:  # a netlink hiccup must not end the monitor
                    log.exception("VRRP cross-check failed")

    def read_available(self, limit: int = 64) -> None:
        """Read what is buffered (at most ``limit`` chunks) and handle complete lines."""
        assert self._fd is not None
        for _ in range(limit):
            try:
                chunk = os.read(self._fd, 65536)
            except OSError as err:
                if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    break
                raise
            if not chunk:
                break
            self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > _MAX_LINE:  # no newline in sight: not keepalived's output
            self._buffer = b""
        for raw in lines:
            self.feed(raw.decode("utf-8", "replace"))

    def feed(self, line: str) -> None:
        """Handle one FIFO line (also the test entry point)."""
        parsed = parse_line(line[:_MAX_LINE])
        if parsed is None:
            known = line.startswith("GROUP ") or _EVENT.match(line.strip()) is not None
            if line.strip() and not known:
                self._bad_lines += 1
                if self._bad_lines <= 10:
                    log.warning("VRRP notify FIFO: ignoring line %r", line[:80])
            return
        name, state, priority = parsed
        entry = self.states.update(name, state=state, priority=priority)
        if entry is not None:
            log.info("VRRP instance %s is %s (priority %d)", name, state, priority)
        else:
            log.info("VRRP instance %s: %s", name, state)
        self.on_state(name, entry)

    def check(self) -> list[Mismatch]:
        """One cross-check; mismatches seen twice ``grace`` apart are confirmed."""
        desired = self.desired()
        if desired is not None:
            for name in self.states.forget(i.name for i in desired.instances):
                self.on_state(name, None)
        found = cross_check(self.states.snapshot(), desired=desired, on_interface=self.addresses())
        now = self.clock()
        seen = {(m.instance, m.problem) for m in found}
        self._suspect = {k: t for k, t in self._suspect.items() if k in seen}
        confirmed: list[Mismatch] = []
        for mismatch in found:
            first = self._suspect.setdefault((mismatch.instance, mismatch.problem), now)
            if now - first >= self.grace:
                confirmed.append(mismatch)
        if confirmed != self.mismatches:
            for mismatch in confirmed:
                if mismatch not in self.mismatches:
                    log.warning(
                        "VRRP instance %s: %s (%s)",
                        mismatch.instance,
                        mismatch.problem.replace("_", " "),
                        ", ".join(map(str, mismatch.vips)),
                    )
            self.mismatches = confirmed
            self.on_mismatch(confirmed)
        return confirmed

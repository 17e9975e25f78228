"""What every daemon the agent runs shares: pidfiles, signals, supervision, confirmed reloads.

The daemon modules beside this one (keepalived.py, haproxy.py) hold what differs: the
command line, how a reload is confirmed, the configuration file and its checker.  This
module is the part that does not care which daemon it runs (as Neutron's
``external_process.py`` sits beside its ``keepalived.py``):

* :class:`Supervised` (``--daemons supervise``: DaemonSet, static pod): the agent starts
  the daemon as its child, restarts it with backoff when it dies, and stops it on SIGTERM
  so keepalived releases the VIPs at once.  A restarted agent first *adopts* a daemon
  still running from before (pidfile + psutil check that the pid really is that daemon
  with our config), so a crash of the agent never flaps a VIP.
* Daemon output is piped through the agent's log; keepalived and haproxy ignore SIGPIPE,
  so they keep running (unlogged) if the agent dies.
* :class:`Daemon` is what the agent's loop asks of every run mode (this one, and the
  ``systemd`` and ``none`` modes of agent.daemons.modes); :class:`ReloadOutcome` is what
  a reload reports: confirmed, not assumed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # imported where used: `render --dry-run` runs no daemon
    import psutil

log = logging.getLogger("vip-agent.daemons")

Clock = Callable[[], float]


@dataclass(frozen=True)
class ReloadOutcome:
    ok: bool
    detail: str
    seconds: float


class Daemon(Protocol):
    name: str
    restarts: int
    """Times the agent started it again after it died (supervise mode; else 0)."""

    def start(self) -> None:
        """Adopt a running instance or start one (no-op for modes without processes)."""

    def reload(self) -> ReloadOutcome:
        """Make the daemon read its configuration file again, and confirm it did."""

    def supervise(self) -> None:
        """Called periodically: restart a dead child (with backoff)."""

    def stop(self) -> None:
        """Stop it (supervise mode) so VIPs are released; others: nothing."""

    def running(self) -> bool: ...


def read_pid(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def verified_process(pidfile: Path, *, exe: str, config: Path) -> psutil.Process | None:
    """The process in ``pidfile`` if it really is ``exe`` running ``config`` (pids get reused)."""
    import psutil

    pid = read_pid(pidfile)
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        cmdline = proc.cmdline()
        names = {proc.name(), Path(cmdline[0]).name if cmdline else ""}
        if exe not in names or str(config) not in cmdline:
            return None
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


class Backoff:
    """Restart delays 0.5 s doubling to 30 s; back to 0.5 s once a child ran 5 s.

    A daemon that dies within seconds of starting is crash-looping (a bad binary, a
    missing capability) and must not be restarted in a hot loop; one that ran for a
    while and was killed should come back at once, because the VIP is waiting for it.
    """

    def __init__(
        self, clock: Clock, *, first: float = 0.5, cap: float = 30.0, healthy_after: float = 5.0
    ) -> None:
        self.clock, self.first, self.cap, self.healthy_after = clock, first, cap, healthy_after
        self.delay = first
        self.not_before = 0.0

    def died(self, started_at: float) -> None:
        if self.clock() - started_at >= self.healthy_after:
            self.delay = self.first
        self.not_before = self.clock() + self.delay
        self.delay = min(self.delay * 2, self.cap)

    def ready(self) -> bool:
        return self.clock() >= self.not_before


class Child:
    """A supervised process: spawned by us (Popen) or adopted (psutil)."""

    def __init__(self, name: str, on_line: Callable[[str], None] = lambda line: None) -> None:
        self.name = name
        self.on_line = on_line
        """Called with each line of output, in the log thread, holding ``cond`` (waiters are
        notified after it returns): keepalived counts reloads and notices a dead child."""
        self.popen: subprocess.Popen[bytes] | None = None
        self.adopted: psutil.Process | None = None
        self.started_at = 0.0
        self.lines: list[str] = []
        """The last 200 lines of output, for error reports."""
        self.cond = threading.Condition()
        self.group: int | None = None
        """The process group the daemon leads (we start it in a session of its own), so
        the children it forked can be found again after it died."""

    @property
    def pid(self) -> int | None:
        if self.popen is not None:
            return self.popen.pid
        return self.adopted.pid if self.adopted is not None else None

    def alive(self) -> bool:
        import psutil

        if self.popen is not None:
            return self.popen.poll() is None
        if self.adopted is not None:
            try:
                return bool(self.adopted.is_running()) and (
                    self.adopted.status() != psutil.STATUS_ZOMBIE
                )
            except psutil.NoSuchProcess:
                return False
        return False

    def spawn(self, argv: Sequence[str], clock: Clock) -> None:
        # A session of its own: a Ctrl-C meant for the agent does not reach the
        # daemon; the agent forwards SIGTERM itself so keepalived releases VIPs.
        self.popen = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.adopted = None
        self.group = self.popen.pid
        self.started_at = clock()
        assert self.popen.stdout is not None
        threading.Thread(
            target=self._pump, args=(self.popen.stdout,), name=f"{self.name}-log", daemon=True
        ).start()

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            log.info("%s: %s", self.name, line)
            with self.cond:
                self.lines.append(line)
                del self.lines[:-200]
                self.on_line(line)
                self.cond.notify_all()

    def signal(self, sig: int) -> None:
        pid = self.pid
        if pid is not None and self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            if self.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(timeout=0.02)
            else:
                time.sleep(0.02)
        return not self.alive()

    def adopt(self, proc: psutil.Process, clock: Clock) -> None:
        self.adopted, self.popen = proc, None
        self.started_at = clock()
        try:
            # only a group the daemon leads is ours to clean up after it dies
            self.group = proc.pid if os.getpgid(proc.pid) == proc.pid else None
        except ProcessLookupError:
            self.group = None

    def reap_orphans(self, grace: float = 1.5) -> bool:
        """End what is left of the dead daemon's process group; whether anything was.

        keepalived's VRRP and checker children outlive a parent killed with SIGKILL (they
        get SIGTERM from the kernel and take about a second to shut down), and a new
        keepalived started meanwhile refuses to run beside them ("daemon is already
        running") and dies: a second death and a second restart delay for one fault.
        They get ``grace`` seconds to finish their goodbye (a VRRP child sends priority 0
        and removes its VIPs, so the peer takes over at once), then SIGKILL.  Zombies
        count as gone: an adopted daemon's exit is reaped by init, not by us, whenever
        init gets to it.
        """
        group, self.group = self.group, None
        if group is None or not _live_members(group):
            return False
        _signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _live_members(group):
            _reap_group(group)
            time.sleep(0.02)
        for _ in range(100):
            if not _live_members(group):
                break
            _signal_group(group, signal.SIGKILL)
            _reap_group(group)
            time.sleep(0.02)
        return True

    def terminate(self, grace: float) -> None:
        self.signal(signal.SIGTERM)
        if not self.wait(grace):
            self.signal(signal.SIGKILL)
            self.wait(2.0)


def _signal_group(group: int, sig: int) -> bool:
    """Signal a process group; False once it is empty (or not ours to signal)."""
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("may not signal process group %d", group)
        return False
    return True


def _live_members(group: int) -> list[int]:
    """Pids in a process group that are not zombies."""
    import psutil

    found = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == group:
                found.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def _reap_group(group: int) -> None:
    """Orphans are init's to reap, or ours when the agent is a container's pid 1."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-group, os.WNOHANG)[0] > 0:
            pass


def _nothing() -> None:
    return None


class Supervised:
    """Start-or-adopt, restart with backoff, stop: what every supervised daemon shares.

    A daemon module subclasses it with its ``name``, ``exe`` (the process name an
    adoption checks for), :meth:`argv` and a ``reload`` that confirms the reload its
    own way.
    """

    name = ""
    exe = ""

    def __init__(
        self,
        *,
        config: Path,
        run_dir: Path,
        pidfile: Path,
        clock: Clock,
        prefix: Sequence[str],
        before_start: Callable[[], None] = _nothing,
    ) -> None:
        self.prefix = list(prefix)
        """Prepended to the command, e.g. ``ip netns exec NS`` (tests, the failover lab)."""
        self.before_start = before_start
        """Run before a fresh start, not before an adoption (keepalived: clear stale VIPs)."""
        self.config = config
        self.run_dir = run_dir
        self.pidfile = pidfile
        self.clock = clock
        self.child = Child(self.name, self.on_line)
        self.backoff = Backoff(clock)
        self.wanted = False
        self.death_noticed = False
        self.restarts = 0

    def argv(self) -> list[str]:
        raise NotImplementedError

    def on_line(self, line: str) -> None:
        """Each line the daemon writes, as it comes (after it went to the log)."""

    def start(self) -> None:
        self.wanted = True
        self.run_dir.mkdir(parents=True, exist_ok=True)
        running = verified_process(self.pidfile, exe=self.exe, config=self.config)
        if running is not None:
            log.info("%s: adopted running pid %d, no restart", self.name, running.pid)
            self.child.adopt(running, self.clock)
            return
        self.before_start()
        self.child.spawn([*self.prefix, *self.argv()], self.clock)
        log.info("%s: started pid %s", self.name, self.child.pid)

    def running(self) -> bool:
        return self.child.alive()

    def supervise(self) -> None:
        if not self.wanted or self.child.alive():
            return
        if not self.death_noticed:
            self.death_noticed = True
            self.backoff.died(self.child.started_at)
            if self.child.reap_orphans():
                log.warning("%s: ended the children it left running", self.name)
            log.warning(
                "%s: pid %s exited; restarting in %.1fs",
                self.name,
                self.child.pid,
                max(0.0, self.backoff.not_before - self.clock()),
            )
        if self.backoff.ready():
            self.death_noticed = False
            self.restarts += 1
            self.start()

    def stop(self) -> None:
        self.wanted = False
        self.child.terminate(grace=5.0)
        self.child.reap_orphans()

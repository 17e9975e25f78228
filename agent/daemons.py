"""keepalived and haproxy processes: start or adopt, reload and confirm, supervise, stop.

Three ways to run them (``--daemons``):

* ``supervise`` (DaemonSet, static pod): the agent starts keepalived
  (``--dont-fork --log-console``) and haproxy (master-worker, ``-W -S``) as its
  children, restarts them with backoff when they die, and stops them on SIGTERM
  so keepalived releases the VIPs at once.  A restarted agent first *adopts* daemons
  still running from before (pidfile + psutil check that the pid really is that
  daemon with our config), so a crash of the agent never flaps a VIP.
* ``systemd`` (bare metal): keepalived.service and haproxy.service run them; the agent
  reloads through systemctl.
* ``none``: files are written and validated only.

Reloads are confirmed, not assumed: keepalived logs ``Reload complete`` once per
child process after a SIGHUP; haproxy's master CLI ``show proc`` shows the master's
reload counter move with no new failure and a new current worker.  Daemon output is
piped through the agent's log; keepalived and haproxy ignore SIGPIPE, so they keep
running (unlogged) if the agent dies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

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

    def start(self) -> None:
        """Adopt a running instance or start one (no-op for modes without processes)."""

    def reload(self) -> ReloadOutcome:
        """Make the daemon read its configuration file again, and confirm it did."""

    def supervise(self) -> None:
        """Called periodically: restart a dead child (with backoff)."""

    def stop(self) -> None:
        """Stop it (supervise mode) so VIPs are released; others: nothing."""

    def running(self) -> bool: ...


def ipvs_available(proc_net: Path = Path("/proc/net")) -> bool:
    """Is IPVS in this kernel (and network namespace)? Tries loading the module once."""
    if (proc_net / "ip_vs").exists():
        return True
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["modprobe", "-q", "ip_vs"], capture_output=True, timeout=10, check=False)
    return (proc_net / "ip_vs").exists()


def read_pid(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def verified_process(pidfile: Path, exe: str, config: Path) -> psutil.Process | None:
    """The process in ``pidfile`` if it really is ``exe`` running ``config`` (pids get reused)."""
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


class _Backoff:
    """Restart delays 0.5 s doubling to 30 s; back to 0.5 s once a child ran 5 s.

    A daemon that dies within seconds of starting is crash-looping (a bad binary, a
    missing capability) and must not be restarted in a hot loop; one that ran for a
    while and was killed should come back at once, because the VIP is waiting for it.
    """

    def __init__(
        self, clock: Clock, first: float = 0.5, cap: float = 30.0, healthy_after: float = 5.0
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


class _Child:
    """A supervised process: spawned by us (Popen) or adopted (psutil)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.popen: subprocess.Popen[bytes] | None = None
        self.adopted: psutil.Process | None = None
        self.started_at = 0.0
        self.lines: list[str] = []
        """The last 200 lines of output, for error reports."""
        self.reloads_completed = 0
        """keepalived's "Reload complete" lines seen so far (one per child per reload)."""
        self.cond = threading.Condition()

    @property
    def pid(self) -> int | None:
        if self.popen is not None:
            return self.popen.pid
        return self.adopted.pid if self.adopted is not None else None

    def alive(self) -> bool:
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
                if "Reload complete" in line:
                    self.reloads_completed += 1
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

    def terminate(self, grace: float) -> None:
        self.signal(signal.SIGTERM)
        if not self.wait(grace):
            self.signal(signal.SIGKILL)
            self.wait(2.0)


class _Supervised:
    """Start-or-adopt, restart with backoff, stop: what both daemons share."""

    name = ""
    exe = ""

    def __init__(
        self, *, config: Path, run_dir: Path, pidfile: Path, clock: Clock, prefix: Sequence[str]
    ) -> None:
        self.prefix = list(prefix)
        """Prepended to the command, e.g. ``ip netns exec NS`` (tests, the failover lab)."""
        self.config = config
        self.run_dir = run_dir
        self.pidfile = pidfile
        self.clock = clock
        self.child = _Child(self.name)
        self.backoff = _Backoff(clock)
        self.wanted = False
        self.death_noticed = False
        self.restarts = 0

    def argv(self) -> list[str]:
        raise NotImplementedError

    def before_start(self) -> None:
        """Hook run before a fresh start (not before an adoption)."""

    def start(self) -> None:
        self.wanted = True
        self.run_dir.mkdir(parents=True, exist_ok=True)
        running = verified_process(self.pidfile, self.exe, self.config)
        if running is not None:
            log.info("%s: adopted running pid %d, no restart", self.name, running.pid)
            self.child.adopted, self.child.popen = running, None
            self.child.started_at = self.clock()
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


class Keepalived(_Supervised):
    """keepalived as a child of the agent (supervise mode)."""

    name = "keepalived"
    exe = "keepalived"

    def __init__(
        self,
        *,
        binary: str,
        config: Path,
        run_dir: Path,
        before_start: Callable[[], None] = lambda: None,
        clock: Clock = time.monotonic,
        confirm_timeout: float = 5.0,
        ipvs: bool = True,
        prefix: Sequence[str] = (),
    ) -> None:
        super().__init__(
            config=config,
            run_dir=run_dir,
            pidfile=run_dir / "keepalived.pid",
            clock=clock,
            prefix=prefix,
        )
        self.ipvs = ipvs
        self.binary = binary
        self.vrrp_pidfile = run_dir / "keepalived_vrrp.pid"
        self.checkers_pidfile = run_dir / "keepalived_checkers.pid"
        self._before_start = before_start
        self.confirm_timeout = confirm_timeout

    def before_start(self) -> None:
        self._before_start()

    def argv(self) -> list[str]:
        # Without IPVS in the kernel keepalived's checker child exits FATAL and takes
        # the VRRP child (and every VIP) down with it: run VRRP alone instead.
        only_vrrp = [] if self.ipvs else ["--vrrp"]
        return [
            *(self.binary, "--dont-fork", "--log-console", "--log-detail", "--no-syslog"),
            *only_vrrp,
            *("--use-file", str(self.config), "--pid", str(self.pidfile)),
            *("--vrrp_pid", str(self.vrrp_pidfile), "--checkers_pid", str(self.checkers_pidfile)),
        ]

    def _children(self) -> int:
        count = 0
        for pidfile in (self.vrrp_pidfile, self.checkers_pidfile):
            pid = read_pid(pidfile)
            if pid is not None and psutil.pid_exists(pid):
                count += 1
        return max(count, 1)

    def reload(self) -> ReloadOutcome:
        started = time.monotonic()
        if not self.child.alive():
            return ReloadOutcome(False, "keepalived is not running", 0.0)
        expected = self._children()
        with self.child.cond:
            mark = self.child.reloads_completed
            self.child.signal(signal.SIGHUP)
            if self.child.popen is None:
                # adopted: its output went to the agent that started it, so only
                # "still alive after the signal" can be confirmed
                return ReloadOutcome(True, "signalled (adopted, unconfirmed)", 0.0)
            done = self.child.cond.wait_for(
                lambda: self.child.reloads_completed - mark >= expected,
                timeout=self.confirm_timeout,
            )
        took = time.monotonic() - started
        if not done:
            return ReloadOutcome(False, f"no 'Reload complete' within {took:.1f}s", took)
        return ReloadOutcome(True, "reload complete", took)


class Haproxy(_Supervised):
    """haproxy in master-worker mode as a child of the agent (supervise mode)."""

    name = "haproxy"
    exe = "haproxy"

    def __init__(
        self,
        *,
        binary: str,
        config: Path,
        run_dir: Path,
        clock: Clock = time.monotonic,
        confirm_timeout: float = 10.0,
        prefix: Sequence[str] = (),
    ) -> None:
        super().__init__(
            config=config,
            run_dir=run_dir,
            pidfile=run_dir / "haproxy.pid",
            clock=clock,
            prefix=prefix,
        )
        self.binary = binary
        self.master_socket = run_dir / "haproxy-master.sock"
        self.confirm_timeout = confirm_timeout

    def argv(self) -> list[str]:
        return [
            *(self.binary, "-W", "-S", f"{self.master_socket},mode,600"),
            *("-f", str(self.config), "-p", str(self.pidfile)),
        ]

    def master_command(self, command: str, timeout: float = 2.0) -> str:
        """One command on the master CLI (``;quit`` makes the master close when done)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.master_socket))
            sock.sendall(f"{command};quit\n".encode())
            chunks: list[bytes] = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")

    def processes(self) -> ProcTable:
        return ProcTable.parse(self.master_command("show proc"))

    def _processes_when_ready(self, deadline: float) -> ProcTable:
        """``show proc``, waiting until ``deadline`` for a master that is still starting.

        Right after a start (or a previous reload) the master has not bound its socket
        yet: connecting fails with ENOENT or ECONNREFUSED for a few milliseconds, and a
        master that has just bound it may still reset the first connection (ECONNRESET,
        seen in about half of the starts of tests/functional/test_daemons.py).
        """
        while True:
            try:
                return self.processes()
            except (FileNotFoundError, ConnectionError):
                if time.monotonic() >= deadline or not self.child.alive():
                    raise
                time.sleep(0.01)

    def reload(self) -> ReloadOutcome:
        started = time.monotonic()
        if not self.child.alive():
            return ReloadOutcome(False, "haproxy is not running", 0.0)
        deadline = time.monotonic() + self.confirm_timeout
        try:
            before = self._processes_when_ready(deadline)
            # the master re-executes itself on "reload" and drops this connection
            with contextlib.suppress(OSError):
                self.master_command("reload")
            while time.monotonic() < deadline:
                time.sleep(0.005)
                try:
                    after = self.processes()
                except OSError:
                    continue  # the master is re-executing
                if after.reloads <= before.reloads:
                    continue
                took = time.monotonic() - started
                if after.failed > before.failed:
                    return ReloadOutcome(False, "haproxy reported a failed reload", took)
                if after.worker is not None and after.worker != before.worker:
                    return ReloadOutcome(True, f"new worker {after.worker}", took)
        except OSError as err:
            return ReloadOutcome(False, f"master socket: {err}", time.monotonic() - started)
        return ReloadOutcome(False, "no new worker in time", time.monotonic() - started)


@dataclass(frozen=True)
class ProcTable:
    """The parts of haproxy's ``show proc`` the reload check needs."""

    reloads: int
    failed: int
    worker: int | None

    @classmethod
    def parse(cls, text: str) -> ProcTable:
        reloads = failed = 0
        worker: int | None = None
        section = ""
        for line in text.splitlines():
            if line.startswith("#"):
                section = line
                continue
            fields = line.split()
            if len(fields) < 3 or not fields[0].isdigit():
                continue
            if fields[1] == "master":
                reloads = int(fields[2])
                if "[failed:" in line:
                    failed = int(line.split("[failed:")[1].split("]")[0])
            elif fields[1] == "worker" and section.startswith("# workers") and worker is None:
                worker = int(fields[0])
        return cls(reloads=reloads, failed=failed, worker=worker)


Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _systemctl(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)


class SystemdService:
    """A daemon run by systemd (bare metal): the agent only asks systemctl to reload it."""

    def __init__(self, name: str, unit: str, runner: Runner = _systemctl) -> None:
        self.name = name
        self.unit = unit
        self.runner = runner

    def start(self) -> None:
        done = self.runner(["systemctl", "is-active", "--quiet", self.unit])
        if done.returncode != 0:
            self.runner(["systemctl", "start", self.unit])

    def running(self) -> bool:
        return self.runner(["systemctl", "is-active", "--quiet", self.unit]).returncode == 0

    def reload(self) -> ReloadOutcome:
        started = time.monotonic()
        done = self.runner(["systemctl", "reload-or-restart", self.unit])
        took = time.monotonic() - started
        detail = (done.stderr or done.stdout).strip() or f"systemctl exit {done.returncode}"
        return ReloadOutcome(done.returncode == 0, detail, took)

    def supervise(self) -> None:
        """systemd restarts the unit itself (Restart= in the unit)."""

    def stop(self) -> None:
        """The unit outlives the agent on bare metal: VIPs stay up during agent upgrades."""


class NoDaemon:
    """``--daemons none``: nothing runs; files are written and validated only."""

    def __init__(self, name: str) -> None:
        self.name = name

    def start(self) -> None:
        return None

    def running(self) -> bool:
        return False

    def reload(self) -> ReloadOutcome:
        return ReloadOutcome(True, "no daemon to reload", 0.0)

    def supervise(self) -> None:
        return None

    def stop(self) -> None:
        return None

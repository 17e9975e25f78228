"""haproxy: haproxy.cfg, its checker, and haproxy in master-worker mode as the agent's child.

haproxy serves the PROXY VIPs and the apiserver VIP.  Under ``--daemons supervise`` it
runs in master-worker mode (``-W -S``) with a master CLI socket; a reload is confirmed
when the master's ``show proc`` shows its reload counter move with no new failure and a
new current worker.  It serves what keepalived announces, so it starts first and stops
last.  haproxy.cfg is 0640.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import resource
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent import validate
from agent.core.haproxy_fds import MAX_THREADS
from agent.daemons.process import Clock, ReloadOutcome, Supervised
from agent.daemons.spec import ConfigFile, Hook
from agent.settings import Daemons, Settings

log = logging.getLogger("vip-agent.daemons")


def check_haproxy(
    path: Path,
    *,
    binary: str = "haproxy",
    runner: validate.Runner = validate.run,
    timeout: float = 30.0,
) -> validate.CheckResult:
    return validate.check([binary, "-c", "-f", str(path)], runner=runner, timeout=timeout)


class Haproxy(Supervised):
    """haproxy in master-worker mode as a child of the agent (supervise mode)."""

    name = "haproxy"
    exe = "haproxy"

    def __init__(
        self,
        *,
        binary: str,
        config: Path,
        run_dir: Path,
        before_start: Callable[[], None] = lambda: None,
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
            before_start=before_start,
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


_SECTIONS = frozenset(
    {"global", "defaults", "frontend", "backend", "listen", "peers", "resolvers", "userlist"}
    | {"program", "http-errors", "ring", "cache", "mailers"}
)


def sections(text: str) -> list[validate.Block] | None:
    """haproxy.cfg cut at its section keywords (blank lines and comments right before a
    section belong to it); None when anything but comments comes before the first one."""
    found: list[validate.Block] = []
    current: list[str] = []
    pending: list[str] = []
    kind = ""
    for line in text.splitlines(keepends=True):
        word = line.split(None, 1)[0] if line.strip() else ""
        if not word or (word.startswith("#") and not line[:1].isspace()):
            pending.append(line)
            continue
        if not line[:1].isspace() and word in _SECTIONS:
            if kind:
                found.append(validate.Block(kind, "".join(current)))
            kind, current = word, [*pending, line]
        elif not kind:
            return None
        else:
            current += [*pending, line]
        pending = []
    if kind:
        found.append(validate.Block(kind, "".join(current)))
    if pending:
        found.append(validate.Block("", "".join(pending)))
    return found


SystemctlShow = Callable[[str, str], str | None]
"""(unit, property) -> the property's value as ``systemctl show`` prints it, or None."""


def _systemctl_show(unit: str, prop: str) -> str | None:
    try:
        done = subprocess.run(
            ["systemctl", "show", unit, "--property", prop, "--value"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def fd_limit(
    settings: Settings,
    *,
    rlimit: Callable[[], tuple[int, int]] = lambda: resource.getrlimit(resource.RLIMIT_NOFILE),
    systemctl_show: SystemctlShow = _systemctl_show,
) -> int | None:
    """The file descriptors haproxy will be able to open, or None when not known.

    haproxy raises its soft RLIMIT_NOFILE up to the hard one, so the hard limit is what
    counts: the agent's own under ``supervise`` (its children inherit it), the unit's
    ``LimitNOFILE`` (which systemctl reports as the hard limit) under ``systemd``.
    """
    if settings.haproxy_fd_limit is not None:
        return settings.haproxy_fd_limit
    if settings.daemons is Daemons.SUPERVISE:
        hard = rlimit()[1]
        return None if hard == resource.RLIM_INFINITY else hard
    if settings.daemons is Daemons.SYSTEMD:
        value = systemctl_show(HAPROXY_CFG.unit, "LimitNOFILE")
        return int(value) if value and value.isdigit() else None  # "infinity": no limit
    return None


def threads(settings: Settings, *, cpus: Callable[[], int] | None = None) -> int | None:
    """The threads haproxy will run, or None when not known: under ``supervise`` one per
    CPU the agent may run on, as haproxy (its child, with its affinity) starts by default."""
    if settings.haproxy_threads is not None:
        return settings.haproxy_threads
    if settings.daemons is not Daemons.SUPERVISE:
        return None
    count = cpus() if cpus is not None else len(os.sched_getaffinity(0))
    return min(count, MAX_THREADS)


def with_fd_limit(
    settings: Settings, *, systemctl_show: SystemctlShow = _systemctl_show
) -> Settings:
    """``settings`` with ``haproxy_fd_limit`` and ``haproxy_threads`` filled in as found
    here, so the pure core renders and checks haproxy.cfg for the limit haproxy will
    really have."""
    limit = fd_limit(settings, systemctl_show=systemctl_show)
    count = threads(settings)
    if (limit, count) == (settings.haproxy_fd_limit, settings.haproxy_threads):
        return settings
    return dataclasses.replace(settings, haproxy_fd_limit=limit, haproxy_threads=count)


def _config_path(settings: Settings) -> Path:
    return Path(settings.haproxy_config)


def _check(path: Path, settings: Settings) -> validate.CheckResult:
    return check_haproxy(path, binary=settings.haproxy_binary)


def _supervised(settings: Settings, before_start: Hook) -> Haproxy:
    return Haproxy(
        binary=settings.haproxy_binary,
        config=_config_path(settings),
        run_dir=Path(settings.run_dir),
        before_start=before_start,
    )


HAPROXY_CFG = ConfigFile(
    name="haproxy.cfg",
    template="haproxy.cfg.j2",
    mode=0o640,
    daemon="haproxy",
    unit="haproxy.service",
    path=_config_path,
    check=_check,
    supervised=_supervised,
    split=sections,
    alone=frozenset({"listen"}),
)

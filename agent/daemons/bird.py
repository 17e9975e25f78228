"""BIRD 2: bird.conf, its checker, and bird as the agent's child (mode bgp).

BIRD announces the VIPs to the routers over BGP.  ``bird -p -c FILE`` checks a file;
``birdc configure`` reloads softly (announcing or withdrawing routes, or changing
communities, never resets a session; only a changed peer does), and says
``Reconfigured`` when it is done, which is the confirmation.

Under ``--daemons supervise`` it runs in the foreground (``-f``) with its control socket
in ``run_dir``.  A start after an unclean end (BIRD killed, or the agent and BIRD gone
while the routers kept the routes under graceful restart) uses ``-R``: BIRD then tells
its peers it restarted gracefully, so they keep the routes until it has sent them
again.  Stopping it for good (the agent's SIGTERM: planned maintenance) first shuts the
BGP sessions down with ``birdc disable``, which withdraws every route at the routers at
once, then stops BIRD.  bird.conf is 0600: it may hold BGP passwords.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent import validate
from agent.daemons.process import Clock, ReloadOutcome, Supervised, read_pid
from agent.daemons.spec import ConfigFile, Hook
from agent.settings import Daemons, Settings

log = logging.getLogger("vip-agent.daemons")


def check_bird(
    path: Path,
    *,
    binary: str = "bird",
    runner: validate.Runner = validate.run,
    timeout: float = 30.0,
) -> validate.CheckResult:
    """``bird -p``: parse the file and exit; non-zero with the line on any error."""
    return validate.check([binary, "-p", "-c", str(path)], runner=runner, timeout=timeout)


@dataclass(frozen=True)
class Session:
    """One BGP session as ``birdc show protocols all`` reports it."""

    name: str
    """The protocol's name in bird.conf (``peer_198_51_100_1``)."""
    neighbor: str
    state: str
    """BGP state: Established, Idle, Connect, Active, OpenSent, OpenConfirm (or Down)."""
    exported: int
    """Routes announced to the peer, every channel together."""

    @property
    def up(self) -> bool:
        return self.state == "Established"


_PROTOCOL = re.compile(r"^(\S+)\s+BGP\s+\S+\s+(\S+)\s+\S+\s*(\S*)")
_NEIGHBOR = re.compile(r"^\s+Neighbor address:\s+(\S+)")
_BGP_STATE = re.compile(r"^\s+BGP state:\s+(\S+)")
_EXPORTED = re.compile(r"^\s+Routes:\s+\d+ imported, (\d+) exported")


def parse_sessions(text: str) -> list[Session]:
    """The BGP protocols of ``birdc show protocols all`` output."""
    found: list[Session] = []
    current: Session | None = None
    for line in text.splitlines():
        if current is not None and line and not line[0].isspace():
            found.append(current)  # the next protocol's line ends this one's block
            current = None
        if match := _PROTOCOL.match(line):
            current = Session(name=match[1], neighbor="", state=match[3] or "Down", exported=0)
        elif current is not None and (match := _NEIGHBOR.match(line)):
            current = dataclasses.replace(current, neighbor=match[1])
        elif current is not None and (match := _BGP_STATE.match(line)):
            current = dataclasses.replace(current, state=match[1])
        elif current is not None and (match := _EXPORTED.match(line)):
            current = dataclasses.replace(current, exported=current.exported + int(match[1]))
    if current is not None:
        found.append(current)
    return found


def sessions(*, binary: str, socket: Path, timeout: float = 2.0) -> list[Session]:
    """The BGP sessions of the BIRD behind ``socket``; OSError when it does not answer."""
    try:
        done = birdc(["show", "protocols", "all"], binary=binary, socket=socket, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise OSError(f"birdc: no answer within {timeout:g}s") from err
    if done.returncode != 0 or "BIRD" not in done.stdout:
        raise OSError((done.stderr or done.stdout).strip() or f"birdc exit {done.returncode}")
    return parse_sessions(done.stdout)


def socket_path(settings: Settings) -> Path:
    """Where BIRD's control socket is: the agent's run_dir when it supervises BIRD, the
    distribution's place when systemd runs it."""
    if settings.daemons is Daemons.SYSTEMD:
        return Path("/run/bird/bird.ctl")
    return Path(settings.run_dir) / "bird.ctl"


def birdc(
    argv: Sequence[str], *, binary: str, socket: Path, timeout: float = 5.0
) -> subprocess.CompletedProcess[str]:
    """One birdc command on ``socket``."""
    return subprocess.run(
        [binary, "-s", str(socket), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


class Bird(Supervised):
    """bird as a child of the agent (supervise mode)."""

    name = "bird"
    exe = "bird"

    def __init__(
        self,
        *,
        binary: str,
        birdc_binary: str,
        config: Path,
        run_dir: Path,
        before_start: Hook = lambda: None,
        clock: Clock = time.monotonic,
        confirm_timeout: float = 10.0,
        prefix: Sequence[str] = (),
    ) -> None:
        super().__init__(
            config=config,
            run_dir=run_dir,
            pidfile=run_dir / "bird.pid",
            clock=clock,
            prefix=prefix,
            before_start=before_start,
        )
        self.binary = binary
        self.birdc_binary = birdc_binary
        self.socket = run_dir / "bird.ctl"
        self.confirm_timeout = confirm_timeout
        self.clean_stop = run_dir / "bird.stopped"
        """Exists after a stop that withdrew the routes: the next start is not a restart."""

    def argv(self) -> list[str]:
        # -R after an unclean end (BIRD died and is restarted, or a stale pidfile says an
        # earlier one was killed): the routers kept this node's routes under graceful
        # restart and wait for BIRD to announce them again before they drop stale ones
        unclean = self.restarts > 0 or self._left_running()
        graceful = ["-R"] if unclean and not self.clean_stop.exists() else []
        return [
            *(self.binary, "-f", "-c", str(self.config), "-s", str(self.socket)),
            *("-P", str(self.pidfile), *graceful),
        ]

    def _left_running(self) -> bool:
        """A pidfile from an earlier BIRD that did not stop cleanly."""
        return read_pid(self.pidfile) is not None

    def start(self) -> None:
        super().start()
        self.clean_stop.unlink(missing_ok=True)

    def command(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return birdc(argv, binary=self.birdc_binary, socket=self.socket)

    def reload(self) -> ReloadOutcome:
        started = time.monotonic()
        if not self.child.alive():
            return ReloadOutcome(False, "bird is not running", 0.0)
        try:
            done = self.command("configure")
        except subprocess.TimeoutExpired:
            return ReloadOutcome(False, "birdc configure: no answer", time.monotonic() - started)
        took = time.monotonic() - started
        output = (done.stdout + done.stderr).strip()
        if done.returncode == 0 and "Reconfigured" in output:
            return ReloadOutcome(True, "reconfigured", took)
        return ReloadOutcome(False, output.splitlines()[-1] if output else "no answer", took)

    def stop(self) -> None:
        """Withdraw everything at the routers (shut the sessions down), then stop."""
        if self.child.alive():
            try:
                self.command("disable", '"peer_*"')
            except subprocess.TimeoutExpired:
                log.warning("bird: birdc disable did not answer; stopping anyway")
            self.clean_stop.touch()
        super().stop()


def _config_path(settings: Settings) -> Path:
    return Path(settings.bird_config)


def _check(path: Path, settings: Settings) -> validate.CheckResult:
    return check_bird(path, binary=settings.bird_binary)


def _supervised(settings: Settings, before_start: Hook) -> Bird:
    return Bird(
        binary=settings.bird_binary,
        birdc_binary=settings.birdc_binary,
        config=_config_path(settings),
        run_dir=Path(settings.run_dir),
        before_start=before_start,
    )


BIRD_CONF = ConfigFile(
    name="bird.conf",
    template="bird.conf.j2",
    mode=0o600,  # may hold BGP passwords
    daemon="bird",
    unit="bird.service",
    path=_config_path,
    check=_check,
    supervised=_supervised,
    announces=True,
)

"""Who runs the daemons (``--daemons``), and the two modes in which it is not the agent.

* ``supervise`` (DaemonSet, static pod): each daemon module's own supervised daemon
  (agent.daemons.process.Supervised), the agent's child.
* ``systemd`` (bare metal): the daemons are system services (keepalived.service,
  haproxy.service); the agent starts them when they are not running and reloads them
  through systemctl.
* ``none``: files are written and validated only.

:func:`daemons_for` builds one daemon per file of the list, so a new daemon module is
run in every mode without an edit here.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from agent.daemons.process import Daemon, ReloadOutcome
from agent.daemons.spec import ConfigFile, Hook
from agent.settings import Daemons, Settings

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _systemctl(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)


class SystemdService:
    """A daemon run by systemd (bare metal): the agent only asks systemctl to reload it."""

    def __init__(self, name: str, unit: str, *, runner: Runner = _systemctl) -> None:
        self.name = name
        self.unit = unit
        self.runner = runner
        self.restarts = 0  # systemd restarts the unit; the agent never does

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
        self.restarts = 0

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


def _nothing() -> None:
    return None


def daemons_for(
    settings: Settings,
    *,
    files: Iterable[ConfigFile],
    before_start: Mapping[str, Hook] | None = None,
) -> dict[str, Daemon]:
    """Daemon name -> the daemon as ``settings.daemons`` runs it, in the list's order.

    ``before_start`` maps a daemon name to a hook its supervised process runs before
    each fresh start (``run`` clears VIPs an earlier keepalived left behind).
    """
    hooks = before_start or {}
    daemons: dict[str, Daemon] = {}
    for f in files:
        if settings.daemons is Daemons.SUPERVISE:
            daemons[f.daemon] = f.supervised(settings, hooks.get(f.daemon, _nothing))
        elif settings.daemons is Daemons.SYSTEMD:
            daemons[f.daemon] = SystemdService(f.daemon, f.unit)
        else:
            daemons[f.daemon] = NoDaemon(f.daemon)
    return daemons

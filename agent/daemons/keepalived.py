"""keepalived: keepalived.conf, its checker, and keepalived as the agent's child.

keepalived holds the VIPs (VRRP) and programs IPVS (``virtual_server`` blocks).  Under
``--daemons supervise`` it runs as ``--dont-fork --log-console``; a reload is a SIGHUP,
confirmed when keepalived logs ``Reload complete``: the parent logs it once, when every
child (VRRP, checkers) has read the new file (keepalived's core/config_notify.c).
keepalived flaps when reloaded in quick succession, so its reloads are throttled
(``keepalived_reload_interval``).  It announces the VIPs: it starts after
haproxy and stops first.  Its ``before_start`` hook removes VIPs no VRRP process holds;
it runs before each fresh start and the moment the log says the VRRP child died.
keepalived.conf is 0600: it may hold the VRRP password.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from agent import validate
from agent.daemons.process import Clock, ReloadOutcome, Supervised, read_pid
from agent.daemons.spec import ConfigFile, Hook
from agent.settings import Settings

log = logging.getLogger("vip-agent.daemons")

_STARTED = ("Starting VRRP child", "Starting Healthcheck child", "no configuration to run")
_VRRP_CHILD_DIED = re.compile(r"VRRP child process\(\d+\) died")


def ipvs_available(proc_net: Path = Path("/proc/net")) -> bool:
    """Is IPVS in this kernel (and network namespace)? Tries loading the module once."""
    if (proc_net / "ip_vs").exists():
        return True
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["modprobe", "-q", "ip_vs"], capture_output=True, timeout=10, check=False)
    return (proc_net / "ip_vs").exists()


def keepalived_argv(
    path: Path, *, binary: str = "keepalived", netns: str | None = None
) -> list[str]:
    """keepalived's config test; ``netns`` runs it in a network namespace, which is how a
    host that lacks the configured interfaces can still check honestly (keepalived
    rejects a configuration whose interfaces do not exist)."""
    argv = [binary, "--config-test", "--use-file", str(path)]
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


def check_keepalived(
    path: Path,
    *,
    binary: str = "keepalived",
    netns: str | None = None,
    runner: validate.Runner = validate.run,
    timeout: float = 30.0,
) -> validate.CheckResult:
    return validate.check(
        keepalived_argv(path, binary=binary, netns=netns), runner=runner, timeout=timeout
    )


class Keepalived(Supervised):
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
            before_start=before_start,
        )
        self.ipvs = ipvs
        self.binary = binary
        self.vrrp_pidfile = run_dir / "keepalived_vrrp.pid"
        self.checkers_pidfile = run_dir / "keepalived_checkers.pid"
        self.bfd_pidfile = run_dir / "keepalived_bfd.pid"
        """(A user template may add ``bfd_instance`` blocks: keepalived then runs BFD.)"""
        self.confirm_timeout = confirm_timeout
        self.reloads_completed = 0
        """"Reload complete" lines seen so far (one per reload with children, from the
        parent once all of them have read the file)."""
        self.reloads_started = 0
        """"Reloading ..." lines seen so far (one per reload, from the parent)."""
        self.completed_before_start = 0
        """``reloads_completed`` when the last "Reloading ..." was seen: a completion
        counts for that reload only if it comes after."""
        self.up = False
        """The parent has read its configuration and started its children (if any): a
        SIGHUP before that is lost."""

    def argv(self) -> list[str]:
        # Without IPVS in the kernel keepalived's checker child exits FATAL and takes
        # the VRRP child (and every VIP) down with it: run VRRP alone instead.
        only_vrrp = [] if self.ipvs else ["--vrrp"]
        return [
            *(self.binary, "--dont-fork", "--log-console", "--log-detail", "--no-syslog"),
            *only_vrrp,
            *("--use-file", str(self.config), "--pid", str(self.pidfile)),
            *("--vrrp_pid", str(self.vrrp_pidfile), "--checkers_pid", str(self.checkers_pidfile)),
            *("--bfd_pid", str(self.bfd_pidfile)),
        ]

    def start(self) -> None:
        self.up = False
        super().start()

    def on_line(self, line: str) -> None:
        if any(mark in line for mark in _STARTED):
            self.up = True
        if "Reload complete" in line:  # once per reload, when every child has read it
            self.reloads_completed += 1
        elif "Reloading ..." in line:  # the parent reads the file again
            self.reloads_started += 1
            self.completed_before_start = self.reloads_completed
        # The parent respawns a dead VRRP child after 0, 1, 2, 4... s; meanwhile nothing
        # on this node speaks VRRP, the peer takes the VIP, and the addresses the dead
        # child added stay here: a VIP on two nodes.  They go now, not at the respawn.
        if _VRRP_CHILD_DIED.search(line):
            log.warning("keepalived: its VRRP process died; releasing this node's VIPs now")
            try:
                self.before_start()
            except Exception as err:  # netlink errors are not OSError; the log thread must live
                log.error("keepalived: cannot release the VIPs: %s", err)

    def _has_children(self) -> bool:
        """Whether a child process (VRRP, checkers, BFD) runs: the parent then logs "Reload
        complete" once they have all read the file, and nothing more without one."""
        import psutil  # not at the top: `render --dry-run` runs no daemon

        pids = (read_pid(f) for f in (self.vrrp_pidfile, self.checkers_pidfile, self.bfd_pidfile))
        return any(pid is not None and psutil.pid_exists(pid) for pid in pids)

    def reload(self) -> ReloadOutcome:
        started = time.monotonic()
        if not self.child.alive():
            return ReloadOutcome(False, "keepalived is not running", 0.0)
        # The parent logs "Reload complete" once its children have all read the file.
        # With none (a configuration with nothing to run: mode bgp without IPVS, a node
        # with no VIPs yet) it logs nothing more: "Reloading ..." is the confirmation, and
        # children it starts now read the new file.  A completion only counts when it
        # follows the "Reloading ..." of this signal (one of an earlier reload may come
        # between the signal and it).
        with self.child.cond:
            if self.child.popen is not None and not self.child.cond.wait_for(
                lambda: self.up, timeout=self.confirm_timeout
            ):
                return ReloadOutcome(False, "keepalived did not finish starting", 0.0)
            children = self._has_children()
            started_mark = self.reloads_started
            self.child.signal(signal.SIGHUP)
            if self.child.popen is None:
                # adopted: its output went to the agent that started it, so only
                # "still alive after the signal" can be confirmed
                return ReloadOutcome(True, "signalled (adopted, unconfirmed)", 0.0)
            done = self.child.cond.wait_for(
                lambda: (
                    self.reloads_started > started_mark
                    and (not children or self.reloads_completed > self.completed_before_start)
                ),
                timeout=self.confirm_timeout,
            )
        took = time.monotonic() - started
        if not done:
            return ReloadOutcome(False, f"no 'Reload complete' within {took:.1f}s", took)
        return ReloadOutcome(True, "reload complete", took)


_TOKEN = re.compile(r"[{}]|[#!][^\n]*")
"""A brace, or a comment (keepalived's ``#`` and ``!`` run to the end of the line)."""
_FILLER = re.compile(r"(?:[ \t]*(?:[#!][^\n]*)?\n)*[ \t]*(?:[#!][^\n]*)?")
"""Blank and comment lines only."""


def blocks(text: str) -> list[validate.Block] | None:
    """keepalived.conf cut at its top-level ``{ ... }`` sections (comments and blank lines
    before a section belong to it); None for anything else at the top level (``include``,
    a stray word, a brace on a line of its own) or unbalanced braces.

    It walks the braces, not the lines: a 1,000-Service file has 30,000 lines but a
    tenth as many braces (15 ms per cut line by line, on every change)."""
    found: list[validate.Block] = []
    depth, start, kind = 0, 0, ""
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token[0] in "#!":
            continue
        if token == "{":
            if depth == 0:
                line = text.rfind("\n", 0, match.start()) + 1
                head = text[line : match.start()].split()
                if not head or not _FILLER.fullmatch(text, start, line):
                    return None
                kind = head[0]
            depth += 1
            continue
        depth -= 1
        if depth < 0:
            return None
        if depth == 0:
            end = text.find("\n", match.end())
            end = len(text) if end < 0 else end + 1
            if not _FILLER.fullmatch(text, match.end(), end):
                return None  # a statement after the closing brace
            found.append(validate.Block(kind, text[start:end]))
            start = end
    if depth != 0 or not _FILLER.fullmatch(text, start):
        return None
    if start < len(text):
        found.append(validate.Block("", text[start:]))  # trailing comments
    return found


def _config_path(settings: Settings) -> Path:
    return Path(settings.keepalived_config)


def _check(path: Path, settings: Settings) -> validate.CheckResult:
    return check_keepalived(path, binary=settings.keepalived_binary)


def _supervised(settings: Settings, before_start: Hook) -> Keepalived:
    ipvs = ipvs_available()
    if not ipvs:
        logging.getLogger("vip-agent").warning(
            "IPVS is not in this kernel: keepalived runs VRRP only, "
            "virtual_server blocks are rendered and checked but not programmed"
        )
    return Keepalived(
        binary=settings.keepalived_binary,
        config=_config_path(settings),
        run_dir=Path(settings.run_dir),
        before_start=before_start,
        ipvs=ipvs,
    )


def _reload_interval(settings: Settings) -> float:
    return settings.keepalived_reload_interval


KEEPALIVED_CONF = ConfigFile(
    name="keepalived.conf",
    template="keepalived.conf.j2",
    mode=0o600,  # may hold the VRRP password
    daemon="keepalived",
    unit="keepalived.service",
    path=_config_path,
    check=_check,
    supervised=_supervised,
    announces=True,
    reload_interval=_reload_interval,
    split=blocks,
    alone=frozenset({"virtual_server"}),
    # a virtual server refers to no VRRP instance; at 5,000 Services with spread the
    # instances are most of what keepalived -t would read
    unneeded=frozenset({"vrrp_instance", "vrrp_sync_group"}),
)

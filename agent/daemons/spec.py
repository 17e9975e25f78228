"""What a daemon module declares about itself, as data: its file, its checker, how it runs.

Each daemon module (agent.daemons.keepalived, agent.daemons.haproxy) ends with one
:class:`ConfigFile`, and ``agent.daemons.CONFIG_FILES`` lists them.  Everything else
reads that list instead of naming daemons: render renders exactly its files, ``run``
installs them with their modes and checkers and builds their daemons for the
``--daemons`` mode, the reconcile loop reloads the daemon a changed file names (with
that daemon's throttle) and starts and stops daemons in the order the list implies, and
metrics takes its ``daemon`` and ``file`` label values from it.  A third daemon (BIRD,
for BGP) is one more module ending in a ConfigFile, one more template, and one more
entry in the list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.apply import Target
from agent.daemons.process import Daemon
from agent.settings import Settings
from agent.validate import CheckResult, Incremental, Splitter, Validator

Hook = Callable[[], None]


def no_throttle(_settings: Settings) -> float:
    return 0.0


@dataclass(frozen=True)
class ConfigFile:
    """One rendered configuration file and the daemon that reads it."""

    name: str
    """The file's name (``keepalived.conf``): render's output key, the ``file`` label."""
    template: str
    """The template it is rendered from (``keepalived.conf.j2``)."""
    mode: int
    """Its permissions when installed (whatever the umask)."""
    daemon: str
    """The daemon that reads it: reloaded when the file changes, the ``daemon`` label."""
    unit: str
    """The daemon's systemd unit (``--daemons systemd``)."""
    path: Callable[[Settings], Path]
    """Where the settings install it."""
    check: Callable[[Path, Settings], CheckResult]
    """The daemon's own configuration test of a file, with the binary the settings name."""
    supervised: Callable[[Settings, Hook], Daemon]
    """The daemon as the agent's child (``--daemons supervise``), given a hook to run
    before each fresh start."""
    announces: bool = False
    """The daemon puts the VIPs on the network (VRRP, BGP): it starts after the daemons
    that serve them, so a VIP never comes up before its listeners, and stops before
    them, so peers take a VIP over while it is still served here."""
    reload_interval: Callable[[Settings], float] = no_throttle
    """At least this many seconds between two reloads (later changes wait, coalesced)."""
    split: Splitter | None = None
    """The file cut into its top-level sections, for checking only what changed."""
    alone: frozenset[str] = frozenset()
    """Kinds of section the checker may see without their siblings (see
    agent.validate.Incremental)."""
    unneeded: frozenset[str] = frozenset()
    """Kinds of section an ``alone`` one never refers to, left out of the small file."""

    def validator(self, settings: Settings) -> Validator:
        """The check apply runs on this file, bound to these settings: of what changed,
        where the daemon module says how to cut the file."""

        def check(path: Path) -> CheckResult:
            return self.check(path, settings)

        if self.split is None or not self.alone:
            return check
        return Incremental(check, self.split, self.alone, unneeded=self.unneeded)


def outputs(files: Iterable[ConfigFile]) -> Mapping[str, str]:
    """What render is asked for: file name -> template name, in list order."""
    return {f.name: f.template for f in files}


def start_order(files: Iterable[ConfigFile]) -> list[str]:
    """Daemon names, those that serve the VIPs before those that announce them."""
    return list(dict.fromkeys(f.daemon for f in sorted(files, key=lambda f: f.announces)))


def stop_order(files: Iterable[ConfigFile]) -> list[str]:
    """Daemon names, those that announce the VIPs first: keepalived stopping sends
    priority 0, so peers take the VIPs over at once, while haproxy still serves."""
    return list(dict.fromkeys(f.daemon for f in sorted(files, key=lambda f: not f.announces)))


def targets(settings: Settings, files: Iterable[ConfigFile]) -> list[Target]:
    """Where each file is installed, with what mode, checked how."""
    return [
        Target(name=f.name, path=f.path(settings), mode=f.mode, validate=f.validator(settings))
        for f in files
    ]

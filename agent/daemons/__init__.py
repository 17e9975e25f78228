"""The daemons the agent configures and runs: one module each, over a shared process module.

    process.py     supervision every daemon shares: pidfiles, adoption, backoff, signals,
                   the Daemon protocol and ReloadOutcome
    keepalived.py  keepalived.conf, ``keepalived --config-test``, keepalived as a child
    haproxy.py     haproxy.cfg, ``haproxy -c``, haproxy (master-worker) as a child
    bird.py        bird.conf, ``bird -p``, BIRD as a child (mode bgp), ``birdc configure``
    modes.py       ``--daemons``: supervise, systemd (SystemdService) or none (NoDaemon)
    spec.py        ConfigFile: what a daemon module declares about its file, as data

:data:`CONFIG_FILES` is the one list of rendered files and the daemons that read them;
render, apply, the reconcile loop, ``run`` and metrics all take it from here.
"""

import dataclasses

from agent.daemons.bird import BIRD_CONF
from agent.daemons.haproxy import HAPROXY_CFG
from agent.daemons.keepalived import KEEPALIVED_CONF
from agent.daemons.process import Daemon, ReloadOutcome
from agent.daemons.spec import ConfigFile
from agent.settings import Mode, Settings

CONFIG_FILES: tuple[ConfigFile, ...] = (KEEPALIVED_CONF, HAPROXY_CFG)
"""Every file the agent renders and installs, with its daemon (VRRP mode)."""

BGP_CONFIG_FILES: tuple[ConfigFile, ...] = (
    # keepalived only programs IPVS here: BIRD announces, so keepalived stops after it
    dataclasses.replace(KEEPALIVED_CONF, announces=False),
    HAPROXY_CFG,
    BIRD_CONF,
)
"""BGP mode: BIRD announces the VIPs; keepalived (IPVS) and haproxy serve them."""


def config_files_for(settings: Settings) -> tuple[ConfigFile, ...]:
    """The files (and daemons) of the settings' mode."""
    return BGP_CONFIG_FILES if settings.mode is Mode.BGP else CONFIG_FILES


__all__ = [
    "BGP_CONFIG_FILES",
    "CONFIG_FILES",
    "ConfigFile",
    "Daemon",
    "ReloadOutcome",
    "config_files_for",
]

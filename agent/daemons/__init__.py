"""The daemons the agent configures and runs: one module each, over a shared process module.

    process.py     supervision every daemon shares: pidfiles, adoption, backoff, signals,
                   the Daemon protocol and ReloadOutcome
    keepalived.py  keepalived.conf, ``keepalived --config-test``, keepalived as a child
    haproxy.py     haproxy.cfg, ``haproxy -c``, haproxy (master-worker) as a child
    modes.py       ``--daemons``: supervise, systemd (SystemdService) or none (NoDaemon)
    spec.py        ConfigFile: what a daemon module declares about its file, as data

:data:`CONFIG_FILES` is the one list of rendered files and the daemons that read them;
render, apply, the reconcile loop, ``run`` and metrics all take it from here.
"""

from agent.daemons.haproxy import HAPROXY_CFG
from agent.daemons.keepalived import KEEPALIVED_CONF
from agent.daemons.process import Daemon, ReloadOutcome
from agent.daemons.spec import ConfigFile

CONFIG_FILES: tuple[ConfigFile, ...] = (KEEPALIVED_CONF, HAPROXY_CFG)
"""Every file the agent renders and installs, with its daemon (VRRP mode)."""

__all__ = ["CONFIG_FILES", "ConfigFile", "Daemon", "ReloadOutcome"]

"""The daemons the agent configures and runs: one module each, over a shared process module.

process.py     supervision every daemon shares: pidfiles, adoption, backoff, signals,
               the Daemon protocol and ReloadOutcome
keepalived.py  ``keepalived --config-test``, keepalived as a child
haproxy.py     ``haproxy -c``, haproxy (master-worker) as a child
modes.py       ``--daemons``: supervise, systemd (SystemdService) or none (NoDaemon)
"""

from agent.daemons.process import Daemon, ReloadOutcome

__all__ = ["Daemon", "ReloadOutcome"]

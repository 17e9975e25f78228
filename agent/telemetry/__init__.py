"""What ``vip-agent run`` tells people and machines: Prometheus metrics and the HTTP
endpoint (``metrics``), the status file and ``vip-agent status`` (``status``), VRRP state
from keepalived's notify FIFO (``vrrp_state``), and the one object that wires them to the
agent (``wiring.Telemetry``)."""

from agent.telemetry.wiring import Telemetry

__all__ = ["Telemetry"]

"""Reading Prometheus samples in tests, the way client_python's own tests do."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from agent.writeback import EventRecorder, IngressWriter


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value; 0 while the series does not exist yet (a counter never hit)."""
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


def results(part: IngressWriter | EventRecorder, result: str) -> float:
    """How often a write-back part ended with ``result``, from its Prometheus counter."""
    name = (
        "vip_agent_events_total"
        if isinstance(part, EventRecorder)
        else "vip_agent_ingress_writes_total"
    )
    return sample(part.registry, name, result=result)

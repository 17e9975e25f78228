"""Writing back to the cluster: Service ingress, Events, allocated addresses."""

from agent.writeback.allocation import AddressWriter
from agent.writeback.events import EventRecorder, TokenBucket, event_name, event_reason
from agent.writeback.ingress import (
    IngressChange,
    IngressWriter,
    current_ingress,
    plan_ingress,
    rendezvous_winner,
)
from agent.writeback.worker import WriteBack

__all__ = [
    "AddressWriter",
    "EventRecorder",
    "IngressChange",
    "IngressWriter",
    "TokenBucket",
    "WriteBack",
    "current_ingress",
    "event_name",
    "event_reason",
    "plan_ingress",
    "rendezvous_winner",
]

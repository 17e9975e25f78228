"""Writing allocated addresses onto Services (the IPAM Lease holder only).

translate plans the allocations (``agent.core.translate.allocation``); the holder of the
Lease writes each one the way kube-vip-cloud-provider does, as the
``kube-vip.io/loadbalancerIPs`` annotation and ``spec.loadBalancerIP`` (the first
address), so every agent then treats the Service like one that asked for the address.

The write is a merge patch carrying the resourceVersion translate saw: when the Service
changed meanwhile (someone else set an address, or a second agent that briefly thought
it held the Lease wrote first) the API server refuses it with 409 and the next pass plans
again from the new state.  A write already sent for the same version is not repeated
while the watch catches up.

Writes in flight: until the watch shows an address on its Service, the plan of the next
pass does not know it is taken, and Services created within the same second are ordered
by uid, so a newcomer can sort before Services already written and be planned one of
their addresses.  An allocation that would give an address still in flight for another
Service waits for the next pass (found by bench/allocation_bench.py: bursts of 100
Services got duplicate addresses before this).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from agent.core.model import Allocation
from agent.core.snapshot import Key
from agent.core.translate import ANNOTATION_LB_IPS
from agent.sources.kube import ApiError, KubeApi, Unreachable

log = logging.getLogger("vip-agent.allocation")


class AddressWriter:
    """Applies ``DesiredState.allocations`` through the API."""

    def __init__(
        self,
        *,
        api: KubeApi,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.clock = clock
        self.registry = registry if registry is not None else CollectorRegistry()
        self.results = Counter(
            "vip_agent_allocations_total",
            "Addresses written onto LoadBalancer Services, by result: ok, conflict (the "
            "Service changed first; planned again next pass) or failed.",
            ["result"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "vip_agent_allocation_write_seconds",
            "Time one allocation write took (the API server's answer included).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.last_error: str | None = None
        self._sent: dict[Key, tuple[str | None, tuple[str, ...]]] = {}

    def apply(self, allocations: Sequence[Allocation]) -> list[Allocation]:
        """Write what is planned and not yet sent; the allocations written."""
        planned = {a.service for a in allocations}
        for key in [k for k in self._sent if k not in planned]:
            del self._sent[key]  # written and seen (or gone): nothing left to remember
        done: list[Allocation] = []
        in_flight = {a: key for key, (_, sent) in self._sent.items() for a in sent}
        try:
            for allocation in allocations:
                texts = tuple(str(a) for a in allocation.addresses)
                if self._sent.get(allocation.service) == (allocation.resource_version, texts):
                    continue
                if any(in_flight.get(t, allocation.service) != allocation.service for t in texts):
                    continue  # another Service's, not seen by the watch yet: next pass
                if self._write(allocation, texts):
                    done.append(allocation)
                    in_flight.update(dict.fromkeys(texts, allocation.service))
        except Unreachable as err:
            self.results.labels(result="failed").inc()
            self.last_error = str(err)
            log.warning("allocation: API server unreachable (%s); trying again later", err)
        return done

    def _write(self, allocation: Allocation, texts: tuple[str, ...]) -> bool:
        namespace, name = allocation.service
        metadata: dict[str, Any] = {"annotations": {ANNOTATION_LB_IPS: ",".join(texts)}}
        if allocation.resource_version:
            metadata["resourceVersion"] = allocation.resource_version  # a precondition
        body = {"metadata": metadata, "spec": {"loadBalancerIP": texts[0]}}
        path = f"/api/v1/namespaces/{namespace}/services/{name}"
        started = self.clock()
        try:
            self.api.request("PATCH", path, body=body, content_type="application/merge-patch+json")
        except ApiError as err:
            if err.status in (404, 409):
                self.results.labels(result="conflict").inc()
                return False  # changed or gone since translate saw it: plan again
            self.results.labels(result="failed").inc()
            self.last_error = str(err)
            hint = ' (RBAC must allow verb "patch" on "services")' if err.status == 403 else ""
            log.error("allocation for Service %s/%s: %s%s", namespace, name, err, hint)
            return False
        self.seconds.observe(self.clock() - started)
        self.results.labels(result="ok").inc()
        self._sent[allocation.service] = (allocation.resource_version, texts)
        log.info("Service %s/%s: allocated %s", namespace, name, ", ".join(texts))
        return True

"""Allocation: addresses for LoadBalancer Services that ask for none.

Every node computes the same plan from the same cluster; only the holder of the IPAM
Lease writes it (``agent.writeback``), the way kube-vip-cloud-provider does: the
``kube-vip.io/loadbalancerIPs`` annotation (and ``spec.loadBalancerIP`` where the API
server still has it), after which the Service asks for that address like any other.

* A Service gets the lowest free address of the pools serving its namespace, one per
  family its ``spec.ipFamilies`` / ``spec.ipFamilyPolicy`` ask for: SingleStack the first
  family; PreferDualStack every listed family a pool serves (at least one);
  RequireDualStack both or nothing.  Without ``ipFamilies`` (older API servers,
  manifests) the first family the pools offer.
* Used addresses are recomputed from the cluster on every pass: whatever the
  vip-configmap holds, the control-plane VIP, every address any Service asks for
  (admitted or not), and every forbidden address.  Nothing is remembered, so a deleted
  Service's address is free at once and an agent restart loses nothing.
* Oldest Services first, so the plan is the same on every node and stable from pass to
  pass; a Service the pools cannot serve stays pending with a rejection saying why, and
  gets an address on the first pass after one is freed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agent.core.addresses import Forbidden
from agent.core.model import Allocation, IPAddress, Reason
from agent.core.pools import AddressRange, Pools
from agent.core.snapshot import Key, Snapshot
from agent.core.translate.common import Rejections, as_list, as_mapping, meta_of
from agent.core.translate.requests import ANNOTATION_LB_IPS

FAMILIES = {"IPv4": 4, "IPv6": 6}
_KEY = f"annotations[{ANNOTATION_LB_IPS}]"
"""Where an allocation is written: what a pending Service's rejection names."""


def allocate(
    unaddressed: Sequence[Key],
    *,
    snapshot: Snapshot,
    pools: Pools,
    forbidden: Forbidden,
    taken: set[IPAddress],
    rej: Rejections,
) -> tuple[Allocation, ...]:
    """An address (or two) for each Service in ``unaddressed`` (oldest first)."""
    out: list[Allocation] = []
    for key in unaddressed:
        service = snapshot.services[key]
        pending = rej.on("Service", "/".join(key))
        ranges = pools.serving(key[0])
        if not ranges:
            why = f"no pool serves namespace {key[0]} (ConfigMap {pools.ref} has no usable "
            why += f"cidr-{key[0]}, range-{key[0]} or global entry); pending"
            pending.add(Reason.POOL_EXHAUSTED, key=_KEY, reason=why)
            continue
        wanted, required = _families(as_mapping(service.get("spec")), ranges)
        found: list[IPAddress] = []
        missing: list[int] = []
        for family in wanted:
            address = _lowest_free(ranges, family, taken=taken, forbidden=forbidden)
            if address is None:
                missing.append(family)
            else:
                found.append(address)
        if missing and (required or not found):
            families = " and ".join(f"IPv{f}" for f in missing)
            why = f"no free {families} address in the pools of namespace {key[0]} "
            why += f"(ConfigMap {pools.ref}: {pools.describe(key[0])}); pending until one is freed"
            pending.add(Reason.POOL_EXHAUSTED, key=_KEY, reason=why)
            continue
        taken.update(found)
        version = meta_of(service).get("resourceVersion")
        out.append(
            Allocation(
                service=key,
                addresses=tuple(found),
                resource_version=version if isinstance(version, str) else None,
            )
        )
    return tuple(out)


def _families(spec: Mapping[str, Any], ranges: Sequence[AddressRange]) -> tuple[list[int], bool]:
    """The families to allocate, and whether all of them are required."""
    listed = [FAMILIES[f] for f in as_list(spec.get("ipFamilies")) if f in FAMILIES]
    offered = sorted({r.version for r in ranges})
    if not listed:
        return offered[:1], False
    policy = spec.get("ipFamilyPolicy")
    if policy == "RequireDualStack":
        return listed, True
    if policy == "PreferDualStack":
        available = [f for f in listed if f in offered]
        return (available or listed[:1]), False
    return listed[:1], False


def _lowest_free(
    ranges: Sequence[AddressRange], family: int, *, taken: set[IPAddress], forbidden: Forbidden
) -> IPAddress | None:
    best: IPAddress | None = None
    for pool_range in ranges:
        if pool_range.version != family:
            continue
        # forbidden addresses (a node's, the gateway) are skipped like used ones; each
        # turn of the loop adds one, so it ends within the range
        skipped: set[IPAddress] = set()
        while (candidate := pool_range.lowest_free(taken | skipped)) is not None:
            if forbidden.reason(candidate) is None:
                break
            skipped.add(candidate)
        if candidate is not None and (best is None or int(candidate) < int(best)):
            best = candidate
    return best

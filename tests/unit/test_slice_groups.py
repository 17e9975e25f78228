"""EndpointSlices grouped one change at a time give what grouping them all again gives.

A live source keeps its slices grouped by Service between snapshots (SliceGroups) and
regroups only the Service a change touched; over random sequences of slices added,
changed (their Service label too), deleted and listed again, each snapshot's groups must
equal Snapshot.build over the store as it is, and an untouched group must be the same
tuple as before (translate finds unchanged Services by identity).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.snapshot import SERVICE_NAME_LABEL, SliceGroups, Snapshot
from agent.settings import Settings
from agent.sources.kube import ENDPOINT_SLICES, NODES, SERVICES, KubeSource
from agent.sources.kube.resources import configmap_resource
from agent.sources.kube.watching import Deleted, Listed, Upserted


def a_slice(name: str, service: str | None, version: int) -> dict[str, Any]:
    labels = {SERVICE_NAME_LABEL: service} if service is not None else {}
    return {
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [f"203.0.113.{version % 250 + 1}"]}],
    }


OPS = st.lists(
    st.tuples(
        st.sampled_from(["put", "put", "put", "delete", "list"]),
        st.integers(0, 7),  # which slice
        st.sampled_from(["a", "b", "c", None]),  # its Service
    ),
    max_size=40,
)


def rebuilt(store: dict[Any, dict[str, Any]]) -> dict[Any, tuple[Any, ...]]:
    return dict(
        Snapshot.build(
            services={},
            slices=store.values(),
            endpoints={},
            configmaps={},
            nodes={},
            nodes_known=True,
        ).endpoint_slices
    )


@settings(max_examples=200, deadline=None)
@given(ops=OPS)
def test_groups_kept_up_to_date_equal_groups_made_afresh(
    ops: list[tuple[str, int, str | None]],
) -> None:
    groups, store = SliceGroups(), {}
    before: dict[Any, tuple[Any, ...]] = {}
    for version, (op, which, service) in enumerate(ops):
        key = ("default", f"slice-{which}")
        old = store.get(key)
        # the Services this change may regroup: the slice's old one and its new one
        touched: set[str | None] | None = {
            service,
            old and old["metadata"]["labels"].get(SERVICE_NAME_LABEL),
        }
        if op == "put":
            store[key] = a_slice(key[1], service, version)
            groups.put(key, store[key])
        elif op == "delete":
            store.pop(key, None)
            groups.remove(key)
        else:
            touched = None  # everything listed again
            groups = SliceGroups()
            for k, obj in store.items():
                groups.put(k, obj)
        now = dict(groups.grouped())
        assert now == rebuilt(store)
        if touched is not None:
            for service_key, group in now.items():
                if service_key[1] not in touched and service_key in before:
                    assert group is before[service_key]
        before = now


class NoApi:
    """KubeSource's watches are never started here: events are applied directly."""


def test_the_kube_source_snapshot_groups_slices_as_they_change() -> None:
    source = KubeSource(api=NoApi(), configmap=Settings().configmap_ref)  # type: ignore[arg-type]
    source.start = lambda notify: None  # type: ignore[method-assign]
    items = {("default", f"s{i}"): a_slice(f"s{i}", f"svc-{i % 3}", i) for i in range(9)}
    source._apply(source.endpoints, Listed(resource=ENDPOINT_SLICES, items=dict(items)))
    for kind, resource in (
        (source.services, SERVICES),
        (source.configmaps, configmap_resource("kube-system", "vip-configmap")),
        (source.nodes, NODES),
    ):
        source._apply(kind, Listed(resource=resource, items={}))
    first = source.snapshot().endpoint_slices
    assert first == rebuilt(items)
    moved = a_slice("s4", "svc-0", 99)  # from svc-1 to svc-0
    source._apply(source.endpoints, Upserted(key=("default", "s4"), obj=moved))
    source._apply(source.endpoints, Deleted(key=("default", "s8")))
    items[("default", "s4")] = moved
    del items[("default", "s8")]
    second = source.snapshot().endpoint_slices
    assert second == rebuilt(items)
    assert ("default", "svc-2") in second and second[("default", "svc-2")] != first[
        ("default", "svc-2")
    ]

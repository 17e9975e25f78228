"""The agent's ``Source`` for a live cluster: one store per kind, fed by that kind's watch.

One thread per kind runs the kind's ``Watch`` (``watching``) and applies its events to the
kind's store: ``Listed`` replaces the store in one step, ``Upserted`` / ``Deleted`` edit
it.  Only this module holds stores; the watches only yield.  A change that is nothing but
a new resourceVersion (a Node heartbeat, a managedFields-only update) is stored, so
write-back patches against a current resourceVersion, but does not bump ``generation`` or
notify the agent: no reconcile for it.

A ``Failed`` kind keeps its last good store; its message goes into ``error`` (every failing
kind's, joined) until it has ``Recovered``.  Every ``Restarted`` is reported through
``on_restart`` (a metric).

Until every kind has been listed once, ``snapshot()`` is empty (static mode: settings
alone, so the control-plane VIP can come up while the API server behind it cannot be
reached); ``start()`` waits for that first sync up to ``sync_timeout`` seconds.
"""

from __future__ import annotations

import logging
import random as random_mod
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, assert_never, cast

from agent.core.snapshot import Key, Obj, SliceGroups, Snapshot
from agent.settings import Settings
from agent.sources.kube.resources import (
    ENDPOINT_SLICES,
    NODES,
    SERVICES,
    Resource,
    StoreKey,
    configmap_resource,
    endpoints_resource,
    same_but_for_version,
)
from agent.sources.kube.transport import KubeApi, api_client_for
from agent.sources.kube.watching import (
    LIST_PAGE_SIZE,
    WATCH_TIMEOUT_SECONDS,
    Backoff,
    Deleted,
    Event,
    Failed,
    Listed,
    Recovered,
    Restarted,
    Upserted,
    Watch,
    follow,
)

log = logging.getLogger("vip-agent.kube")


class Kind:
    """What the source holds of one kind: its store, and the watch that feeds it.

    ``resource`` is what the store holds (Endpoints or EndpointSlices, by discovery);
    ``lists`` counts the stores that a list replaced; ``error`` is the kind's current
    failure.  Written by the kind's thread under the source's lock.
    """

    def __init__(self, *, name: str, watch: Watch) -> None:
        self.name = name
        self.watch = watch
        self.resource: Resource | None = None
        self.store: dict[StoreKey, dict[str, Any]] = {}
        self.synced = False
        self.lists = 0
        self.error: str | None = None


class KubeSource:
    """The agent's ``Source`` for a live cluster (see the module docstring).

    Collaborators are injected: ``api`` (a KubeApi around any ApiClient), ``sleep`` (for
    backoff; default: an interruptible wait that ``stop()`` ends), ``random`` (jitter) and
    ``clock``.
    """

    def __init__(
        self,
        *,
        api: KubeApi,
        configmap: tuple[str, str],
        pool_configmap: tuple[str, str] | None = None,
        watch_timeout: float = WATCH_TIMEOUT_SECONDS,
        page_size: int = LIST_PAGE_SIZE,
        sync_timeout: float = 30.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        sleep: Callable[[float], object] | None = None,
        random: Callable[[], float] = random_mod.random,
        clock: Callable[[], float] = time.monotonic,
        on_restart: Callable[[str], None] = lambda resource: None,
    ) -> None:
        self.api = api
        self.on_restart = on_restart
        """Told the resource name whenever a watch starts over (410 relist or an error)."""
        self.error: str | None = None
        self.sync_timeout = sync_timeout
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._notify: Callable[[], None] = lambda: None
        self._snapshot: Snapshot | None = None
        self._generation = 0
        self._slices = SliceGroups()
        """The EndpointSlices by Service, kept as they change (when slices are watched)."""

        def kind(name: str, resolve: Callable[[], Resource]) -> Kind:
            watch = Watch(
                name=name,
                api=api,
                resolve=resolve,
                stopping=self.stopping,
                backoff=Backoff(base=backoff_base, cap=backoff_cap, random=random),
                sleep=sleep or self.stopping.wait,
                random=random,
                clock=clock,
                watch_timeout=watch_timeout,
                page_size=page_size,
            )
            return Kind(name=name, watch=watch)

        namespace, name = configmap
        cm = configmap_resource(namespace, name)
        self.services = kind("services", lambda: SERVICES)
        self.endpoints = kind("endpoints", self._endpoints_resource)
        self.configmaps = kind("configmap", lambda: cm)
        self.nodes = kind("nodes", lambda: NODES)
        self.kinds: tuple[Kind, ...] = (self.services, self.endpoints, self.configmaps, self.nodes)
        self.pools: Kind | None = None
        if pool_configmap is not None and pool_configmap != configmap:
            # the pool ConfigMap by name too: RBAC need not open any other ConfigMap
            pools = configmap_resource(*pool_configmap)
            self.pools = kind("pool-configmap", lambda: pools)
            self.kinds += (self.pools,)
        self._threads = [
            threading.Thread(
                target=self._follow, args=(kind,), name=f"kube-watch-{kind.name}", daemon=True
            )
            for kind in self.kinds
        ]

    @classmethod
    def from_settings(cls, settings: Settings, api_client: Any | None = None) -> KubeSource:
        api = KubeApi(api_client if api_client is not None else api_client_for(settings))
        return cls(
            api=api, configmap=settings.configmap_ref, pool_configmap=settings.pool_configmap_ref
        )

    def _endpoints_resource(self) -> Resource:
        chosen = endpoints_resource(self.api)
        if chosen != self.endpoints.resource:
            log.info(
                "endpoints: watching %s (%s)",
                chosen.describe(),
                "discovery.k8s.io/v1 is served"
                if chosen is ENDPOINT_SLICES
                else "the server does not serve discovery.k8s.io/v1",
            )
        return chosen

    # --- Source protocol ---

    def start(self, notify: Callable[[], None]) -> None:
        """Start the watches; return once all kinds are listed, or after sync_timeout."""
        self._notify = notify
        for thread in self._threads:
            thread.start()
        if not self._synced.wait(self.sync_timeout):
            log.warning(
                "not every kind listed within %gs (%s); rendering from settings alone until "
                "they are",
                self.sync_timeout,
                self.error or "still listing",
            )

    def snapshot(self) -> Snapshot:
        """The current objects; the same Snapshot object until something changed."""
        with self._lock:
            if self._snapshot is not None:
                return self._snapshot
            if not self._synced.is_set():
                return Snapshot()
            slices_kind = self.endpoints.resource is ENDPOINT_SLICES
            ep_store = self.endpoints.store
            # stores are keyed (namespace, name), Nodes by name: what Snapshot expects
            self._snapshot = Snapshot.build(
                services=cast(Mapping[Key, Obj], self.services.store),
                grouped_slices=self._slices.grouped() if slices_kind else {},
                endpoints={} if slices_kind else cast(Mapping[Key, Obj], ep_store),
                configmaps=cast(
                    Mapping[Key, Obj],
                    {**self.configmaps.store, **(self.pools.store if self.pools else {})},
                ),
                nodes=cast(Mapping[str, Obj], self.nodes.store),
                nodes_known=self.nodes.synced,
            )
            return self._snapshot

    def stop(self) -> None:
        self.stopping.set()
        for kind in self.kinds:
            kind.watch.close_stream()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=5)

    # --- for tests and status ---

    @property
    def generation(self) -> int:
        """Bumped on every change the agent should see (for tests and metrics)."""
        return self._generation

    def store_of(self, kind: str) -> dict[StoreKey, dict[str, Any]]:
        """A copy of one kind's store: ``Service``, ``Endpoints``/``EndpointSlice``, ..."""
        with self._lock:
            for held in self.kinds:
                if held.resource is not None and held.resource.kind == kind:
                    return dict(held.store)
        return {}

    # --- one thread per kind ---

    def _follow(self, kind: Kind) -> None:
        follow(kind.watch.events(), lambda event: self._apply(kind, event))

    def _apply(self, kind: Kind, event: Event) -> None:
        match event:
            case Listed(resource=resource, items=items):
                self._replace(kind, resource=resource, items=items)
            case Upserted(key=key, obj=obj):
                self._upsert(kind, key=key, obj=obj)
            case Deleted(key=key):
                self._delete(kind, key)
            case Failed(message=message, level=level):
                self._failed(kind, message=message, level=level)
            case Recovered():
                self._recovered(kind)
            case Restarted():
                self.on_restart(kind.name)
            case _:
                assert_never(event)

    def _replace(
        self, kind: Kind, *, resource: Resource, items: dict[StoreKey, dict[str, Any]]
    ) -> None:
        with self._lock:
            changed = (
                not kind.synced
                or kind.resource != resource
                or kind.store.keys() != items.keys()
                or any(not same_but_for_version(kind.store.get(k), v) for k, v in items.items())
            )
            kind.store = items
            kind.resource = resource
            if kind is self.endpoints:
                self._slices = SliceGroups()
                if resource is ENDPOINT_SLICES:
                    for key, obj in items.items():
                        self._slices.put(key, obj)
            kind.synced = True
            kind.lists += 1
            newly_synced = not self._synced.is_set() and all(k.synced for k in self.kinds)
            if newly_synced:
                self._synced.set()
            self._snapshot = None
            if changed or newly_synced:
                self._generation += 1
        if changed or newly_synced:
            self._notify()

    def _upsert(self, kind: Kind, *, key: StoreKey, obj: dict[str, Any]) -> None:
        with self._lock:
            same = same_but_for_version(kind.store.get(key), obj)
            kind.store[key] = obj
            if kind is self.endpoints and kind.resource is ENDPOINT_SLICES:
                self._slices.put(key, obj)
            self._snapshot = None  # keep resourceVersions current for write-back
            if not same:
                self._generation += 1
        if not same:
            self._notify()

    def _delete(self, kind: Kind, key: StoreKey) -> None:
        with self._lock:
            found = kind.store.pop(key, None) is not None
            if kind is self.endpoints:
                self._slices.remove(key)
            if found:
                self._snapshot = None
                self._generation += 1
        if found:
            self._notify()

    def _failed(self, kind: Kind, *, message: str, level: int) -> None:
        if message != kind.error:
            log.log(level, "%s: %s; keeping the last good objects", kind.name, message)
        else:
            log.debug("%s: still failing: %s", kind.name, message)
        self._set_error(kind, message)

    def _recovered(self, kind: Kind) -> None:
        if kind.error is not None:
            log.info("%s: recovered", kind.name)
            self._set_error(kind, None)

    def _set_error(self, kind: Kind, message: str | None) -> None:
        with self._lock:
            kind.error = message
            errors = [k.error for k in self.kinds if k.error]
            error = "; ".join(errors) if errors else None
            changed = error != self.error
            self.error = error
        if changed:
            self._notify()

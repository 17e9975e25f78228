"""Cluster objects from a live Kubernetes API server: list, then watch, the way kopf does.

One thread per kind keeps one store of that kind's objects:

    Services               /api/v1/services
    EndpointSlices (v1)    /apis/discovery.k8s.io/v1/endpointslices   when the server serves it,
    or Endpoints           /api/v1/endpoints                          else (chosen by discovery)
    the vip-configmap      /api/v1/namespaces/NS/configmaps?fieldSelector=metadata.name=NAME
    Nodes                  /api/v1/nodes

Each thread lists (in pages, so a 5,000-object list never sits in memory twice), then
watches from the list's resourceVersion with ``allowWatchBookmarks`` and a randomized
``timeoutSeconds``, and applies ADDED / MODIFIED / DELETED; a BOOKMARK only moves the
resourceVersion on.  When the server ends a watch normally, the thread watches again from
the last resourceVersion it saw.  When that resourceVersion is gone (410: etcd compacted
past it, or the watch cache no longer holds it; it comes as an ERROR event or as an HTTP
410) the thread lists again and *replaces* its store in one step, so an object deleted
while no watch was open disappears and nothing is counted twice.  Any other failure
(unreachable, 5xx, 401/403) sets ``error``, keeps the last good store, and retries with
capped exponential backoff with jitter (many agents reconnecting after an apiserver
restart must not arrive in one wave).  401/403 is logged at error level naming the verb
and resource that RBAC must allow.

Objects are stored as the camelCase dicts the API serves, cut down to what
``agent.core.translate`` and ``agent.writeback`` read (metadata name/namespace/uid/labels/
annotations/resourceVersion, spec, status.addresses, status.loadBalancer, subsets,
endpoints, ports, addressType, data): managedFields, the last-applied-configuration
annotation, Node images and conditions are dropped, so memory follows the number of
objects, not their size.

Requests are raw JSON through the kubernetes client's ``ApiClient`` (its authentication,
TLS and token refresh), not its typed models: client 37 has no models for
discovery.k8s.io/v1beta1 (all that 1.20 serves), the typed watch re-serializes every event,
and the plain dicts are what ``Snapshot`` takes.

Until every kind has been listed once, ``snapshot()`` is empty (static mode: settings
alone, so the control-plane VIP can come up while the API server behind it cannot be
reached); ``start()`` waits for that first sync up to ``sync_timeout`` seconds.
"""

from __future__ import annotations

import logging
import random as random_mod
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

from agent.core.snapshot import Key, Obj, Snapshot
from agent.settings import Settings
from agent.sources.kube.resources import (
    ENDPOINT_SLICES,
    ENDPOINTS,
    NODES,
    SERVICES,
    Resource,
    StoreKey,
    configmap_resource,
    endpoints_resource,
    resource_version,
    same_but_for_version,
    slim,
    store_key,
)
from agent.sources.kube.transport import (
    ApiError,
    KubeApi,
    Query,
    Unreachable,
    WatchStream,
    api_client_for,
)

__all__ = [
    "ENDPOINTS",
    "ENDPOINT_SLICES",
    "NODES",
    "SERVICES",
    "ApiError",
    "Backoff",
    "KubeApi",
    "KubeSource",
    "Query",
    "Resource",
    "StoreKey",
    "Unreachable",
    "WatchStream",
    "api_client_for",
    "configmap_resource",
    "endpoints_resource",
    "slim",
    "store_key",
]

log = logging.getLogger("vip-agent.kube")

WATCH_TIMEOUT_SECONDS = 300
"""Base of ``timeoutSeconds``; each watch asks for 1x-2x this (client-go does the same)
so the watches of many agents do not all end, and reconnect, at the same moment."""
LIST_PAGE_SIZE = 500
_USER = re.compile(r'User "([^"]*)"')


# --- backoff ----------------------------------------------------------------------


class Backoff:
    """Capped exponential delays with equal jitter: d/2 + random * d/2, d = base * 2^n.

    Never zero (a refused connection is retried after at least ``base / 2``), never above
    ``cap``, and spread so that the agents of every node do not retry in lockstep.
    """

    def __init__(
        self, *, base: float = 0.5, cap: float = 30.0, random: Callable[[], float]
    ) -> None:
        self.base, self.cap, self.random = base, cap, random
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * 2.0**self.attempt)
        self.attempt += 1
        return delay / 2 + self.random() * delay / 2

    def reset(self) -> None:
        self.attempt = 0


class _Gone(Exception):
    """The resourceVersion we would watch from is no longer available: list again."""


# --- one kind -------------------------------------------------------------------------


class _Watcher:
    """List + watch of one kind; its store is replaced on relist, edited on events."""

    def __init__(
        self,
        *,
        name: str,
        resolve: Callable[[], Resource],
        source: KubeSource,
    ) -> None:
        self.name = name
        self.resolve = resolve
        self.source = source
        self.resource: Resource | None = None
        self.store: dict[StoreKey, dict[str, Any]] = {}
        self.synced = False
        self.error: str | None = None
        self.resource_version: str | None = None
        self.lists = 0
        self.backoff = Backoff(
            base=source.backoff_base, cap=source.backoff_cap, random=source.random
        )
        self._stream: WatchStream | None = None
        self.thread = threading.Thread(target=self.run, name=f"kube-watch-{name}", daemon=True)

    # -- the loop --

    def run(self) -> None:
        source = self.source
        while not source.stopping.is_set():
            verb, resource = "discover", self.resource
            try:
                if self.resource_version is None:
                    resource = self.resolve()
                    verb = "list"
                    self._list(resource)
                assert self.resource is not None
                verb, resource = "watch", self.resource
                self._watch(self.resource)
            except _Gone as gone:
                log.info("%s: %s; listing again", self.name, gone)
                self.resource_version = None
                source.on_restart(self.name)
            except ApiError as err:
                self._failed(verb, resource, err)
            except Unreachable as err:
                self._failed(verb, resource, err)
            except Exception as err:  # a bug here must not end the watch for good
                log.exception("%s: unexpected failure", self.name)
                self._failed(verb, resource, err)

    def _failed(self, verb: str, resource: Resource | None, err: Exception) -> None:
        if self.source.stopping.is_set():
            return
        what = resource.describe() if resource else self.name
        scope = resource.scope() if resource else ""
        if isinstance(err, ApiError) and err.status in (401, 403):
            found = _USER.search(err.message)
            who = f'user "{found.group(1)}"' if found else "this identity"
            if err.status == 403:
                message = (
                    f"forbidden: cannot {verb} {what} {scope} ({who}); RBAC must allow verb "
                    f'"{verb}" on "{resource.plural if resource else self.name}" in API group '
                    f'"{resource.group if resource else ""}" (see container/rbac.yaml)'
                )
            else:
                message = f"unauthorized: the API server rejected the credentials ({who})"
            self._set_error(message, logging.ERROR)
        elif isinstance(err, ApiError):
            self._set_error(f"{verb} {what} {scope}: {err}", logging.WARNING)
        elif isinstance(err, Unreachable):
            self._set_error(f"API server unreachable ({verb} {what}): {err}", logging.WARNING)
        else:
            self._set_error(f"{verb} {what}: {type(err).__name__}: {err}", logging.ERROR)
        self.source.on_restart(self.name)
        self.source.sleep(self.backoff.next())

    def _set_error(self, message: str, level: int) -> None:
        if message != self.error:
            log.log(level, "%s: %s; keeping the last good objects", self.name, message)
        else:
            log.debug("%s: still failing: %s", self.name, message)
        self.error = message
        self.source.errors_changed()

    def _recovered(self) -> None:
        self.backoff.reset()
        if self.error is not None:
            log.info("%s: recovered", self.name)
            self.error = None
            self.source.errors_changed()

    # -- list --

    def _list(self, resource: Resource) -> None:
        items: dict[StoreKey, dict[str, Any]] = {}
        version: str | None = None
        token: str | None = None
        while True:
            query = [("limit", str(self.source.page_size)), *resource.query()]
            if token:
                query.append(("continue", token))
            try:
                page = self.source.api.request("GET", resource.path, query=query)
            except ApiError as err:
                if err.status == 410:  # the continue token expired: start the list over
                    raise _Gone(f"list continuation expired ({err.message})") from err
                raise
            page = page if isinstance(page, Mapping) else {}
            for item in page.get("items") or []:
                if isinstance(item, Mapping) and (key := store_key(resource.kind, item)):
                    items[key] = slim(resource.kind, item)
            meta = page.get("metadata") or {}
            # every page reports the resourceVersion of the first: one consistent list
            version = version or meta.get("resourceVersion")
            token = meta.get("continue") or None
            if not token:
                break
        if not version:
            raise ApiError(500, "InternalError", f"list of {resource.path} has no resourceVersion")
        self.lists += 1
        self.source.replace(self, resource, items)
        self.resource_version = version
        self._recovered()

    # -- watch --

    def _watch(self, resource: Resource) -> None:
        assert self.resource_version is not None
        source = self.source
        timeout = int(source.watch_timeout * (1 + source.random()))
        query = [
            ("watch", "1"),
            ("resourceVersion", self.resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout)),
            *resource.query(),
        ]
        started = source.clock()
        try:
            stream = source.api.watch(resource.path, query, read_timeout=timeout + 30)
        except ApiError as err:
            # with the watch cache on, a too-old resourceVersion is refused up front
            if err.status == 410:
                raise _Gone(f"watch refused: {err.message}") from err
            raise
        self._stream = stream
        events = 0
        try:
            if source.stopping.is_set():
                return
            self._recovered()
            for event in stream:
                events += 1
                self._handle(resource, event)
                if source.stopping.is_set():
                    return
        finally:
            self._stream = None
            stream.close()
        if events == 0 and source.clock() - started < 1.0 and not source.stopping.is_set():
            # a server (or proxy) that ends every watch at once: do not spin
            source.sleep(self.backoff.next())

    def _handle(self, resource: Resource, event: Mapping[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object")
        if not isinstance(obj, Mapping):
            raise Unreachable(f"watch event without an object: {kind!r}")
        if kind == "ERROR":
            code = int(obj.get("code") or 0)
            message = str(obj.get("message") or "")
            if code == 410:
                # etcd compacted past our resourceVersion ("too old resource version")
                raise _Gone(f"watch expired: {message}")
            raise ApiError(code, str(obj.get("reason") or "Error"), message)
        version = resource_version(obj)
        if kind == "BOOKMARK":
            # only metadata.resourceVersion is meaningful in a bookmark's object
            if version:
                self.resource_version = version
            return
        key = store_key(resource.kind, obj)
        if key is not None:
            if kind in ("ADDED", "MODIFIED"):
                self.source.upsert(self, key, slim(resource.kind, obj))
            elif kind == "DELETED":
                self.source.delete(self, key)
        if version:
            self.resource_version = version

    @property
    def watching(self) -> bool:
        """A watch is open now (tests wait for this before breaking it)."""
        return self._stream is not None

    def close_stream(self) -> None:
        stream = self._stream
        if stream is not None:
            stream.close()


# --- the source ---------------------------------------------------------------------


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
        self.watch_timeout = watch_timeout
        self.page_size = page_size
        self.sync_timeout = sync_timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.stopping = threading.Event()
        self.sleep: Callable[[float], object] = sleep or self.stopping.wait
        self.random = random
        self.clock = clock
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._notify: Callable[[], None] = lambda: None
        self._snapshot: Snapshot | None = None
        self._generation = 0
        namespace, name = configmap
        self.services = _Watcher(name="services", resolve=lambda: SERVICES, source=self)
        self.endpoints = _Watcher(
            name="endpoints", resolve=lambda: self._endpoints_resource(), source=self
        )
        cm = configmap_resource(namespace, name)
        self.configmaps = _Watcher(name="configmap", resolve=lambda: cm, source=self)
        self.nodes = _Watcher(name="nodes", resolve=lambda: NODES, source=self)
        self.watchers = (self.services, self.endpoints, self.configmaps, self.nodes)

    @classmethod
    def from_settings(cls, settings: Settings, api_client: Any | None = None) -> KubeSource:
        api = KubeApi(api_client if api_client is not None else api_client_for(settings))
        return cls(api=api, configmap=settings.configmap_ref)

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
        """Start the watchers; return once all kinds are listed, or after sync_timeout."""
        self._notify = notify
        for watcher in self.watchers:
            watcher.thread.start()
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
                slices=ep_store.values() if slices_kind else (),
                endpoints={} if slices_kind else cast(Mapping[Key, Obj], ep_store),
                configmaps=cast(Mapping[Key, Obj], self.configmaps.store),
                nodes=cast(Mapping[str, Obj], self.nodes.store),
                nodes_known=self.nodes.synced,
            )
            return self._snapshot

    def stop(self) -> None:
        self.stopping.set()
        for watcher in self.watchers:
            watcher.close_stream()
        for watcher in self.watchers:
            if watcher.thread.is_alive():
                watcher.thread.join(timeout=5)

    # --- for tests and status ---

    @property
    def generation(self) -> int:
        """Bumped on every change the agent should see (for tests and metrics)."""
        return self._generation

    def store_of(self, kind: str) -> dict[StoreKey, dict[str, Any]]:
        """A copy of one kind's store: ``Service``, ``Endpoints``/``EndpointSlice``, ..."""
        with self._lock:
            for watcher in self.watchers:
                if watcher.resource is not None and watcher.resource.kind == kind:
                    return dict(watcher.store)
        return {}

    # --- called by the watchers ---

    def replace(
        self, watcher: _Watcher, resource: Resource, items: dict[StoreKey, dict[str, Any]]
    ) -> None:
        with self._lock:
            changed = (
                not watcher.synced
                or watcher.resource != resource
                or watcher.store.keys() != items.keys()
                or any(not same_but_for_version(watcher.store.get(k), v) for k, v in items.items())
            )
            watcher.store = items
            watcher.resource = resource
            watcher.synced = True
            newly_synced = not self._synced.is_set() and all(w.synced for w in self.watchers)
            if newly_synced:
                self._synced.set()
            self._snapshot = None
            if changed or newly_synced:
                self._generation += 1
        if changed or newly_synced:
            self._notify()

    def upsert(self, watcher: _Watcher, key: StoreKey, obj: dict[str, Any]) -> None:
        with self._lock:
            same = same_but_for_version(watcher.store.get(key), obj)
            watcher.store[key] = obj
            self._snapshot = None  # keep resourceVersions current for write-back
            if not same:
                self._generation += 1
        if not same:
            self._notify()

    def delete(self, watcher: _Watcher, key: StoreKey) -> None:
        with self._lock:
            found = watcher.store.pop(key, None) is not None
            if found:
                self._snapshot = None
                self._generation += 1
        if found:
            self._notify()

    def errors_changed(self) -> None:
        with self._lock:
            errors = [w.error for w in self.watchers if w.error]
            error = "; ".join(errors) if errors else None
            changed = error != self.error
            self.error = error
        if changed:
            self._notify()

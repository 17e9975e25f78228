"""List, then watch, one resource, the way kopf does: a loop that only yields events.

``Watch.events()`` lists (in pages, so a 5,000-object list never sits in memory twice),
yields the whole list as one ``Listed``, then watches from the list's resourceVersion
with ``allowWatchBookmarks`` and a randomized ``timeoutSeconds`` and yields each ADDED /
MODIFIED as ``Upserted`` and each DELETED as ``Deleted``; a BOOKMARK only moves the
resourceVersion on.  When the server ends a watch normally, the loop watches again from
the last resourceVersion it saw.  When that resourceVersion is gone (410: etcd compacted
past it, or the watch cache no longer holds it; it comes as an ERROR event or as an HTTP
410) the loop yields ``Restarted`` and lists again, and the next ``Listed`` *replaces*
what the consumer holds, so an object deleted while no watch was open disappears and
nothing is counted twice.  Any other failure (unreachable, 5xx, 401/403) yields
``Failed`` and ``Restarted`` and retries after capped exponential backoff with jitter
(many agents reconnecting after an apiserver restart must not arrive in one wave); the
next success yields ``Recovered``.  401/403 is reported at error level naming the verb and
resource that RBAC must allow.

The loop keeps no objects and knows nothing of who consumes it: everything it needs (the
API, the resource, pacing, a stop flag, sleep, jitter and a clock) comes in as an
argument.  Consumers run it with ``follow``, which also hands a consumer's own failure
back to the loop, so one bad event is retried as a failed watch, never ends it for good.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from agent.sources.kube.resources import (
    Resource,
    StoreKey,
    resource_version,
    slim,
    store_key,
)
from agent.sources.kube.transport import ApiError, KubeApi, Unreachable, WatchStream

log = logging.getLogger("vip-agent.kube")

WATCH_TIMEOUT_SECONDS = 300
"""Base of ``timeoutSeconds``; each watch asks for 1x-2x this (client-go does the same)
so the watches of many agents do not all end, and reconnect, at the same moment."""
LIST_PAGE_SIZE = 500
_USER = re.compile(r'User "([^"]*)"')


# --- what the loop yields ---------------------------------------------------------------


@dataclass(frozen=True)
class Listed:
    """A complete list: what the consumer holds of this kind becomes exactly ``items``."""

    resource: Resource
    items: dict[StoreKey, dict[str, Any]]


@dataclass(frozen=True)
class Upserted:
    """An object was added or modified (already slimmed)."""

    key: StoreKey
    obj: dict[str, Any]


@dataclass(frozen=True)
class Deleted:
    """An object was deleted."""

    key: StoreKey


@dataclass(frozen=True)
class Failed:
    """Listing or watching failed; the loop backs off and tries again.

    The consumer keeps what it has: an API server that cannot be reached says nothing about
    the objects.  ``level`` is how loudly to log it (ERROR for what needs a person: RBAC,
    credentials, a bug).
    """

    message: str
    level: int


@dataclass(frozen=True)
class Recovered:
    """A list or watch succeeded after a ``Failed``."""


@dataclass(frozen=True)
class Restarted:
    """The watch starts over: a 410 relist, or a retry after a failure."""

    reason: str


Event = Listed | Upserted | Deleted | Failed | Recovered | Restarted


# --- pacing -------------------------------------------------------------------------------


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


def failure(*, verb: str, resource: Resource | None, name: str, err: Exception) -> tuple[str, int]:
    """What to report for a failed ``verb`` (discover, list, watch), and at what log level.

    401/403 names what RBAC must allow; they and unexpected errors are errors, the rest
    (unreachable, 5xx, ...) warnings: they mend themselves.
    """
    what = resource.describe() if resource else name
    scope = resource.scope() if resource else ""
    if isinstance(err, ApiError) and err.status in (401, 403):
        found = _USER.search(err.message)
        who = f'user "{found.group(1)}"' if found else "this identity"
        if err.status == 403:
            message = (
                f"forbidden: cannot {verb} {what} {scope} ({who}); RBAC must allow verb "
                f'"{verb}" on "{resource.plural if resource else name}" in API group '
                f'"{resource.group if resource else ""}" (see container/rbac.yaml)'
            )
        else:
            message = f"unauthorized: the API server rejected the credentials ({who})"
        return message, logging.ERROR
    if isinstance(err, ApiError):
        return f"{verb} {what} {scope}: {err}", logging.WARNING
    if isinstance(err, Unreachable):
        return f"API server unreachable ({verb} {what}): {err}", logging.WARNING
    return f"{verb} {what}: {type(err).__name__}: {err}", logging.ERROR


# --- the loop -----------------------------------------------------------------------------


class Watch:
    """List + watch of one kind, as a stream of events (see the module docstring).

    Its state is its position only: the resource it listed, the resourceVersion to watch
    from, the open stream (so that ``close_stream`` from another thread can end it).
    ``resolve`` chooses the resource before every list (discovery may change its answer).
    """

    def __init__(
        self,
        *,
        name: str,
        api: KubeApi,
        resolve: Callable[[], Resource],
        stopping: threading.Event,
        backoff: Backoff,
        sleep: Callable[[float], object],
        random: Callable[[], float],
        clock: Callable[[], float],
        watch_timeout: float = WATCH_TIMEOUT_SECONDS,
        page_size: int = LIST_PAGE_SIZE,
    ) -> None:
        self.name = name
        self.api = api
        self.resolve = resolve
        self.stopping = stopping
        self.backoff = backoff
        self.sleep = sleep
        self.random = random
        self.clock = clock
        self.watch_timeout = watch_timeout
        self.page_size = page_size
        self.resource: Resource | None = None
        self.resource_version: str | None = None
        self._failing = False
        self._stream: WatchStream | None = None

    def events(self) -> Generator[Event, None, None]:
        """List, watch, list again ... until ``stopping`` is set."""
        while not self.stopping.is_set():
            verb, resource = "discover", self.resource
            try:
                if self.resource_version is None:
                    resource = self.resolve()
                    verb = "list"
                    yield from self._list(resource)
                assert self.resource is not None
                verb, resource = "watch", self.resource
                yield from self._watch(self.resource)
            except _Gone as gone:
                log.info("%s: %s; listing again", self.name, gone)
                self.resource_version = None
                yield Restarted(str(gone))
            except (ApiError, Unreachable) as err:
                yield from self._failed(verb, resource=resource, err=err)
            except Exception as err:  # a bug here must not end the watch for good
                log.exception("%s: unexpected failure", self.name)
                yield from self._failed(verb, resource=resource, err=err)

    def _failed(self, verb: str, *, resource: Resource | None, err: Exception) -> Iterator[Event]:
        if self.stopping.is_set():
            return
        message, level = failure(verb=verb, resource=resource, name=self.name, err=err)
        self._failing = True
        yield Failed(message, level)
        yield Restarted(message)
        self.sleep(self.backoff.next())

    def _recovered(self) -> Iterator[Event]:
        self.backoff.reset()
        if self._failing:
            self._failing = False
            yield Recovered()

    # -- list --

    def _list(self, resource: Resource) -> Iterator[Event]:
        items, version = self._list_pages(resource)
        yield Listed(resource, items)
        self.resource = resource
        self.resource_version = version
        yield from self._recovered()

    def _list_pages(self, resource: Resource) -> tuple[dict[StoreKey, dict[str, Any]], str]:
        items: dict[StoreKey, dict[str, Any]] = {}
        version: str | None = None
        token: str | None = None
        while True:
            query = [("limit", str(self.page_size)), *resource.query()]
            if token:
                query.append(("continue", token))
            try:
                page = self.api.request("GET", resource.path, query=query)
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
        return items, version

    # -- watch --

    def _watch(self, resource: Resource) -> Iterator[Event]:
        assert self.resource_version is not None
        timeout = int(self.watch_timeout * (1 + self.random()))
        query = [
            ("watch", "1"),
            ("resourceVersion", self.resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout)),
            *resource.query(),
        ]
        started = self.clock()
        try:
            stream = self.api.watch(resource.path, query, read_timeout=timeout + 30)
        except ApiError as err:
            # with the watch cache on, a too-old resourceVersion is refused up front
            if err.status == 410:
                raise _Gone(f"watch refused: {err.message}") from err
            raise
        self._stream = stream
        events = 0
        try:
            if self.stopping.is_set():
                return
            yield from self._recovered()
            for event in stream:
                events += 1
                yield from self._handle(resource, event)
                if self.stopping.is_set():
                    return
        finally:
            self._stream = None
            stream.close()
        if events == 0 and self.clock() - started < 1.0 and not self.stopping.is_set():
            # a server (or proxy) that ends every watch at once: do not spin
            self.sleep(self.backoff.next())

    def _handle(self, resource: Resource, event: Mapping[str, Any]) -> Iterator[Event]:
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
                yield Upserted(key, slim(resource.kind, obj))
            elif kind == "DELETED":
                yield Deleted(key)
        if version:
            self.resource_version = version

    @property
    def watching(self) -> bool:
        """A watch is open now (tests wait for this before breaking it)."""
        return self._stream is not None

    def close_stream(self) -> None:
        """End the open watch, if any (from another thread; ``stop`` and tests do)."""
        stream = self._stream
        if stream is not None:
            stream.close()


def follow(events: Generator[Event, None, None], apply: Callable[[Event], None]) -> None:
    """Run ``events`` to its end, handing each event to ``apply``.

    When ``apply`` raises, the exception is thrown back into the loop at the event's
    ``yield``, where the loop treats it as a failure of its own list or watch: logged,
    reported as ``Failed``, retried after backoff.  The loop moves its resourceVersion past
    an event only once ``apply`` returned, so the retry lists again or watches from before
    the event, and the event comes again.  A bug in the consumer must not end the watch for
    good.
    """
    try:
        event: Event | None = next(events, None)
        while event is not None:
            try:
                apply(event)
            except Exception as err:
                try:
                    event = events.throw(err)
                except StopIteration:
                    event = None
            else:
                event = next(events, None)
    finally:
        events.close()

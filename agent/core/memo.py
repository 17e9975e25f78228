"""Caches for the reconcile path, bounded by what the last passes used.

A reconcile of a large cluster repeats almost all of the previous one's work: the same
Services, the same endpoints, the same rendered blocks.  These caches keep that work
between passes and forget what a pass no longer used, so a long-running agent in a
cluster with churn holds about two passes' worth and never grows beyond it (an LRU of
fixed size would fill up with stale entries and keep them).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar, cast

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Generations(Generic[K, V]):
    """Entries used in the current or the previous pass; ``turn()`` starts a pass.

    Keys are hashed once per lookup (model objects hash deeply): an entry carries the
    number of the pass that last used it, and a turn deletes only what is stale.
    """

    def __init__(self) -> None:
        self._entries: dict[K, list[Any]] = {}
        self._pass = 0
        self._lock = threading.Lock()

    def turn(self) -> None:
        """Start a pass: what neither this pass nor the previous one uses is dropped."""
        with self._lock:
            stale = [k for k, entry in self._entries.items() if entry[0] < self._pass]
            for key in stale:
                del self._entries[key]
            self._pass += 1

    def get(self, key: K, compute: Callable[[], V]) -> V:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry[0] = self._pass
                return cast(V, entry[1])
        value = compute()
        with self._lock:
            self._entries[key] = [self._pass, value]
        return value

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class IdentityMemo(Generic[V]):
    """Results by the identity of the objects they were computed from.

    A live agent's store replaces an object with a new dict whenever it changes, so an
    object that is the *same* object as last time gives the same result: a reconcile
    after one change recomputes one Service, not a thousand.  An entry keeps the objects
    it was computed from alive, so while it exists no other object can have their ids:
    equal ids mean the same objects.  Results must be immutable and exactly what
    computing again would give.
    """

    def __init__(self) -> None:
        self._entries: Generations[tuple[object, ...], tuple[tuple[object, ...], V]] = Generations()

    def turn(self) -> None:
        self._entries.turn()

    def get(self, objs: tuple[object, ...], extra: Hashable, *, compute: Callable[[], V]) -> V:
        key = (tuple(id(o) for o in objs), extra)
        return self._entries.get(key, lambda: (objs, compute()))[1]

    def __len__(self) -> int:
        return len(self._entries)

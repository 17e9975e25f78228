"""What every translation step shares: reading untrusted dicts, collecting rejections."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from agent.core.model import Reason, Rejection
from agent.core.snapshot import Obj


class Rejections:
    """The rejections of one translation, in the order they were found."""

    def __init__(self) -> None:
        self.items: list[Rejection] = []

    def add(self, code: Reason, *, kind: str, obj: str, key: str, reason: str) -> None:
        self.items.append(Rejection(kind=kind, obj=obj, key=key, reason=reason, code=code))

    def on(self, kind: str, obj: str) -> Site:
        """Rejections about one object: only the key and the reason vary."""
        return Site(self, kind, obj)


T = TypeVar("T")


class Site:
    """One object's rejections (see :meth:`Rejections.on`).  A plain class: one is made
    for every object read, and a frozen dataclass costs several times as much to make."""

    __slots__ = ("kind", "obj", "rejections")

    def __init__(self, rejections: Rejections, kind: str, obj: str) -> None:
        self.rejections = rejections
        self.kind = kind
        self.obj = obj

    def add(self, code: Reason, *, key: str, reason: str) -> None:
        self.rejections.add(code, kind=self.kind, obj=self.obj, key=key, reason=reason)

    def parse(
        self, parser: Callable[[Any], T], value: object, *, code: Reason, key: str
    ) -> T | None:
        """``parser(value)``, or None with the parser's message as the rejection."""
        try:
            return parser(value)
        except ValueError as err:
            self.add(code, key=key, reason=str(err))
            return None


def as_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


# Parsed JSON and YAML hold plain dicts: ``type(x) is dict`` answers for them before the
# abstract Mapping check, which costs several times as much (these run for every field read).


def meta_of(obj: Obj) -> Mapping[str, Any]:
    return as_mapping(obj.get("metadata"))


def as_mapping(value: object) -> Mapping[str, Any]:
    if type(value) is dict or isinstance(value, Mapping):
        return value
    return {}


def as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []

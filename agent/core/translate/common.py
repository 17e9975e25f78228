"""What every translation step shares: reading untrusted dicts, collecting rejections."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.core.model import Reason, Rejection
from agent.core.snapshot import Obj


class Rejections:
    """The rejections of one translation, in the order they were found."""

    def __init__(self) -> None:
        self.items: list[Rejection] = []

    def add(self, code: Reason, *, kind: str, obj: str, key: str, reason: str) -> None:
        self.items.append(Rejection(kind=kind, obj=obj, key=key, reason=reason, code=code))


def as_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def meta_of(obj: Obj) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def as_mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []

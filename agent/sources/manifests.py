"""Read cluster objects from manifest files, as ``kubectl get ... -o yaml`` prints them.

A PATH is a YAML or JSON file, a directory of them (``*.yaml``, ``*.yml``,
``*.json``, sorted, not recursive) or ``-`` for standard input.  A file may
hold several documents and ``kind: List`` (or ``*List``) wrappers; they are
flattened.  Unreadable or malformed files raise ``ManifestError`` naming the
file: a dry run against half the input would be a lie.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from agent.core.snapshot import Snapshot

SUFFIXES = (".yaml", ".yml", ".json")


class ManifestError(ValueError):
    """A manifest path could not be read or parsed."""


def _flatten(doc: Any, origin: str) -> Iterator[Mapping[str, Any]]:
    if doc is None:
        return
    if not isinstance(doc, Mapping):
        raise ManifestError(f"{origin}: expected Kubernetes objects, found {type(doc).__name__}")
    kind = doc.get("kind")
    if isinstance(kind, str) and kind.endswith("List") and "items" in doc:
        items = doc.get("items") or []
        if not isinstance(items, list):
            raise ManifestError(f"{origin}: {kind}.items is not a list")
        # kubectl omits kind/apiVersion on items of a typed list (ServiceList)
        item_kind = kind[: -len("List")] if kind != "List" else None
        for item in items:
            if isinstance(item, dict) and item_kind and "kind" not in item:
                item = {**item, "kind": item_kind}
            yield from _flatten(item, origin)
        return
    yield doc


def read_stream(stream: TextIO, origin: str) -> list[Mapping[str, Any]]:
    text = stream.read()
    docs: list[Any]
    if text.lstrip()[:1] in ("{", "["):
        # `kubectl get -o json`: JSON is YAML, but json parses ~50x faster than
        # PyYAML even with libyaml, which matters at thousands of Services.
        try:
            docs = [json.loads(text)]
        except json.JSONDecodeError as err:
            raise ManifestError(f"{origin}: not valid JSON: {err}") from None
    else:
        import yaml  # not at the top: JSON input never needs it

        # libyaml is an order of magnitude faster on large clusters
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        try:
            docs = list(yaml.load_all(text, Loader=loader))
        except yaml.YAMLError as err:
            raise ManifestError(f"{origin}: not valid YAML: {err}") from None
    out: list[Mapping[str, Any]] = []
    for doc in docs:
        out.extend(_flatten(doc, origin))
    return out


def _files(path: str) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.iterdir() if f.suffix in SUFFIXES and f.is_file())
    if p.is_file():
        return [p]
    raise ManifestError(f"{path}: no such file or directory")


def read_paths(paths: Iterable[str], stdin: TextIO | None = None) -> list[Mapping[str, Any]]:
    objects: list[Mapping[str, Any]] = []
    for path in paths:
        if path == "-":
            objects.extend(read_stream(stdin or sys.stdin, "<stdin>"))
            continue
        for file in _files(path):
            try:
                with file.open(encoding="utf-8") as stream:
                    objects.extend(read_stream(stream, str(file)))
            except OSError as err:
                raise ManifestError(f"{file}: {err.strerror}") from None
            except UnicodeDecodeError:
                raise ManifestError(f"{file}: not UTF-8 text") from None
    return objects


def load_snapshot(paths: Iterable[str], stdin: TextIO | None = None) -> Snapshot:
    return Snapshot.from_objects(read_paths(paths, stdin))

"""Sources that need no API server: nothing at all, or manifest files watched for edits.

Static mode (``kubernetes: false`` and no manifests) renders only what settings say:
the control-plane VIP with static backends and peers, so the VIP comes up before the
cluster exists.  A manifest source re-reads its files when they change (watchdog);
a file that no longer parses is reported and the last good snapshot stays in use.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from agent.core.snapshot import Snapshot
from agent.sources.manifests import ManifestError, load_snapshot

log = logging.getLogger("vip-agent.sources")


class StaticSource:
    """No cluster: an empty snapshot, forever."""

    def __init__(self) -> None:
        self.error: str | None = None

    def start(self, notify: Callable[[], None]) -> None:
        notify()

    def snapshot(self) -> Snapshot:
        return Snapshot()

    def stop(self) -> None:
        return None


class _Changed(FileSystemEventHandler):
    """Fires for events on the watched files, or on anything in the watched directories.

    A watched file's directory is watched (editors replace files by rename), but other
    files there must not count: the agent's own log or status file next to its config
    would otherwise trigger a reconcile that writes them again, forever.
    """

    def __init__(
        self, callback: Callable[[], None], *, files: set[str], directories: set[str]
    ) -> None:
        self.callback = callback
        self.files = files
        self.directories = directories

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type in ("opened", "closed_no_write"):
            return
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            path = os.fsdecode(raw) if raw else ""
            if path and (path in self.files or os.path.dirname(path) in self.directories):
                self.callback()
                return


class Stoppable(Protocol):
    def stop(self) -> None: ...


def watch_paths(paths: Sequence[Path], callback: Callable[[], None]) -> Stoppable:
    """Call ``callback`` when anything under ``paths`` (files or directories) changes."""
    observer = Observer()
    files = {str(p.absolute()) for p in paths if not p.is_dir()}
    directories = {str(p.absolute()) for p in paths if p.is_dir()}
    handler = _Changed(callback, files=files, directories=directories)
    seen: set[Path] = set()
    for path in paths:
        directory = (path if path.is_dir() else path.parent).absolute()
        if directory not in seen and directory.is_dir():
            seen.add(directory)
            observer.schedule(handler, str(directory), recursive=False)
    observer.daemon = True
    observer.start()
    return observer


class ManifestSource:
    """Cluster objects from manifest files, re-read when they change."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)
        self.error: str | None = None
        self._lock = threading.Lock()
        self._snapshot = Snapshot()
        self._dirty = True
        self._observer: Stoppable | None = None

    def start(self, notify: Callable[[], None]) -> None:
        def changed() -> None:
            with self._lock:
                self._dirty = True
            notify()

        self._observer = watch_paths([Path(p) for p in self.paths if p != "-"], changed)
        notify()

    def snapshot(self) -> Snapshot:
        with self._lock:
            if not self._dirty:
                return self._snapshot
            self._dirty = False
        try:
            snapshot = load_snapshot(self.paths)
        except ManifestError as err:
            self.error = str(err)
            log.error("manifests: %s; keeping the last good objects", err)
            return self._snapshot
        self.error = None
        with self._lock:
            self._snapshot = snapshot
        return snapshot

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()

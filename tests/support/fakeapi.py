"""A stand-in API server for what kube-apiserver 1.20 cannot show: EndpointSlice v1.

The tests' real server (kube-apiserver 1.20.2) serves EndpointSlices only as
discovery.k8s.io/v1beta1, so the agent watches core/v1 Endpoints there.  To run the *same*
watcher code over discovery.k8s.io/v1 EndpointSlices, this module serves that resource (and
empty Services, ConfigMaps and Nodes) over real HTTP, speaking the parts of the API
protocol KubeSource uses:

* ``GET /apis/discovery.k8s.io`` (APIGroup discovery, versions as configured);
* paginated lists (``limit`` / ``continue``) with ``metadata.resourceVersion``;
* watches as chunked ``application/json`` streams: replay after ``resourceVersion``,
  then live events, ``BOOKMARK`` on request, an ``ERROR`` event with a 410 Status when the
  resourceVersion was "compacted", and the stream ends after ``timeoutSeconds``;
* an ``ERROR`` event with any other Status, injected per path (an etcd failure mid-watch);
* failure Status answers (403, 500 ...) injected per path.

The kubernetes client's real ApiClient and urllib3 talk to it, so only the server side is
fake; everything the real server can show is tested against the real server.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Obj = dict[str, Any]


@dataclass
class _Event:
    rv: int
    path: str
    type: str
    obj: Obj


def _failure(code: int, reason: str, message: str) -> Obj:
    """A failure Status, as an HTTP answer's body or a watch ERROR event's object."""
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure"}
    return {**status, "code": code, "reason": reason, "message": message}


@dataclass
class FakeApiServer:
    """In-memory objects per collection path, with one global resourceVersion (as etcd)."""

    discovery_versions: tuple[str, ...] = ("v1",)
    paths: tuple[str, ...] = (
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/api/v1/endpoints",
        "/api/v1/namespaces/kube-system/configmaps",
        "/api/v1/nodes",
    )
    objects: dict[str, dict[tuple[str, str], Obj]] = field(default_factory=dict)
    events: list[_Event] = field(default_factory=list)
    rv: int = 1
    compacted: int = 0
    failures: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    """path -> (code, reason, message) answered to every request for it."""
    watch_failures: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    """path -> HTTP failure answered once to the next watch (e.g. 410 from a watch cache)."""
    stream_errors: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    """path -> Status sent once as an ERROR event that ends the next watch stream (what
    kube-apiserver 1.20 sends for an etcd failure mid-watch, e.g. 500 "PrevKv=nil")."""
    requests: list[tuple[str, Obj]] = field(default_factory=list)
    bookmarks: bool = True
    paused: bool = False
    """Hold back live events from open watches (a watcher that fell behind)."""

    def __post_init__(self) -> None:
        self.cond = threading.Condition()
        for path in self.paths:
            self.objects.setdefault(path, {})
        self._server: ThreadingHTTPServer | None = None
        self._closing = False

    # --- the test's side ---

    def put(self, path: str, obj: Obj) -> str:
        """ADDED or MODIFIED; returns the new resourceVersion."""
        with self.cond:
            self.rv += 1
            meta = obj.setdefault("metadata", {})
            meta["resourceVersion"] = str(self.rv)
            key = (meta.get("namespace", ""), meta["name"])
            kind = "MODIFIED" if key in self.objects[path] else "ADDED"
            self.objects[path][key] = obj
            self.events.append(_Event(self.rv, path, kind, json.loads(json.dumps(obj))))
            self.cond.notify_all()
            return str(self.rv)

    def remove(self, path: str, namespace: str, name: str) -> None:
        with self.cond:
            obj = self.objects[path].pop((namespace, name))
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self.events.append(_Event(self.rv, path, "DELETED", obj))
            self.cond.notify_all()

    def compact(self) -> None:
        """Forget history: every watch from an older resourceVersion gets 410 Gone, and
        open watches are told so now (as etcd compaction does to a lagging watcher)."""
        with self.cond:
            self.compacted = self.rv
            self.events.clear()
            self.cond.notify_all()

    def pause(self, paused: bool) -> None:
        with self.cond:
            self.paused = paused
            self.cond.notify_all()

    def bookmark(self) -> None:
        """Bump the resourceVersion without a change and let watchers know (a BOOKMARK)."""
        with self.cond:
            self.rv += 1
            self.events.append(_Event(self.rv, "*", "BOOKMARK", {}))
            self.cond.notify_all()

    # --- HTTP ---

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeApiServer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                fake._handle(self)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                return None  # a client closing its watch is routine, not worth a traceback

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        with self.cond:
            self._closing = True
            self.cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def api_client(self) -> Any:
        from kubernetes import client

        configuration = client.Configuration(host=self.url)
        configuration.proxy = None
        return client.ApiClient(configuration)

    def _send_json(self, handler: BaseHTTPRequestHandler, code: int, body: Obj) -> None:
        data = json.dumps(body).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _status(self, handler: BaseHTTPRequestHandler, code: int, reason: str, msg: str) -> None:
        self._send_json(handler, code, _failure(code, reason, msg))

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(handler.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        with self.cond:
            self.requests.append((url.path, query))
            failure = self.failures.get(url.path)
        if failure is not None:
            self._status(handler, *failure)
            return
        if url.path == "/apis/discovery.k8s.io":
            versions = [
                {"groupVersion": f"discovery.k8s.io/{v}", "version": v}
                for v in self.discovery_versions
            ]
            self._send_json(
                handler,
                200,
                {"kind": "APIGroup", "name": "discovery.k8s.io", "versions": versions},
            )
            return
        if url.path not in self.objects:
            self._status(handler, 404, "NotFound", f"the server could not find {url.path}")
            return
        if query.get("watch") in ("1", "true"):
            with self.cond:
                once = self.watch_failures.pop(url.path, None)
            if once is not None:
                self._status(handler, *once)
                return
            self._watch(handler, url.path, query)
        else:
            self._list(handler, url.path, query)

    def _list(self, handler: BaseHTTPRequestHandler, path: str, query: dict[str, str]) -> None:
        with self.cond:
            items = [self.objects[path][k] for k in sorted(self.objects[path])]
            rv = self.rv
        selector = query.get("fieldSelector", "")
        if selector.startswith("metadata.name="):
            items = [i for i in items if i["metadata"]["name"] == selector.partition("=")[2]]
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0) or len(items) or 1
        page = items[start : start + limit]
        meta: Obj = {"resourceVersion": str(rv)}
        if start + limit < len(items):
            meta["continue"] = str(start + limit)
        self._send_json(handler, 200, {"kind": "List", "metadata": meta, "items": page})

    def _watch(self, handler: BaseHTTPRequestHandler, path: str, query: dict[str, str]) -> None:
        since = int(query.get("resourceVersion") or 0)
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 300)
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        try:
            for line in self._events(path, since, deadline, query):
                data = line.encode() + b"\n"
                handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                handler.wfile.flush()
            handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
        except OSError:
            return  # the client went away

    def _events(
        self, path: str, since: int, deadline: float, query: dict[str, str]
    ) -> Iterator[str]:
        selector = query.get("fieldSelector", "")
        name = selector.partition("=")[2] if selector.startswith("metadata.name=") else None
        bookmarks = query.get("allowWatchBookmarks") == "true" and self.bookmarks
        with self.cond:
            error = self.stream_errors.pop(path, None)
        if error is not None:
            yield json.dumps({"type": "ERROR", "object": _failure(*error)})
            return
        while True:
            with self.cond:
                if since < self.compacted:
                    message = f"too old resource version: {since} ({self.compacted})"
                    gone = _failure(410, "Expired", message)
                    yield json.dumps({"type": "ERROR", "object": gone})
                    return
                pending = [
                    e
                    for e in self.events
                    if e.rv > since and e.path in (path, "*") and not self.paused
                ]
                if not pending:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closing:
                        return
                    self.cond.wait(min(remaining, 0.5))
                    continue
            for event in pending:
                since = event.rv
                if event.type == "BOOKMARK":
                    if bookmarks:
                        obj = {"metadata": {"resourceVersion": str(event.rv)}}
                        yield json.dumps({"type": "BOOKMARK", "object": obj})
                    continue
                if name is not None and event.obj["metadata"]["name"] != name:
                    continue
                yield json.dumps({"type": event.type, "object": event.obj})

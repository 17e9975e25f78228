"""KubeSource over discovery.k8s.io/v1 EndpointSlices, and its failure paths, on a stand-in server.

kube-apiserver 1.20 (the real server of the other tests in this folder) does not serve
EndpointSlice v1, so this file runs the same watcher code against ``FakeApiServer``: a real
HTTP server speaking the list/watch protocol, reached through the real kubernetes
ApiClient.  The fake stands in only there, and for failures a real server will not produce
on demand (a 403 that goes away, a watch-cache 410 answered as HTTP, bookmarks, which 1.20
sends only from its watch cache).  Everything else is tested against the real server in
test_source_live.py.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from agent.assets import template_dirs
from agent.core import render
from agent.core.translate import translate
from agent.settings import Settings
from agent.sources.kube import (
    ENDPOINT_SLICES,
    ENDPOINTS,
    Backoff,
    KubeApi,
    KubeSource,
    slim,
)
from labkit import objects
from tests.support.cluster import eventually
from tests.support.fakeapi import FakeApiServer

SLICES = "/apis/discovery.k8s.io/v1/endpointslices"
SERVICES = "/api/v1/services"
CONFIGMAPS = "/api/v1/namespaces/kube-system/configmaps"
NODES = "/api/v1/nodes"
SETTINGS = Settings(configmap="kube-system/vip-configmap")


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    try:
        yield server
    finally:
        server.stop()


class Sleeps:
    """Injected backoff sleep: records each delay, waits only a moment."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.event = threading.Event()

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.event.wait(0.01)


def make_source(fake: FakeApiServer, **kw: Any) -> KubeSource:
    kw.setdefault("sync_timeout", 5.0)
    kw.setdefault("random", lambda: 0.5)
    return KubeSource(
        api=KubeApi(fake.api_client()), configmap=("kube-system", "vip-configmap"), **kw
    )


def seed(fake: FakeApiServer) -> None:
    fake.put(NODES, objects.node("node-a", "198.51.100.1"))
    fake.put(CONFIGMAPS, objects.configmap({"192.0.2.10": "default/web"}))
    fake.put(SERVICES, objects.service("web", [objects.port("http", 80, "http")]))


def keepalived_conf(source: KubeSource) -> str:
    state = translate(source.snapshot(), SETTINGS, node_name="node-a", interface="eth0")
    return render.Renderer(template_dirs(None)).render(state)["keepalived.conf"]


def web_slice(name: str, *addresses: str) -> dict[str, Any]:
    return objects.endpoint_slice(
        "web",
        [objects.port("http", 8080)],
        [objects.endpoint(a, node_name="node-a") for a in addresses],
        name=name,
    )


def test_slices_v1_chosen_by_discovery_and_followed(fake: FakeApiServer) -> None:
    seed(fake)
    fake.put(SLICES, web_slice("web-1", "203.0.113.1"))
    notified = threading.Event()
    source = make_source(fake, page_size=1)  # every list in pages of one
    source.start(notified.set)
    try:
        assert source.endpoints.resource is ENDPOINT_SLICES
        assert "real_server 203.0.113.1 8080" in keepalived_conf(source)
        continued = [q for p, q in fake.requests if p == SLICES and "continue" in q]
        assert not continued  # one slice, one page
        fake.put(SLICES, web_slice("web-2", "203.0.113.2"))
        eventually(lambda: "real_server 203.0.113.2 8080" in keepalived_conf(source), what="add")
        fake.put(SLICES, web_slice("web-1", "203.0.113.9"))
        eventually(lambda: "real_server 203.0.113.9 8080" in keepalived_conf(source), what="mod")
        assert "203.0.113.1 " not in keepalived_conf(source)
        fake.remove(SLICES, "default", "web-2")
        eventually(lambda: "203.0.113.2 " not in keepalived_conf(source), what="delete")
        assert notified.is_set()
        slices = source.snapshot().endpoint_slices[("default", "web")]
        assert [s["metadata"]["name"] for s in slices] == ["web-1"]
        assert slices[0]["endpoints"] == [
            {"addresses": ["203.0.113.9"], "conditions": {"ready": True}, "nodeName": "node-a"}
        ]
    finally:
        source.stop()


def test_lists_are_paginated(fake: FakeApiServer) -> None:
    seed(fake)
    for i in range(5):
        fake.put(SLICES, web_slice(f"web-{i}", f"203.0.113.{i + 1}"))
    source = make_source(fake, page_size=2)
    source.start(lambda: None)
    try:
        assert len(source.store_of("EndpointSlice")) == 5
        pages = [q for p, q in fake.requests if p == SLICES and q.get("watch") is None]
        assert [q.get("continue") for q in pages] == [None, "2", "4"]
        assert all(q["limit"] == "2" for q in pages)
    finally:
        source.stop()


@pytest.mark.parametrize("versions", [("v1beta1",), ()])
def test_without_discovery_v1_endpoints_are_watched(
    fake: FakeApiServer, versions: tuple[str, ...]
) -> None:
    fake.discovery_versions = versions
    if not versions:
        fake.failures["/apis/discovery.k8s.io"] = (404, "NotFound", "no such group")
    source = make_source(fake)
    source.start(lambda: None)
    try:
        assert source.endpoints.resource is ENDPOINTS
    finally:
        source.stop()


def test_watch_error_410_relists_and_replaces_the_store(fake: FakeApiServer) -> None:
    seed(fake)
    fake.put(SLICES, web_slice("keep", "203.0.113.1"))
    fake.put(SLICES, web_slice("doomed", "203.0.113.2"))
    source = make_source(fake)
    source.start(lambda: None)
    try:
        assert source.endpoints.lists == 1
        before = source.generation
        fake.pause(True)  # the watcher falls behind ...
        fake.remove(SLICES, "default", "doomed")
        fake.put(SLICES, web_slice("new", "203.0.113.3"))
        fake.put(SLICES, web_slice("keep", "203.0.113.4"))
        fake.compact()  # ... and its resourceVersion is compacted away
        fake.pause(False)
        eventually(lambda: source.endpoints.lists == 2, what="relist after 410")
        expected = {k: slim("EndpointSlice", v) for k, v in fake.objects[SLICES].items()}
        assert source.store_of("EndpointSlice") == expected
        assert set(expected) == {("default", "keep"), ("default", "new")}
        assert source.generation > before
        assert source.error is None
    finally:
        source.stop()


def test_http_410_on_watch_open_relists(fake: FakeApiServer) -> None:
    """A server with the watch cache answers a too-old resourceVersion with HTTP 410."""
    seed(fake)
    source = make_source(fake, watch_timeout=1)
    fake.watch_failures[SERVICES] = (410, "Expired", "too old resource version")
    source.start(lambda: None)
    try:
        eventually(lambda: source.services.lists == 2, what="relist after HTTP 410")
        assert source.error is None
    finally:
        source.stop()


def test_bookmark_moves_the_resource_version_without_a_change(fake: FakeApiServer) -> None:
    seed(fake)
    source = make_source(fake)
    source.start(lambda: None)
    try:
        generation = source.generation
        snapshot = source.snapshot()
        fake.bookmark()
        eventually(
            lambda: source.services.watch.resource_version == str(fake.rv), what="bookmark applied"
        )
        assert source.generation == generation
        assert source.snapshot() is snapshot  # cached: nothing changed
        watches = [q for p, q in fake.requests if p == SERVICES and q.get("watch")]
        assert all(q["allowWatchBookmarks"] == "true" for q in watches)
        # timeoutSeconds is randomized in [1x, 2x) of the base (random() = 0.5 here)
        assert all(q["timeoutSeconds"] == "450" for q in watches)
    finally:
        source.stop()


def test_forbidden_fails_loudly_backs_off_and_recovers(
    fake: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    seed(fake)
    message = (
        'services is forbidden: User "system:serviceaccount:kube-system:vip-agent" cannot '
        'list resource "services" in API group "" at the cluster scope'
    )
    fake.failures[SERVICES] = (403, "Forbidden", message)
    sleeps = Sleeps()
    source = make_source(fake, sleep=sleeps, sync_timeout=0.3, backoff_base=0.5, backoff_cap=4)
    with caplog.at_level(logging.ERROR, logger="vip-agent.kube"):
        source.start(lambda: None)
    try:
        eventually(lambda: len(sleeps.delays) >= 6, what="six retries")
        assert source.error == (
            "forbidden: cannot list services at the cluster scope "
            '(user "system:serviceaccount:kube-system:vip-agent"); RBAC must allow verb "list" '
            'on "services" in API group "" (see container/rbac.yaml)'
        )
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert errors and "forbidden: cannot list services" in errors[0].getMessage()
        # capped exponential: 0.5, 1, 2, 4, 4 ... times the jitter factor (0.5 + 0.5 * 0.5)
        assert sleeps.delays[:6] == [0.375, 0.75, 1.5, 3.0, 3.0, 3.0]
        assert source.snapshot().services == {}  # never listed: nothing to keep
        del fake.failures[SERVICES]
        eventually(lambda: source.error is None, what="recovery")
        assert ("default", "web") in source.snapshot().services
    finally:
        source.stop()


def test_unreachable_server_sets_error() -> None:
    from kubernetes import client

    from labkit.ports import free_ports

    configuration = client.Configuration(host=f"http://127.0.0.1:{free_ports(1)[0]}")
    configuration.proxy = None
    configuration.retries = False
    sleeps = Sleeps()
    source = KubeSource(
        api=KubeApi(client.ApiClient(configuration)),
        configmap=("kube-system", "vip-configmap"),
        sleep=sleeps,
        sync_timeout=0.3,
    )
    source.start(lambda: None)
    try:
        eventually(lambda: source.error is not None, what="error set")
        assert "API server unreachable (list services)" in (source.error or "")
    finally:
        source.stop()


def test_backoff_is_capped_exponential_with_jitter() -> None:
    low = Backoff(base=1.0, cap=8.0, random=lambda: 0.0)
    high = Backoff(base=1.0, cap=8.0, random=lambda: 0.999)
    assert [low.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert [round(high.next(), 2) for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    low.reset()
    assert low.next() == 0.5

"""The list-then-watch loop on its own: it only yields events, and needs no source.

Runs ``Watch`` against ``FakeApiServer`` (real HTTP through the real ApiClient) with no
KubeSource at all: what a consumer sees is the stream of events, and nothing else.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from agent.sources.kube import SERVICES, Backoff, KubeApi, slim
from agent.sources.kube.watching import (
    Event,
    Failed,
    Listed,
    Restarted,
    Upserted,
    Watch,
    follow,
)
from labkit import objects
from tests.support.cluster import eventually
from tests.support.fakeapi import FakeApiServer

PATH = "/api/v1/services"


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    try:
        yield server
    finally:
        server.stop()


def make_watch(fake: FakeApiServer, stopping: threading.Event, sleeps: list[float]) -> Watch:
    return Watch(
        name="services",
        api=KubeApi(fake.api_client()),
        resolve=lambda: SERVICES,
        stopping=stopping,
        backoff=Backoff(base=0.5, cap=4.0, random=lambda: 0.5),
        sleep=sleeps.append,
        random=lambda: 0.5,
        clock=lambda: 0.0,
    )


def test_lists_then_yields_changes(fake: FakeApiServer) -> None:
    fake.put(PATH, objects.service("web", [objects.port("http", 80)]))
    stopping = threading.Event()
    watch = make_watch(fake, stopping, [])
    events = watch.events()
    listed = next(events)
    listed_rv = str(fake.rv)
    assert isinstance(listed, Listed)
    assert listed.resource is SERVICES
    assert listed.items == {
        ("default", "web"): slim("Service", fake.objects[PATH]["default", "web"])
    }
    fake.put(PATH, objects.service("db", [objects.port("pg", 5432)]))
    upserted = next(events)
    assert isinstance(upserted, Upserted) and upserted.key == ("default", "db")
    # the position moves past an event only once the consumer has taken it
    assert watch.resource_version == listed_rv
    stopping.set()
    assert next(events, None) is None  # the loop ends once told to stop
    assert (
        watch.resource_version == fake.objects[PATH]["default", "db"]["metadata"]["resourceVersion"]
    )
    assert not watch.watching


def test_a_failing_consumer_is_retried_by_the_loop(
    fake: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    """``follow`` throws the consumer's failure back: logged, reported, watched again."""
    fake.put(PATH, objects.service("web", [objects.port("http", 80)]))
    stopping = threading.Event()
    sleeps: list[float] = []
    watch = make_watch(fake, stopping, sleeps)
    seen: list[Event] = []
    upserts = 0

    def apply(event: Event) -> None:
        nonlocal upserts
        seen.append(event)
        if isinstance(event, Upserted):
            upserts += 1
            if upserts == 1:
                raise RuntimeError("bug in the consumer")
            stopping.set()

    thread = threading.Thread(target=follow, args=(watch.events(), apply), daemon=True)
    with caplog.at_level(logging.ERROR, logger="vip-agent.kube"):
        thread.start()
        try:
            eventually(lambda: watch.watching, what="watch open")
            fake.put(PATH, objects.service("db", [objects.port("pg", 5432)]))
            thread.join(10)
            assert not thread.is_alive()
        finally:
            stopping.set()
            watch.close_stream()
    kinds = [type(e).__name__ for e in seen]
    assert kinds == ["Listed", "Upserted", "Failed", "Restarted", "Recovered", "Upserted"]
    failed = seen[2]
    assert isinstance(failed, Failed)
    assert failed.message == "watch services: RuntimeError: bug in the consumer"
    assert failed.level == logging.ERROR
    assert isinstance(seen[3], Restarted)
    assert seen[1] == seen[5]  # watched again from before the event: it came again
    assert sleeps == [0.375]
    assert any("services: unexpected failure" in r.getMessage() for r in caplog.records)


def test_an_error_event_mid_watch_is_retried_from_the_same_version(fake: FakeApiServer) -> None:
    """kube-apiserver 1.20 ends a watch with ERROR 500 "etcd event received with
    PrevKv=nil" when etcd compacts a DELETE's previous value while the watch replays (seen
    in CI). Not a 410: no relist; a warning, a backoff, the same resourceVersion again,
    and the change made meanwhile still arrives (a later 410 would relist)."""
    fake.put(PATH, objects.service("web", [objects.port("http", 80)]))
    stopping = threading.Event()
    sleeps: list[float] = []
    watch = make_watch(fake, stopping, sleeps)
    events = watch.events()
    assert isinstance(next(events), Listed)
    listed_rv = str(fake.rv)
    message = 'Internal error occurred: etcd event received with PrevKv=nil (key="/x")'
    fake.stream_errors[PATH] = (500, "InternalError", message)
    fake.put(PATH, objects.service("db", [objects.port("pg", 5432)]))
    seen: list[Event] = []

    def take() -> None:  # in a thread: a regression that waits for more must not hang
        for event in events:
            seen.append(event)
            if len(seen) == 4 or stopping.is_set():
                return

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    thread.join(10)
    stopping.set()
    watch.close_stream()
    thread.join(5)
    assert [type(e).__name__ for e in seen] == ["Failed", "Restarted", "Recovered", "Upserted"]
    failed = seen[0]
    assert isinstance(failed, Failed) and failed.level == logging.WARNING
    assert "PrevKv=nil" in failed.message
    assert isinstance(seen[3], Upserted) and seen[3].key == ("default", "db")
    assert sleeps == [0.375]
    watches = [q for p, q in fake.requests if p == PATH and q.get("watch")]
    lists = [q for p, q in fake.requests if p == PATH and not q.get("watch")]
    assert len(lists) == 1
    assert [q["resourceVersion"] for q in watches] == [listed_rv, listed_rv]

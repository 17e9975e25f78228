"""The ``apiserver`` fixture against a real kube-apiserver 1.20 (python client 37)."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from labkit.apiserver import NOBODY_USER, ApiServer, wait_until, watch_ends_in_gone

NAMESPACE = "default"


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def configmap(name: str, data: dict[str, str]) -> Any:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data=data)


def test_configmap_create_list_delete_as_admin(apiserver: ApiServer) -> None:
    with apiserver.api_client() as api:
        v1 = client.CoreV1Api(api)
        name = unique("vip-configmap")
        created = v1.create_namespaced_config_map(
            NAMESPACE, configmap(name, {"192.0.2.50": "default/web"})
        )
        assert created.data == {"192.0.2.50": "default/web"}
        assert created.metadata is not None
        assert created.metadata.resource_version

        items = v1.list_namespaced_config_map(NAMESPACE).items
        names = {cm.metadata.name for cm in items if cm.metadata is not None}
        assert name in names

        # 1.20 answers DELETE with a Status (client 37 types it as a plain "object");
        # read the raw response (a urllib3 response).
        response: Any = v1.delete_namespaced_config_map(name, NAMESPACE, _preload_content=False)
        assert response.status == 200
        assert json.loads(response.data)["kind"] in {"Status", "ConfigMap"}

        with pytest.raises(ApiException) as missing:
            v1.read_namespaced_config_map(name, NAMESPACE)
        assert missing.value.status == 404


def test_token_user_without_rbac_gets_403(apiserver: ApiServer) -> None:
    token = apiserver.token_for(NOBODY_USER)
    with apiserver.api_client(token) as api, pytest.raises(ApiException) as denied:
        client.CoreV1Api(api).list_namespaced_service(NAMESPACE)
    # 403 (authenticated, not authorized), not 401 (unknown token).
    assert denied.value.status == 403
    status = json.loads(denied.value.body or "{}")
    assert status["reason"] == "Forbidden"
    assert f'User "{NOBODY_USER}" cannot list resource "services"' in status["message"]


def watch_from(v1: Any, resource_version: str) -> bool:
    """True when a watch from ``resource_version`` ends in 410 Gone, False when it replays."""
    return watch_ends_in_gone(
        v1.list_namespaced_config_map,
        NAMESPACE,
        resource_version=resource_version,
        timeout_seconds=5,
    )


def test_watch_from_compacted_resource_version_gets_410(apiserver: ApiServer) -> None:
    with apiserver.api_client() as api:
        v1 = client.CoreV1Api(api)
        name = unique("compacted")
        old = v1.create_namespaced_config_map(NAMESPACE, configmap(name, {"n": "0"}))
        assert old.metadata is not None
        old_rv = old.metadata.resource_version
        assert old_rv is not None
        for n in range(1, 4):
            v1.patch_namespaced_config_map(name, NAMESPACE, {"data": {"n": str(n)}})

        # Not compacted yet: the watch replays history (no watch cache for configmaps).
        assert watch_from(v1, old_rv) is False

        # The apiserver compacts etcd every interval up to the revision of the previous tick.
        started = time.monotonic()
        wait_until(
            lambda: watch_from(v1, old_rv),
            timeout=3 * apiserver.compaction_interval + 30,
            interval=1.0,
            what=f"410 Gone for a watch from resourceVersion {old_rv}",
        )
        assert time.monotonic() - started >= apiserver.compaction_interval / 2
        v1.delete_namespaced_config_map(name, NAMESPACE, _preload_content=False)


def test_kill_and_restart_keeps_etcd_state(apiserver: ApiServer) -> None:
    name = unique("survivor")
    with apiserver.api_client() as api:
        client.CoreV1Api(api).create_namespaced_config_map(NAMESPACE, configmap(name, {"a": "b"}))
    pid = apiserver.apiserver_pid
    assert pid is not None
    try:
        apiserver.kill()
        assert apiserver.apiserver_pid is None
        with apiserver.api_client() as api, pytest.raises(urllib3.exceptions.MaxRetryError):
            client.CoreV1Api(api).list_namespaced_config_map(NAMESPACE, _request_timeout=5)
    finally:
        apiserver.restart()
    assert apiserver.apiserver_pid not in {None, pid}
    with apiserver.api_client() as api:
        v1 = client.CoreV1Api(api)
        assert v1.read_namespaced_config_map(name, NAMESPACE).data == {"a": "b"}
        v1.delete_namespaced_config_map(name, NAMESPACE, _preload_content=False)


# Pretty-printed by ?pretty=true or by a curl User-Agent; single Namespaces (objects with
# maps) are what broke.
PRETTY_GETS: tuple[tuple[str, dict[str, str]], ...] = (
    ("/api/v1/namespaces?pretty=true", {}),
    ("/api/v1/namespaces/default", {"User-Agent": "curl/7.88.1"}),
    ("/api/v1/namespaces/kube-system?pretty=true", {}),
    ("/api/v1/namespaces/default?pretty=true", {}),
)


def test_pretty_printed_responses_do_not_crash_the_server(apiserver: ApiServer) -> None:
    """kube-apiserver 1.20 built with Go >= 1.18 and the vendored reflect2 1.0.1
    dereferenced a nil pointer in reflect2 (UnsafeMapType.Key) on pretty-printed objects
    with maps, and dropped the connection (scripts/build-kube vendors reflect2 1.0.2)."""
    pid = apiserver.apiserver_pid
    for _ in range(2):
        for path, headers in PRETTY_GETS:
            status, body = apiserver.get(path, headers=headers)
            assert status == 200, (path, body)
            assert body.startswith('{\n  "kind": "Namespace'), (path, body[:80])
    assert apiserver.apiserver_pid == pid
    assert apiserver.get("/readyz") == (200, "ok")
    assert "reflect2" not in apiserver.apiserver_log.read_text(encoding="utf-8")

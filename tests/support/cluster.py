"""The test side of a real API server: make and read objects as an administrator would.

Writes and the "fresh list" that stores are compared with go through the kubernetes
client's generated CoreV1Api methods (raw JSON, ``_preload_content=False``), not through
``agent.sources.kube.KubeApi``, so a fault in the code under test cannot hide itself.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from agent.assets import template_dirs
from agent.core import render
from agent.core.model import DesiredState
from agent.core.translate import translate
from agent.settings import Settings
from agent.sources.kube import KubeApi, KubeSource, slim, store_key
from labkit import objects
from labkit.apiserver import ApiServer, wait_until

Obj = dict[str, Any]
ROOT = Path(__file__).resolve().parents[2]
RBAC_YAML = ROOT / "container" / "rbac.yaml"

# kind -> CoreV1Api method-name part, and whether it is namespaced
_KINDS: dict[str, tuple[str, bool]] = {
    "Service": ("service", True),
    "Endpoints": ("endpoints", True),
    "ConfigMap": ("config_map", True),
    "Event": ("event", True),
    "ServiceAccount": ("service_account", True),
    "Node": ("node", False),
    "Namespace": ("namespace", False),
}


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def _raw(response: Any) -> Any:
    data = response.data
    return json.loads(data) if data else None


class Cluster:
    """Administrator access for tests (admin token unless another is given)."""

    def __init__(self, apiserver: ApiServer, token: str | None = None) -> None:
        self.apiserver = apiserver
        self.api_client = apiserver.api_client(token)
        self.v1 = client.CoreV1Api(self.api_client)
        self.rbac = client.RbacAuthorizationV1Api(self.api_client)
        self.namespaces: list[str] = []
        self.made: list[tuple[str, str | None, str]] = []

    def close(self) -> None:
        """Delete what this test made, so the next test's cluster-wide watches do not see it.

        No namespace controller runs: a deleted namespace would stay Terminating and keep
        its objects, so objects are deleted one by one and namespaces are left in place
        (their names are unique per test).
        """
        for kind, namespace, name in reversed(self.made):
            if kind != "Namespace":
                with contextlib.suppress(ApiException):
                    self.delete(kind, namespace, name)
        self.api_client.close()

    def _call(self, verb: str, kind: str, namespace: str | None, *args: Any, **kw: Any) -> Any:
        part, namespaced = _KINDS[kind]
        if namespaced:
            method = getattr(self.v1, f"{verb}_namespaced_{part}")
            return _raw(method(*args[:1], namespace, *args[1:], _preload_content=False, **kw))
        method = getattr(self.v1, f"{verb}_{part}")
        return _raw(method(*args, _preload_content=False, **kw))

    # --- objects ---

    def namespace(self, prefix: str = "vip-test") -> str:
        name = unique(prefix)
        self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        self.namespaces.append(name)
        return name

    def create(self, obj: Obj) -> Obj:
        kind = obj["kind"]
        namespace = obj["metadata"].get("namespace")
        part, namespaced = _KINDS[kind]
        if namespaced:
            method = getattr(self.v1, f"create_namespaced_{part}")
            created = _raw(method(namespace, obj, _preload_content=False))
        else:
            method = getattr(self.v1, f"create_{part}")
            created = _raw(method(obj, _preload_content=False))
        self.made.append((kind, namespace, obj["metadata"]["name"]))
        return dict(created)

    def patch(self, kind: str, namespace: str | None, name: str, body: Obj) -> Obj:
        """A JSON merge patch (lists are replaced, as a test wants)."""
        return dict(
            self._call(
                "patch", kind, namespace, name, body, _content_type="application/merge-patch+json"
            )
        )

    def patch_service_status(self, namespace: str, name: str, body: Obj) -> Obj:
        """Merge-patch a Service's status subresource (what a load-balancer controller does)."""
        response = self.v1.patch_namespaced_service_status(
            name,
            namespace,
            body,
            _content_type="application/merge-patch+json",
            _preload_content=False,
        )
        return dict(_raw(response))

    def events(self, namespace: str) -> list[Obj]:
        return list(_raw(self.v1.list_namespaced_event(namespace, _preload_content=False))["items"])

    def delete(self, kind: str, namespace: str | None, name: str) -> None:
        self._call("delete", kind, namespace, name)

    def read(self, kind: str, namespace: str | None, name: str) -> Obj:
        return dict(self._call("read", kind, namespace, name))

    def list_all(self, kind: str) -> list[Obj]:
        part, namespaced = _KINDS[kind]
        if namespaced:
            method = getattr(self.v1, f"list_{part}_for_all_namespaces")
        else:
            method = getattr(self.v1, f"list_{part}")
        return list(_raw(method(_preload_content=False))["items"])

    def fresh_store(self, kind: str) -> dict[Any, Obj]:
        """What a KubeSource store must equal: a fresh list, trimmed the same way."""
        items = self.list_all(kind)
        out: dict[Any, Obj] = {}
        for item in items:
            key = store_key(kind, item)
            if key is not None:
                out[key] = slim(kind, item)
        return out

    # --- RBAC from container/rbac.yaml ---

    def apply_rbac(self, documents: list[Obj]) -> None:
        """Create or replace the ServiceAccount, roles and bindings of ``documents``."""
        for doc in documents:
            kind, meta = doc["kind"], doc["metadata"]
            if kind == "ServiceAccount":
                with contextlib.suppress(ApiException):  # 409: it exists
                    create: Any = self.v1.create_namespaced_service_account
                    create(meta["namespace"], doc, _preload_content=False)
                continue
            part = {
                "ClusterRole": "cluster_role",
                "ClusterRoleBinding": "cluster_role_binding",
                "Role": "namespaced_role",
                "RoleBinding": "namespaced_role_binding",
            }[kind]
            args = [meta["namespace"]] if kind in ("Role", "RoleBinding") else []
            try:
                getattr(self.rbac, f"create_{part}")(*args, doc, _preload_content=False)
            except ApiException as err:
                if err.status != 409:
                    raise
                getattr(self.rbac, f"replace_{part}")(
                    meta["name"], *args, doc, _preload_content=False
                )


def rbac_documents() -> list[Obj]:
    return [d for d in yaml.safe_load_all(RBAC_YAML.read_text(encoding="utf-8")) if d]


# --- sources under test ---------------------------------------------------------------


@contextlib.contextmanager
def running(source: KubeSource, notify: Callable[[], None] | None = None) -> Iterator[KubeSource]:
    source.start(notify or (lambda: None))
    try:
        yield source
    finally:
        source.stop()


def source_for(
    apiserver: ApiServer,
    configmap: tuple[str, str],
    *,
    token: str | None = None,
    api: KubeApi | None = None,
    **kw: Any,
) -> KubeSource:
    """A KubeSource on the test server with quick backoff (tests bound every wait)."""
    kw.setdefault("backoff_base", 0.2)
    kw.setdefault("backoff_cap", 1.0)
    kw.setdefault("sync_timeout", 20.0)
    return KubeSource(
        api=api or KubeApi(apiserver.api_client(token)),
        configmap=configmap,
        **kw,
    )


def eventually(check: Callable[[], bool], *, what: str, timeout: float = 15.0) -> None:
    wait_until(check, timeout=timeout, interval=0.05, what=what)


def time_ms(start: float) -> float:
    return (time.monotonic() - start) * 1000


# --- one test's world --------------------------------------------------------------------

GROUP_LABEL = "vip-agent.test/group"


class Scene:
    """One test's namespace, its labelled Nodes (``node_selector``) and settings.

    Nodes are cluster-scoped and the server is shared by the session: the label keeps
    other tests' Nodes out of this test's eligible set.
    """

    def __init__(self, cluster: Cluster, **settings: Any) -> None:
        self.cluster = cluster
        self.ns = cluster.namespace()
        self.me = f"{self.ns}-a"
        self.settings = Settings(
            configmap=f"{self.ns}/vip-configmap",
            node_selector=f"{GROUP_LABEL}={self.ns}",
            **settings,
        )
        self.add_node(self.me, "198.51.100.1")

    def add_node(self, name: str, address: str) -> None:
        node = objects.node(name, address)
        node["metadata"]["labels"][GROUP_LABEL] = self.ns
        self.cluster.create(node)

    def state(self, source: KubeSource, node: str | None = None) -> DesiredState:
        return translate(
            source.snapshot(), self.settings, node_name=node or self.me, interface="eth0"
        )

    def keepalived(self, source: KubeSource) -> str:
        files = render.Renderer(template_dirs(None)).render(self.state(source))
        return files["keepalived.conf"]

    def configmap(self, data: dict[str, str]) -> None:
        self.cluster.create(objects.configmap(data, namespace=self.ns))

    def web(self, name: str = "web", port: int = 80, **spec: Any) -> None:
        self.cluster.create(
            objects.service(name, [objects.port("http", port, "http")], namespace=self.ns, **spec)
        )

    def endpoints(self, name: str, *addresses: str) -> None:
        ports = [objects.port("http", 8080)]
        self.cluster.create(objects.core_endpoints(name, list(addresses), ports, self.ns))

    def set_endpoints(self, name: str, *addresses: str) -> None:
        subsets = [
            {"addresses": [{"ip": a} for a in addresses], "ports": [objects.port("http", 8080)]}
        ]
        self.cluster.patch("Endpoints", self.ns, name, {"subsets": subsets})

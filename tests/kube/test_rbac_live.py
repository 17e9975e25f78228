"""container/rbac.yaml on a real kube-apiserver 1.20: enough for the agent, and no more.

No controller-manager runs, so no ServiceAccount token can be issued.  The fixture instead
has static tokens whose user names are ServiceAccount names
(``system:serviceaccount:kube-system:vip-agent``); RBAC matches a ServiceAccount subject by
that user name, so rbac.yaml is applied exactly as shipped.  The "one verb missing" case
applies a copy renamed to ``vip-agent-limited`` (bound to a second such identity) so the
real role is never edited under other tests.
"""

from __future__ import annotations

import copy
import json
import logging
from ipaddress import ip_address
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from agent.core.model import Reason, Rejection
from agent.core.snapshot import Snapshot
from agent.core.translate import translate
from agent.lease import LeaseElector
from agent.settings import Settings
from agent.sources.kube import ENDPOINTS, ApiError, KubeApi
from agent.writeback import AddressWriter, EventRecorder, IngressWriter
from labkit import objects
from labkit.apiserver import AGENT_SA_USER, LIMITED_SA_USER
from tests.support.cluster import Cluster, eventually, rbac_documents, running, source_for
from tests.support.samples import results

CM = ("kube-system", "vip-configmap")


@pytest.fixture
def agent_rbac(cluster: Cluster) -> None:
    cluster.apply_rbac(rbac_documents())
    try:
        cluster.read("ConfigMap", *CM)
    except ApiException:
        cluster.create(objects.configmap({}))


def limited_documents(drop_verb: str, resource: str) -> list[dict[str, Any]]:
    """rbac.yaml renamed to vip-agent-limited, with ``drop_verb`` gone for ``resource``."""
    docs = copy.deepcopy(rbac_documents())
    for doc in docs:
        if doc["kind"] == "ServiceAccount":
            doc["metadata"]["name"] = "vip-agent-limited"
            continue
        doc["metadata"]["name"] = doc["metadata"]["name"].replace("vip-agent", "vip-agent-limited")
        if "roleRef" in doc:
            doc["roleRef"]["name"] = doc["roleRef"]["name"].replace(
                "vip-agent", "vip-agent-limited"
            )
            doc["subjects"][0]["name"] = "vip-agent-limited"
        rules: list[dict[str, Any]] = []
        for rule in doc.get("rules", []):
            if resource in rule["resources"]:
                others = [r for r in rule["resources"] if r != resource]
                if others:
                    rules.append({**rule, "resources": others})
                verbs = [v for v in rule["verbs"] if v != drop_verb]
                if verbs:  # a rule needs at least one verb
                    rules.append({**rule, "resources": [resource], "verbs": verbs})
            else:
                rules.append(rule)
        if "rules" in doc:
            doc["rules"] = rules
    return docs


def test_rbac_yaml_is_enough_for_the_agent(
    cluster: Cluster, agent_rbac: None, caplog: pytest.LogCaptureFixture
) -> None:
    apiserver = cluster.apiserver
    token = apiserver.token_for(AGENT_SA_USER)
    ns = cluster.namespace()
    cluster.create(
        objects.service(
            "lb",
            [objects.port("http", 80)],
            namespace=ns,
            type="LoadBalancer",
            loadBalancerIP="192.0.2.60",
        )
    )
    cluster.patch("ConfigMap", *CM, {"data": {"192.0.2.61": "", "not-an-ip": ""}})
    source = source_for(apiserver, CM, token=token)
    with caplog.at_level(logging.ERROR, logger="vip-agent"), running(source):
        # RBAC is read from an informer: a fresh binding may take a moment to apply
        eventually(lambda: source.error is None, what="no RBAC error", timeout=20)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        snapshot = source.snapshot()
        assert source.endpoints.resource is ENDPOINTS
        assert snapshot.configmaps[CM]["data"]["192.0.2.61"] == ""
        assert (ns, "lb") in snapshot.services

        # write-back with the same identity: services/status and events
        api = KubeApi(apiserver.api_client(token))
        settings = Settings(configmap="kube-system/vip-configmap")
        static = Snapshot.build(
            services=snapshot.services,
            slices=(),
            endpoints={},
            configmaps=snapshot.configmaps,
            nodes={},
            nodes_known=False,
        )
        state = translate(static, settings, node_name="node-a", interface="eth0")
        writer = IngressWriter(api=api, node_name="node-a")
        ip = ip_address("192.0.2.60")
        done = writer.sync(snapshot=static, state=state, held_vips={ip})
        assert [c.service for c in done] == [(ns, "lb")]
        assert results(writer, "failed") == 0
        ingress = cluster.read("Service", ns, "lb")["status"]["loadBalancer"]["ingress"]
        assert ingress == [{"ip": "192.0.2.60"}]
        events = EventRecorder(api=api, node_name="node-a")
        events.record(state.rejections, static)
        assert results(events, "created") == 1 and results(events, "failed") == 0
        events.record([], static)
        events.record(state.rejections, static)  # came back: count patched
        assert results(events, "patched") == 1 and results(events, "failed") == 0

        # the Lease, and an allocation from the pool ConfigMap, with the same identity
        elector = LeaseElector(
            api=api, namespace="kube-system", name="vip-agent-ipam", node_name="node-a"
        )
        assert elector.try_once() is True, elector.last_error
        elector.stop(release=True)
        cluster.create(objects.configmap({"cidr-global": "192.0.2.64/30"}, name="kubevip"))
        cluster.create(
            objects.service(
                "pending", [objects.port("http", 80)], namespace=ns, type="LoadBalancer"
            )
        )
        pools_source = source_for(
            apiserver, CM, token=token, pool_configmap=("kube-system", "kubevip")
        )
        with running(pools_source):
            eventually(
                lambda: (
                    (ns, "pending") in pools_source.snapshot().services
                    and ("kube-system", "kubevip") in pools_source.snapshot().configmaps
                ),
                what="pool ConfigMap and the pending Service seen",
            )
            seen = pools_source.snapshot()
            plan = translate(seen, settings, node_name="node-a", interface="eth0").allocations
            assert [a.service for a in plan] == [(ns, "pending")]
            writer_ = AddressWriter(api=api)
            assert writer_.apply(plan) == list(plan), writer_.last_error
        annotations = cluster.read("Service", ns, "pending")["metadata"]["annotations"]
        assert annotations["kube-vip.io/loadbalancerIPs"] == "192.0.2.65"


def test_rbac_yaml_allows_nothing_more(cluster: Cluster, agent_rbac: None) -> None:
    apiserver = cluster.apiserver
    api = KubeApi(apiserver.api_client(apiserver.token_for(AGENT_SA_USER)))
    ns = cluster.namespace()
    cluster.create(objects.service("web", [objects.port("http", 80)], namespace=ns))
    cluster.create(objects.configmap({"x": "y"}, namespace="kube-system", name="other-config"))
    denied: list[tuple[str, str, list[tuple[str, str]], dict[str, Any] | None]] = [
        ("GET", "/api/v1/namespaces/kube-system/configmaps", [], None),  # not by name
        (
            "GET",
            "/api/v1/namespaces/kube-system/configmaps",
            [("fieldSelector", "metadata.name=other-config")],
            None,
        ),
        ("GET", "/api/v1/namespaces/kube-system/configmaps/vip-configmap", [], None),  # no get
        ("GET", "/api/v1/secrets", [], None),
        ("GET", "/api/v1/pods", [], None),
        ("GET", f"/api/v1/namespaces/{ns}/services/web", [], None),  # list/watch, not get
        # patch (the allocation annotation) is allowed; replacing a whole Service is not
        ("PUT", f"/api/v1/namespaces/{ns}/services/web", [], {"spec": {"ports": []}}),
        ("GET", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/other", [], None),
        ("GET", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases", [], None),
        ("GET", "/apis/coordination.k8s.io/v1/namespaces/default/leases/vip-agent-ipam", [], None),
        ("DELETE", f"/api/v1/namespaces/{ns}/services/web", [], None),
        ("GET", f"/api/v1/namespaces/{ns}/events", [], None),
        ("DELETE", "/api/v1/nodes/whatever", [], None),
    ]
    for method, path, query, body in denied:
        with pytest.raises(ApiError) as err:
            api.request(
                method,
                path,
                query=query,
                body=body,
                content_type="application/merge-patch+json" if body else None,
            )
        assert err.value.status == 403, (method, path, err.value)
    # ... while listing the one ConfigMap by name is allowed (resourceNames + fieldSelector)
    page = api.request(
        "GET",
        "/api/v1/namespaces/kube-system/configmaps",
        query=[("fieldSelector", "metadata.name=vip-configmap")],
    )
    assert [i["metadata"]["name"] for i in page["items"]] == ["vip-configmap"]


def test_missing_verb_fails_loudly_naming_it(
    cluster: Cluster, agent_rbac: None, caplog: pytest.LogCaptureFixture
) -> None:
    apiserver = cluster.apiserver
    cluster.apply_rbac(limited_documents(drop_verb="watch", resource="services"))
    token = apiserver.token_for(LIMITED_SA_USER)
    source = source_for(apiserver, CM, token=token, sync_timeout=5)
    with caplog.at_level(logging.ERROR, logger="vip-agent.kube"), running(source):
        expected = (
            'forbidden: cannot watch services at the cluster scope (user "'
            f'{LIMITED_SA_USER}"); RBAC must allow verb "watch" on "services" in API group ""'
        )
        eventually(lambda: expected in (source.error or ""), what="watch forbidden", timeout=20)
        # the other kinds work: only the missing permission is reported
        eventually(
            lambda: all(k.error is None for k in source.kinds if k is not source.services),
            what="other kinds fine",
        )
        loud = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any(expected in m for m in loud), loud
        # listing works (list is allowed), so the last good Services are there
        assert source.services.synced


def test_missing_status_patch_fails_loudly(
    cluster: Cluster, agent_rbac: None, caplog: pytest.LogCaptureFixture
) -> None:
    apiserver = cluster.apiserver
    cluster.apply_rbac(limited_documents(drop_verb="patch", resource="services/status"))
    ns = cluster.namespace()
    cluster.create(
        objects.service(
            "lb",
            [objects.port("http", 80)],
            namespace=ns,
            type="LoadBalancer",
            loadBalancerIP="192.0.2.62",
        )
    )
    service = cluster.read("Service", ns, "lb")
    snapshot = Snapshot.build(
        services={(ns, "lb"): service},
        slices=(),
        endpoints={},
        configmaps={},
        nodes={},
        nodes_known=False,
    )
    settings = Settings()
    state = translate(snapshot, settings, node_name="node-a", interface="eth0")
    api = KubeApi(apiserver.api_client(apiserver.token_for(LIMITED_SA_USER)))
    writer = IngressWriter(api=api, node_name="node-a")

    def attempt() -> bool:
        writer.sync(snapshot=snapshot, state=state, held_vips=None)
        return results(writer, "failed") > 0

    with caplog.at_level(logging.ERROR, logger="vip-agent.writeback"):
        eventually(attempt, what="patch refused", timeout=20)
    assert "403" in (writer.last_error or "")
    assert any(
        'RBAC must allow verb "patch" on "services/status"' in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR
    )
    events = EventRecorder(api=api, node_name="node-a")
    rejection = Rejection("Service", f"{ns}/lb", "spec.loadBalancerIP", "test", Reason.BAD_ADDRESS)
    with caplog.at_level(logging.ERROR, logger="vip-agent.writeback"):
        events.record([rejection], snapshot)
    assert results(events, "created") == 1  # events are still allowed
    body = json.dumps(cluster.read("Service", ns, "lb").get("status"))
    assert "192.0.2.62" not in body

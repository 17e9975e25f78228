"""The node harness itself: what later tiers (vip-agent's DaemonSet on this node) rely on.

Each test names what it proves and prints what it measured. Pods use the busybox image
``scripts/build-kube-node`` builds (imagePullPolicy Never: nothing is ever pulled).
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from labkit.apiserver import wait_until
from labkit.kubenode import BUSYBOX_IMAGE, POD_SUBNET, KubeNode


def httpd_pod(name: str, port: int, *, host_network: bool = False) -> str:
    """A pod serving its own name on ``port`` (busybox httpd), labelled app=NAME."""
    return f"""\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  hostNetwork: {str(host_network).lower()}
  terminationGracePeriodSeconds: 1  # busybox as pid 1 ignores SIGTERM
  containers:
  - name: httpd
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: Never
    command:
    - sh
    - -c
    - mkdir -p /www && echo $POD_NAME >/www/index.html && exec httpd -f -p {port} -h /www
    env: [{{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
    readinessProbe: {{httpGet: {{port: {port}, path: /}}, periodSeconds: 1}}
"""


WEB_SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""
WEB = "---\n".join(
    [httpd_pod("web", 8080), httpd_pod("web-host", 18080, host_network=True), WEB_SERVICE]
)

STATIC = f"""\
apiVersion: v1
kind: Pod
metadata:
  name: static-sleeper
  namespace: default
  labels: {{app: static-sleeper}}
spec:
  terminationGracePeriodSeconds: 1  # busybox as pid 1 ignores SIGTERM
  containers:
  - name: sleep
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: Never
    command: ["sleep", "3600"]
"""


@pytest.fixture(scope="module")
def web(kube_node: KubeNode) -> Iterator[dict[str, Any]]:
    """The ``web`` pod, the hostNetwork ``web-host`` pod and the ``web`` Service, Ready;
    yields the two pods by name."""
    kube_node.apply(WEB)
    pods = kube_node.wait_pod_ready("app in (web, web-host)", count=2, timeout=90)
    yield {p["metadata"]["name"]: p for p in pods}
    kube_node.kubectl("delete", "-f", "-", "--wait=false", input=WEB, check=False)


def test_node_becomes_ready(kube_node: KubeNode, report: list[str]) -> None:
    node = kube_node.node_object()
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.20.2"
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://1.6")
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == kube_node.address
    assert kube_node.ready_seconds is not None and kube_node.start_seconds is not None
    report.append(
        f"Node Ready {kube_node.ready_seconds:.1f} s after kubelet started; "
        f"whole node up in {kube_node.start_seconds:.1f} s"
    )


def test_host_network_and_pod_network_pods_run(kube_node: KubeNode, web: dict[str, Any]) -> None:
    assert web["web-host"]["status"]["podIP"] == kube_node.address
    pod_ip = web["web"]["status"]["podIP"]
    assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(POD_SUBNET)
    # The hostNetwork pod listens on the node's address: a client on the switch reaches it.
    got = kube_node.run_in_client("curl", "-sS", "-m", "5", f"http://{kube_node.address}:18080/")
    assert got.stdout.strip() == "web-host"
    got = kube_node.run_in_node("curl", "-sS", "-m", "5", f"http://{pod_ip}:8080/")
    assert got.stdout.strip() == "web"


def test_cluster_ip_service_routes_through_kube_proxy(
    kube_node: KubeNode, web: dict[str, Any], report: list[str]
) -> None:
    cluster_ip = kube_node.kubectl_json("get", "service", "web")["spec"]["clusterIP"]

    def answers() -> bool:
        done = kube_node.run_in_node(
            "curl", "-sS", "-m", "2", f"http://{cluster_ip}/", check=False, timeout=10
        )
        return done.stdout.strip() == "web"

    started = time.monotonic()
    wait_until(answers, timeout=30, interval=0.25, what=f"{cluster_ip}:80 answering")
    report.append(
        f"ClusterIP answered {time.monotonic() - started:.1f} s after the pods were Ready"
    )
    rules = kube_node.run_in_node("iptables-save", "-t", "nat").stdout
    assert f"-d {cluster_ip}/32" in rules and "KUBE-SVC-" in rules


READ_PODS = """\
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: default-reads-pods
  namespace: default
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects: [{kind: ServiceAccount, name: default, namespace: default}]
"""


def test_pods_get_a_working_in_cluster_service_account(
    kube_node: KubeNode, web: dict[str, Any]
) -> None:
    kube_node.apply(READ_PODS)
    secrets = "/var/run/secrets/kubernetes.io/serviceaccount"
    # What in-cluster configuration reads: the Service's address from the environment,
    # the token, and the CA (busybox's wget checks no certificate; the CA is compared).
    script = (
        f"cat {secrets}/ca.crt >&2; wget -q -O - --no-check-certificate"
        f' --header "Authorization: Bearer $(cat {secrets}/token)"'
        " https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces/default/pods/web"
    )
    ca = kube_node.ca_file.read_text(encoding="utf-8")
    for pod in ("web", "web-host"):
        # kubectl exec: the API server reaches kubelet on the node's InternalIP.
        done = kube_node.kubectl("exec", pod, "--", "sh", "-c", script)
        # Through the kubernetes Service (kube-proxy) to the API server, authenticated
        # as system:serviceaccount:default:default, which the RoleBinding lets read pods.
        assert json.loads(done.stdout)["metadata"]["name"] == "web"
        assert done.stderr.strip() == ca.strip()


def test_pretty_printed_gets_do_not_crash_the_apiserver(kube_node: KubeNode) -> None:
    """kube-apiserver 1.20 built with Go >= 1.18 and reflect2 1.0.1 panicked on these and
    dropped the connection; here curl asks, from the client namespace."""
    for path in ("/api/v1/namespaces/default?pretty=true", "/api/v1/namespaces/kube-system"):
        status, body = kube_node.pretty_get(path)  # curl's User-Agent: pretty either way
        assert status == 200, body
        assert body.startswith('{\n  "kind": "Namespace",'), body[:80]
    assert kube_node.alive("kube-apiserver")
    assert kube_node.pretty_get("/readyz") == (200, "ok")
    assert "reflect2" not in kube_node.log("kube-apiserver").read_text(encoding="utf-8")


def test_static_pod_from_the_manifest_dir_runs(kube_node: KubeNode, report: list[str]) -> None:
    manifest = kube_node.manifest_dir / "static-sleeper.yaml"
    manifest.write_text(STATIC, encoding="utf-8")
    started = time.monotonic()
    try:
        (mirror,) = kube_node.wait_pod_ready("app=static-sleeper", timeout=60)
        report.append(f"static pod Ready {time.monotonic() - started:.1f} s after its manifest")
        assert mirror["metadata"]["name"] == f"static-sleeper-{kube_node.name}"
        assert mirror["metadata"]["annotations"]["kubernetes.io/config.source"] == "file"
    finally:
        manifest.unlink()

    def gone() -> bool:
        return not kube_node.kubectl_json("get", "pods", "-l", "app=static-sleeper")["items"]

    wait_until(gone, timeout=60, interval=0.5, what="the mirror pod gone with its manifest")

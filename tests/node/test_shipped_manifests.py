"""The shipped manifests (container/*.yaml) under a real kubelet, with the real image.

The files are applied as a user would apply them, with only what a user must change
changed. Each change is a named :class:`Substitution` below, documented with why a user
makes it too, and each must match the shipped text exactly as often as expected, so an
edit of a manifest cannot turn one silently into a no-op. Nothing else is edited: the
interface, for one, needs no change, as the agent finds it from the node's address
(``status.hostIP`` through the downward API).

The node is :class:`labkit.kubenode.KubeNode` (one for the session); the image is the one
``scripts/build-image`` archives, imported into the node's containerd and tagged under the
registry name the substituted manifests use. The workloads the VIPs lead to (an httpd
behind a LoadBalancer Service, a PROXY-protocol server behind the vip-configmap's PROXY
entry) are the test's own, as they would be the user's.

Each test prints what it measured: the DaemonSet pod Ready after the apply, the client's
longest outage during a rolling update, the time to release and take back the VIPs.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
import textwrap
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from labkit.apiserver import wait_until
from labkit.kubenode import CONTROL_PLANE_VIP, KubeNode, timestamp
from tests.conftest import ROOT
from tests.node.test_node_harness import httpd_pod

CONTAINER = ROOT / "container"
BUILD_IMAGE = ROOT / "scripts" / "build-image"
NAMESPACE = "kube-system"
DAEMONSET_PODS = "app.kubernetes.io/name=vip-agent,pod-template-generation"
STATIC_PODS = "app.kubernetes.io/name=vip-agent,tier=control-plane"


def version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


# The registry name the manifests are pointed at, as a user points them at their registry;
# the rolling update moves the DaemonSet to a second tag of the same image.
IMAGE = f"vip-agent.invalid/vip-agent:{version()}"
ROLLED_IMAGE = f"vip-agent.invalid/vip-agent:{version()}-rolled"

# The lab's VIPs: 198.51.100.0/24 is the node's segment (the node .11, the client .12).
VIP_NETWORK = "198.51.100."
LB_VIP = "198.51.100.60"
PROXY_VIP = "198.51.100.53"
PROXY_PORT = 80
LB_PORT = 80
ROLLING_GAP_LIMIT = 30.0
"""Seconds a client on the segment may go unanswered while the one node's DaemonSet pod is
replaced, less the time kubelet keeps the old pod's object after its sandbox stopped (see
below). Not the 2 s hoped for: kubelet 1.20 deletes a terminated pod's object only at its
status manager's next 10 s batch sync once the containers are removed (kubernetes issue
42776), so the next pod is created 2-14 s after the old agent exited (it exits within a
second of SIGTERM, releasing its VIPs at once; the grace period plays no part).  On more
than one node a peer takes the VIPs over at the old agent's priority-0 advert instead;
one node has nobody to hand over to."""
KUBELET_SANDBOX_WAIT = 75.0
"""Seconds kubelet 1.20 may keep a stopped pod's sandbox, and so its object: at times the
sandbox goes only at kubelet's next container garbage collection, once a minute (seen in
CI: containerd's RemovePodSandbox 60 s after the previous collection's, the object gone 10
s later, the agent's container stopped 1.2 s after SIGTERM). Not the agent's doing; what
the agent does is bounded by AGENT_EXIT_LIMIT and the gap less this wait."""
AGENT_EXIT_LIMIT = 5.0
"""Seconds from containerd's SIGTERM to the old agent's container exiting (containerd's own
log): the agent stops keepalived and haproxy and exits, well inside the grace period."""
TAKEOVER_LIMIT = 8.0
"""Seconds from the next pod's container running to every VIP back on the interface: the
agent's start (~1.5 s here) and keepalived's Master_Down_Interval (3 x advert_int + skew,
~3.7 s with the default advert_int of 1 s), which a new instance waits out in BACKUP so
it cannot become a second master."""


@dataclass(frozen=True)
class Substitution:
    """One edit a user makes to a shipped manifest before applying it."""

    file: str
    old: str
    new: str
    count: int
    why: str

    def apply(self, text: str) -> str:
        found = text.count(self.old)
        assert found == self.count, (
            f"container/{self.file}: {self.old!r} found {found} times, expected {self.count}; "
            f"the manifest changed, so must this substitution ({self.why})"
        )
        return text.replace(self.old, self.new)


def substitutions(node: KubeNode) -> list[Substitution]:
    """Every change the test makes to the shipped files: what a user must change too."""
    shipped_image = f"localhost/vip-agent:{version()}"
    return [
        Substitution(
            "daemonset.yaml",
            f"image: {shipped_image}",
            f"image: {IMAGE}",
            1,
            "the image as your registry (or your nodes' image store) names it",
        ),
        Substitution(
            "static-pod.yaml",
            f"image: {shipped_image}",
            f"image: {IMAGE}",
            1,
            "the image as your nodes' image store names it (a static pod pulls before any "
            "cluster credentials exist)",
        ),
        Substitution(
            "vip-configmap.yaml",
            "192.0.2.5",
            f"{VIP_NETWORK}5",
            5,
            "the VIPs: free addresses on your nodes' segment (the IPv4 examples are "
            "RFC 5737 192.0.2.50-58; the IPv6 example 2001:db8::50 stays)",
        ),
        Substitution(
            "static-pod.yaml",
            'value: "192.0.2.10"',
            f'value: "{CONTROL_PLANE_VIP}"',
            1,
            "the control-plane VIP (kubeadm's --control-plane-endpoint); it must be in "
            "the apiserver certificate's SANs",
        ),
        Substitution(
            "static-pod.yaml",
            'value: "cp-1=198.51.100.11,cp-2=198.51.100.12,cp-3=198.51.100.13"',
            f'value: "{node.name}={node.address}"',
            1,
            "the control-plane nodes' names and addresses (the lab has one)",
        ),
        Substitution(
            "static-pod.yaml",
            'value: "198.51.100.11,198.51.100.12,198.51.100.13"',
            f'value: "{node.address}"',
            1,
            "the control-plane nodes' addresses, the VRRP unicast peers (a node leaves "
            "its own out)",
        ),
    ]


def manifest(name: str, node: KubeNode) -> str:
    """container/NAME with its substitutions made (each asserted to match)."""
    text = (CONTAINER / name).read_text(encoding="utf-8")
    for sub in substitutions(node):
        if sub.file == name:
            text = sub.apply(text)
    return text


def configmap_vips(node: KubeNode) -> set[str]:
    """The VIPs of the substituted vip-configmap (IPv6 keys spell ':' as '-')."""
    data = yaml.safe_load(manifest("vip-configmap.yaml", node))["data"]
    return {str(ipaddress.ip_address(key.replace("-", ":"))) for key in data}


def proxy_entry(node: KubeNode) -> tuple[str, str]:
    """The vip-configmap's PROXY entry: (VIP, NAMESPACE/SERVICE)."""
    data = yaml.safe_load(manifest("vip-configmap.yaml", node))["data"]
    [(vip, target)] = [(k, v) for k, v in data.items() if str(v).endswith(":PROXY")]
    return vip, target.removesuffix(":PROXY")


# --- the workloads behind the VIPs (the user's, not the product's) -------------------------

# A server that speaks the PROXY protocol (what haproxy's send-proxy sends) and answers
# with the client address the header carried: haproxy from the agent's own image.
PROXY_SERVER_CONFIG = textwrap.dedent(
    """\
    defaults
      mode http
      timeout connect 2s
      timeout client 5s
      timeout server 5s
    frontend echo
      bind :8080 accept-proxy
      http-request return status 200 content-type text/plain lf-string "proxied %[src]\\n"
    """
)


def proxy_workload(namespace: str, service: str) -> str:
    script = "printf '%s' \"$CONFIG\" >/tmp/haproxy.cfg && exec haproxy -db -f /tmp/haproxy.cfg"
    return f"""\
apiVersion: v1
kind: Namespace
metadata: {{name: {namespace}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: {service}
  namespace: {namespace}
  labels: {{app: {service}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: {IMAGE}
    imagePullPolicy: Never
    command: ["sh", "-c", {json.dumps(script)}]
    env: [{{name: CONFIG, value: {json.dumps(PROXY_SERVER_CONFIG)}}}]
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata:
  name: {service}
  namespace: {namespace}
spec:
  selector: {{app: {service}}}
  ports: [{{name: http, port: {PROXY_PORT}, targetPort: 8080}}]
"""


LB_SERVICE = f"""\
apiVersion: v1
kind: Service
metadata:
  name: lb-web
spec:
  type: LoadBalancer
  loadBalancerIP: {LB_VIP}
  selector: {{app: lb-web}}
  ports: [{{port: {LB_PORT}, targetPort: 8080}}]
"""


# --- looking at the node ---------------------------------------------------------------


def addresses_on_eth0(node: KubeNode) -> set[str]:
    done = node.run_in_node("ip", "-j", "addr", "show", "dev", "eth0", timeout=10)
    [link] = json.loads(done.stdout)
    return {str(ipaddress.ip_address(a["local"])) for a in link["addr_info"]}


def daemonset_pods(node: KubeNode) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = node.kubectl_json(
        "get", "pods", "-n", NAMESPACE, "-l", DAEMONSET_PODS
    )["items"]
    return items


def http_get(node: KubeNode, url: str) -> str:
    done = node.run_in_client("curl", "-sS", "-m", "3", url, check=False, timeout=10)
    return done.stdout.strip()


def answering(node: KubeNode, vips: set[str]) -> set[str]:
    """Those of ``vips`` (IPv4) the node answers for from the client: a TCP connection to
    a closed port is refused at once (a reset from the holder), not timed out. The
    client has no IPv6 route to 2001:db8::/32, so IPv6 VIPs are left out."""
    answered = set()
    for vip in sorted(vips):
        if ipaddress.ip_address(vip).version == 4:
            asked = time.monotonic()
            done = node.run_in_client(
                "curl", "-sS", "-m", "2", f"http://{vip}:9/", check=False, timeout=10
            )
            # 7: could not connect (28 would be the timeout of an address nobody holds;
            # an unanswered ARP fails later than the 1 s allowed here)
            if done.returncode == 7 and time.monotonic() - asked < 1.0:
                answered.add(vip)
    return answered


def wait_held(node: KubeNode, vips: set[str], *, timeout: float) -> float:
    """Seconds until every one of ``vips`` is on the node's eth0 (bounded)."""
    started = time.monotonic()
    wait_until(
        lambda: vips <= addresses_on_eth0(node),
        timeout=timeout,
        interval=0.1,
        what=f"{sorted(vips)} on eth0",
    )
    return time.monotonic() - started


def wait_released(node: KubeNode, vips: set[str], *, timeout: float) -> float:
    """Seconds until none of ``vips`` is on the node's eth0 (bounded)."""
    started = time.monotonic()
    wait_until(
        lambda: not vips & addresses_on_eth0(node),
        timeout=timeout,
        interval=0.1,
        what=f"{sorted(vips)} gone from eth0",
    )
    return time.monotonic() - started


def follow_handover(
    node: KubeNode, old_name: str, vips: set[str], *, image: str, timeout: float
) -> tuple[dict[str, float], dict[str, Any]]:
    """Watch one DaemonSet pod hand over to the next (bounded): seconds from now to each
    step seen (VIPs released, old pod gone, next pod created, its container running, it
    Ready, the VIPs held again), and the next pod. Polls ~5 times a second."""
    started = time.monotonic()
    seen: dict[str, float] = {}

    def mark(step: str, reached: bool) -> None:
        if reached and step not in seen:
            seen[step] = time.monotonic() - started

    def done() -> dict[str, Any] | None:
        on_eth0 = addresses_on_eth0(node)
        mark("VIPs released", not vips & on_eth0)
        pods = daemonset_pods(node)
        mark("old pod gone", all(p["metadata"]["name"] != old_name for p in pods))
        new = [p for p in pods if p["metadata"]["name"] != old_name]
        if not new:
            return None
        [pod] = new
        assert pod["spec"]["containers"][0]["image"] == image
        mark("next pod created", True)
        statuses = pod["status"].get("containerStatuses") or [{}]
        mark("its container running", "running" in statuses[0].get("state", {}))
        ready = any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod["status"].get("conditions", [])
        )
        mark("it Ready", ready)
        mark("VIPs held again", "VIPs released" in seen and vips <= on_eth0)
        return pod if ready and "VIPs held again" in seen and "old pod gone" in seen else None

    pod = wait_until(done, timeout=timeout, interval=0.1, what=f"{old_name} handed over")
    return dict(sorted(seen.items(), key=lambda kv: kv[1])), pod


@dataclass(frozen=True)
class Stopped:
    container: str
    seconds: float
    """From containerd's SIGTERM to the container's exit."""


def container_stop(node: KubeNode, container_id: str) -> Stopped:
    """How long ``container_id`` (``containerd://ID``) took to stop, from containerd's log:
    its ``StopContainer ... with timeout`` line to its ``StopContainer ... returns``."""
    cid = container_id.removeprefix("containerd://")
    text = node.log("containerd").read_text(errors="replace")
    marks = {}
    for label, tail in (("sent", "with timeout"), ("done", "returns successfully")):
        pattern = rf'time="([^"]+)" level=info msg="StopContainer for \\"{cid}\\" {tail}'
        found = re.search(pattern, text)
        assert found, f"containerd logged no {label} StopContainer for {cid}"
        marks[label] = timestamp(found.group(1))  # RFC 3339, in nanoseconds
    return Stopped(cid, marks["done"] - marks["sent"])


def timeline(steps: dict[str, float]) -> str:
    return ", ".join(f"{step} {t:.1f} s" for step, t in steps.items())


# A client on the segment polling a URL every ~20 ms until told to stop or for at most
# LIMIT seconds; one line per attempt: monotonic time, 1 or 0.
POLLER = textwrap.dedent(
    """\
    import socket, sys, time
    host, port, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    request = b"GET / HTTP/1.0\\r\\n\\r\\n"
    end = time.monotonic() + limit
    out = sys.stdout
    while time.monotonic() < end:
        ok = 0
        try:
            with socket.create_connection((host, port), timeout=0.3) as s:
                s.settimeout(0.3)
                s.sendall(request)
                ok = int(s.recv(64).startswith(b"HTTP/1."))
        except OSError:
            pass
        out.write(f"{time.monotonic():.3f} {ok}\\n")
        out.flush()
        if sys.stdin in __import__("select").select([sys.stdin], [], [], 0.02)[0]:
            break
    """
)


class Poller:
    """POLLER in the client namespace against HOST:PORT, stopped by closing its stdin."""

    def __init__(self, node: KubeNode, host: str, port: int, *, limit: float) -> None:
        self.proc = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{node.client_ns}",
                sys.executable,
                "-c",
                POLLER,
                host,
                str(port),
                str(limit),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> list[tuple[float, bool]]:
        out, _ = self.proc.communicate(input="stop\n", timeout=30)
        return [(float(t), ok == "1") for t, ok in (line.split() for line in out.splitlines())]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def longest_outage(samples: list[tuple[float, bool]]) -> float:
    """Seconds from the last answer before the longest run of failures to the first answer
    after it (a run still failing at the end counts up to the last attempt)."""
    worst = 0.0
    last_ok: float | None = None
    failing = False
    for when, ok in samples:
        if ok:
            if failing and last_ok is not None:
                worst = max(worst, when - last_ok)
            last_ok, failing = when, False
        else:
            failing = True
    if failing and last_ok is not None:
        worst = max(worst, samples[-1][0] - last_ok)
    return worst


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image(kube_node: KubeNode) -> str:
    """The image scripts/build-image archives (built or found in its cache), imported into
    the node's containerd under IMAGE and ROLLED_IMAGE."""
    built = subprocess.run(
        [str(BUILD_IMAGE)], capture_output=True, text=True, timeout=1800, check=False
    )
    assert built.returncode == 0, built.stderr[-4000:]
    archive = Path(built.stdout.strip())
    kube_node.import_image(archive)
    for name in (IMAGE, ROLLED_IMAGE):
        kube_node.tag_image(f"localhost/vip-agent:{version()}", name)
    assert {IMAGE, ROLLED_IMAGE} <= kube_node.images()
    return IMAGE


@pytest.fixture(scope="module")
def agent(kube_node: KubeNode, image: str) -> Iterator[dict[str, float]]:
    """The workloads, then rbac + vip-configmap + daemonset applied; yields measurements
    once the DaemonSet's pod is Ready and holds every VIP. Deletes all of it after."""
    started = time.monotonic()
    vip, target = proxy_entry(kube_node)
    assert vip == PROXY_VIP, "the vip-configmap's PROXY entry moved"
    namespace, service = target.split("/")
    workloads = "---\n".join([proxy_workload(namespace, service), httpd_pod("lb-web", 8080)])
    workloads += "---\n" + LB_SERVICE
    kube_node.apply(workloads)
    kube_node.wait_pod_ready(f"app={service}", namespace=namespace, timeout=90)
    kube_node.wait_pod_ready("app=lb-web", timeout=90)
    shipped = [manifest(name, kube_node) for name in ("rbac.yaml", "vip-configmap.yaml")]
    kube_node.apply("---\n".join(shipped))
    applied = time.monotonic()
    kube_node.apply(manifest("daemonset.yaml", kube_node))
    kube_node.wait_pod_ready(DAEMONSET_PODS, namespace=NAMESPACE, timeout=120)
    ready = time.monotonic() - applied
    held = wait_held(kube_node, configmap_vips(kube_node) | {LB_VIP}, timeout=30)
    try:
        yield {"ready": ready, "held": held, "started": started}
    finally:
        # What the last test has not removed; the node serves the rest of the session.
        everything = "---\n".join([manifest("daemonset.yaml", kube_node), *shipped, workloads])
        kube_node.kubectl(
            "delete", "-f", "-", "--ignore-not-found", "--wait=false",
            input=everything, check=False, timeout=90,
        )  # fmt: skip


# --- the tests -------------------------------------------------------------------------


def test_daemonset_pod_becomes_ready_and_holds_every_vip(
    kube_node: KubeNode, agent: dict[str, float], report: list[str]
) -> None:
    report.append(
        f"DaemonSet pod Ready {agent['ready']:.1f} s after the apply; every VIP on eth0 "
        f"{agent['held']:.1f} s after that"
    )
    vips = configmap_vips(kube_node) | {LB_VIP}
    assert vips <= addresses_on_eth0(kube_node)
    [pod] = daemonset_pods(kube_node)
    assert pod["spec"]["containers"][0]["image"] == IMAGE
    # kubectl exec: apiserver -> kubelet on the node's InternalIP -> containerd.
    done = kube_node.kubectl(
        "exec", "-n", NAMESPACE, pod["metadata"]["name"], "--", "vip-agent", "status", "--json"
    )
    status = json.loads(done.stdout)
    assert status["running"] is True
    assert vips <= {str(ipaddress.ip_address(v)) for v in status["held_vips"]}, status


def test_traffic_reaches_pods_through_proxy_and_load_balancer_vips(
    kube_node: KubeNode, agent: dict[str, float]
) -> None:
    # PROXY mode: haproxy in the agent's pod, send-proxy to the pod, which answers with
    # the client address the PROXY header carried.
    got = wait_until(
        lambda: http_get(kube_node, f"http://{PROXY_VIP}:{PROXY_PORT}/"),
        timeout=30,
        interval=0.5,
        what=f"{PROXY_VIP}:{PROXY_PORT} answering",
    )
    assert got == f"proxied {kube_node.client_address}"
    # LoadBalancer: the agent announces the VIP and writes it to the Service's status,
    # from which kube-proxy makes its forwarding rules.
    service = kube_node.kubectl_json("get", "service", "lb-web")
    assert service["status"]["loadBalancer"]["ingress"] == [{"ip": LB_VIP}]
    got = wait_until(
        lambda: http_get(kube_node, f"http://{LB_VIP}:{LB_PORT}/"),
        timeout=30,
        interval=0.5,
        what=f"{LB_VIP}:{LB_PORT} answering",
    )
    assert got == "lb-web"


def test_deleting_the_pod_releases_the_vips_and_the_next_pod_takes_them(
    kube_node: KubeNode, agent: dict[str, float], report: list[str]
) -> None:
    vips = configmap_vips(kube_node) | {LB_VIP}
    [old] = daemonset_pods(kube_node)
    old_name = old["metadata"]["name"]
    image = old["spec"]["containers"][0]["image"]
    kube_node.kubectl("delete", "pod", "-n", NAMESPACE, old_name, "--wait=false")
    # keepalived, stopped by the agent on SIGTERM, removes its addresses: none may stay
    # behind for the next pod (or another node) to collide with; the DaemonSet's next pod
    # takes them again with no action taken.
    steps, _ = follow_handover(kube_node, old_name, vips, image=image, timeout=120)
    report.append(f"pod deleted: {timeline(steps)}")
    assert steps["VIPs released"] < 35, steps  # within the grace period
    assert steps["VIPs held again"] - steps["its container running"] < TAKEOVER_LIMIT, steps
    ipv4 = {v for v in vips if ipaddress.ip_address(v).version == 4}
    assert answering(kube_node, ipv4) == ipv4
    assert http_get(kube_node, f"http://{PROXY_VIP}:{PROXY_PORT}/").startswith("proxied ")


def test_rolling_update_keeps_the_outage_short(
    kube_node: KubeNode, agent: dict[str, float], report: list[str]
) -> None:
    vips = configmap_vips(kube_node) | {LB_VIP}
    pollers = {
        f"{PROXY_VIP} (PROXY, haproxy in the agent's pod)": Poller(
            kube_node, PROXY_VIP, PROXY_PORT, limit=180
        ),
        f"{LB_VIP} (LoadBalancer, kube-proxy)": Poller(kube_node, LB_VIP, LB_PORT, limit=180),
    }
    try:
        time.sleep(1.0)
        [old] = daemonset_pods(kube_node)
        old_container = old["status"]["containerStatuses"][0]["containerID"]
        kube_node.kubectl(
            "set", "image", "-n", NAMESPACE, "daemonset/vip-agent", f"vip-agent={ROLLED_IMAGE}"
        )
        steps, _ = follow_handover(
            kube_node, old["metadata"]["name"], vips, image=ROLLED_IMAGE, timeout=120
        )
        # every VIP answers again, with no action taken
        for url in (f"http://{PROXY_VIP}:{PROXY_PORT}/", f"http://{LB_VIP}:{LB_PORT}/"):
            wait_until(lambda u=url: http_get(kube_node, u), timeout=30, interval=0.2, what=url)
        ipv4 = {v for v in vips if ipaddress.ip_address(v).version == 4}
        assert answering(kube_node, ipv4) == ipv4
        time.sleep(1.0)
        samples = {name: poller.stop() for name, poller in pollers.items()}
    finally:
        for poller in pollers.values():
            poller.kill()
    # The LoadBalancer VIP keeps answering a client whose ARP entry for it is still fresh:
    # kube-proxy's DNAT in PREROUTING matches the destination whether or not the address
    # is on the interface at that moment. A client that must resolve it first waits
    # until "VIPs held again". The PROXY VIP needs the agent's haproxy: its outage is
    # the whole hand-over.
    gaps = {name: longest_outage(s) for name, s in samples.items()}
    for name, s in samples.items():
        assert len(s) > 100, f"{name}: only {len(s)} attempts"
        assert s[-1][1], f"{name} does not answer at the end"
    stopped = container_stop(kube_node, old_container)
    # what kubelet kept the old pod's object for after its sandbox was stopped: from the
    # old agent's exit to the pod's object gone, less the status manager's 10 s batch
    held = max(0.0, steps["old pod gone"] - steps["VIPs released"] - stopped.seconds - 10.0)
    report.append(
        f"rolling update to a new tag: {timeline(steps)}; old agent exited {stopped.seconds:.1f}"
        f" s after SIGTERM; "
        + "; ".join(f"{name}: longest outage {gap:.2f} s" for name, gap in gaps.items())
        + (f"; kubelet kept the stopped pod {held:.1f} s more" if held else "")
    )
    assert stopped.seconds < AGENT_EXIT_LIMIT, stopped
    assert held < KUBELET_SANDBOX_WAIT, steps
    assert max(gaps.values()) - held < ROLLING_GAP_LIMIT, (gaps, held)
    assert steps["VIPs held again"] - steps["its container running"] < TAKEOVER_LIMIT, steps


def through_vip(node: KubeNode, server: str) -> subprocess.CompletedProcess[str]:
    """``kubectl --server SERVER get nodes -o name`` from a machine on the segment, as the
    administrator; the apiserver's certificate covers the VIP, so TLS verification stays
    on."""
    kubectl = [str(node.bin / "kubectl"), f"--kubeconfig={node.kubeconfig}"]
    return node.run_in_client(
        *kubectl, f"--server={server}", "--request-timeout=5s", "get", "nodes", "-o", "name",
        check=False, timeout=20,
    )  # fmt: skip


def https_through_vip(node: KubeNode, server: str) -> subprocess.CompletedProcess[str]:
    """``curl SERVER/readyz`` from the client, TLS verified: exit 7 while nothing listens
    on the VIP's port, another failure while haproxy listens but has no server to hand
    the connection to."""
    return node.run_in_client(
        "curl", "-sS", "-m", "10", "--noproxy", "*", "--cacert", str(node.ca_file),
        f"{server}/readyz", check=False, timeout=20,
    )  # fmt: skip


def test_static_pod_brings_up_the_control_plane_vip(
    kube_node: KubeNode, agent: dict[str, float], report: list[str]
) -> None:
    """The static pod on a control-plane node that also runs the DaemonSet's pod (its
    tolerations put it there), written as on the first control-plane node before
    ``kubeadm init``: the node's kube-apiserver is stopped first, so the control-plane VIP
    must come up with haproxy from the manifest alone (static mode: no API access needed)
    while nothing can answer through it; once the apiserver starts, ``kubectl`` through
    the VIP works with no action taken. The apiserver is back, and the node's daemons
    reconnected to it, before the test ends, whatever happens."""
    server = f"https://{CONTROL_PLANE_VIP}:8443"
    path = kube_node.manifest_dir / "vip-agent.yaml"
    kube_node.stop_apiserver()
    since = time.time()
    try:
        path.write_text(manifest("static-pod.yaml", kube_node), encoding="utf-8")
        written = time.monotonic()
        held = wait_held(kube_node, {CONTROL_PLANE_VIP}, timeout=60)

        def accepted() -> subprocess.CompletedProcess[str] | None:
            done = https_through_vip(kube_node, server)
            return done if done.returncode != 7 else None

        # haproxy listens on the VIP (the connection is accepted, not refused) but has no
        # apiserver to hand it to: nothing answers through the VIP yet.
        refused = wait_until(
            accepted, timeout=30, interval=0.2, what=f"haproxy listening on {server}"
        )
        listening = time.monotonic() - written
        assert refused.returncode not in (0, 28), (refused.returncode, refused.stderr)
        assert not kube_node.alive("kube-apiserver")
        # The DaemonSet's pod beside it keeps every VIP through the API outage.
        assert configmap_vips(kube_node) | {LB_VIP} <= addresses_on_eth0(kube_node)
        why = (refused.stderr.strip().splitlines() or ["no message"])[-1]

        restarted = time.monotonic()
        since = time.time()
        apiserver_ready = kube_node.start_apiserver()
        got = wait_until(
            lambda: through_vip(kube_node, server).stdout.strip(),
            timeout=60,
            interval=0.5,
            what=f"kubectl via {server}",
        )
        via_vip = time.monotonic() - restarted
        assert got == f"node/{kube_node.name}"
        reconnected = kube_node.wait_reconnected(since, timeout=90)
        # The DaemonSet's pod on the same node, not Ready while its cluster source failed
        # (by design), is Ready again once its watches reconnect, its VIPs still held.
        assert configmap_vips(kube_node) | {LB_VIP} <= addresses_on_eth0(kube_node)
        kube_node.wait_pod_ready(DAEMONSET_PODS, namespace=NAMESPACE, timeout=90)
        daemonset_ready = time.monotonic() - restarted
        # kubelet creates the static pod's mirror at the pod's next sync once the API
        # answers: its periodic resync (--sync-frequency 1 min, jittered up to 1.5 min).
        (mirror,) = kube_node.wait_pod_ready(STATIC_PODS, namespace=NAMESPACE, timeout=150)
        mirrored = time.monotonic() - restarted
        assert mirror["spec"]["containers"][0]["image"] == IMAGE
        report.append(
            f"static pod, apiserver stopped: control-plane VIP on eth0 {held:.1f} s after "
            f"the manifest was written, haproxy accepting on it {listening:.1f} s after it "
            f"(nothing behind it: curl exit {refused.returncode}, {why}); apiserver "
            f"started: /readyz {apiserver_ready:.1f} s, kubectl --server {server} works "
            f"{via_vip:.1f} s after the start, node reconnected {reconnected:.1f} s later, "
            f"DaemonSet pod Ready again {daemonset_ready:.1f} s, the static pod's mirror "
            f"Ready {mirrored:.1f} s after the start"
        )
    finally:
        path.unlink(missing_ok=True)
        # Whatever failed above, the node serves the rest of the session.
        if not kube_node.alive("kube-apiserver"):
            kube_node.start_apiserver()
        kube_node.wait_reconnected(since, timeout=90)
    wait_released(kube_node, {CONTROL_PLANE_VIP}, timeout=40)
    wait_until(
        lambda: (
            not kube_node.kubectl_json("get", "pods", "-n", NAMESPACE, "-l", STATIC_PODS)["items"]
        ),
        timeout=60,
        interval=0.5,
        what="the static pod's mirror gone",
    )


def test_deleting_the_daemonset_releases_every_vip(
    kube_node: KubeNode, agent: dict[str, float], report: list[str]
) -> None:
    """Uninstalling leaves no address behind on the node (last: it removes the agent)."""
    vips = configmap_vips(kube_node) | {LB_VIP}
    assert vips <= addresses_on_eth0(kube_node)
    kube_node.kubectl(
        "delete", "-f", "-", "--wait=false", input=manifest("daemonset.yaml", kube_node)
    )
    released = wait_released(kube_node, vips, timeout=35)
    wait_until(lambda: not daemonset_pods(kube_node), timeout=60, interval=0.5, what="no agent pod")
    assert not vips & addresses_on_eth0(kube_node)
    report.append(
        f"DaemonSet deleted: every VIP off the interface {released:.1f} s later; this file's "
        f"tests took {time.monotonic() - agent['started']:.0f} s on the running node"
    )

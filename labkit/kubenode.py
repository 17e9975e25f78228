"""A real one-node Kubernetes 1.20 cluster in network namespaces, for tests.

    client ns  eth0 198.51.100.12 ─┐
                                   ├─ br0 (switch ns)
    node ns    eth0 198.51.100.11 ─┘
               etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
               containerd (runc, bridge CNI: pods in 203.0.113.128/25), kubelet, kube-proxy

Everything the node runs lives in the node's network namespace, so hostNetwork pods,
kube-proxy's and kubelet's iptables rules and their per-namespace sysctls stay there. The
client namespace stands for a machine on the same L2 segment: it reaches the node's
address, and VIPs in 192.0.2.0/24 on-link. Only documentation addresses are used, and
nothing is added to the host's own network namespace.

The node's daemons also share a private mount namespace (:attr:`KubeNode.mount_ns`, pinned
by a bind mount in the lab dir): there ``/run``, ``/var/lib`` and ``/var/log`` are the lab
dir's ``run``, ``var-lib`` and ``log``, so containerd's netns pins and shim sockets, the CNI
result cache, pod logs and anything a default path would have put on the host stay in the
lab dir, and ``/sys`` is a sysfs of the node's network namespace (as ``ip netns exec`` does)
with the host's cgroup mounts bound back under it. Pod cgroups go under a cgroup root of
their own (``/vip-agent-PREFIX`` in every cgroup hierarchy; ``kubepods`` below it).

What leaks out and is put back: kubelet sets host-wide kernel tunables (its
``setupKernelTunables``: vm.overcommit_memory, vm.panic_on_oom, kernel.panic,
kernel.panic_on_oops, kernel.keys.root_max*). :class:`KubeNode` records them before kubelet
starts and writes the recorded values back at teardown. kube-proxy is told to leave the
host-wide conntrack table size alone (``conntrack.maxPerCore: 0``).

Binaries come from ``scripts/build-kube-node`` (cached in :func:`labkit.apiserver.kube_dir`),
the pause and busybox images too. Authentication is by static bearer tokens, one per
component, named as the users the bootstrap RBAC policy binds (system:node:NAME,
system:kube-proxy, ...). The API server's certificate is made here (openssl: a CA and the
serving certificate it signs, as kubeadm makes them) for the node's address, the
``kubernetes`` Service's ClusterIP, loopback and :data:`CONTROL_PLANE_VIP`, kubeadm's
``--control-plane-endpoint``, so clients may reach it through a VIP too (kube-apiserver's
own self-signed one covers no extra address); that CA is what everyone trusts, and the
controller-manager hands it to pods with their ServiceAccount tokens, so in-cluster
configuration works as on a real cluster.

Teardown (also after a failed start) stops every daemon by pid, kills what containerd's
shims left in the node's cgroups (by pid, read from those cgroups), unmounts what the node
mounted, deletes the namespaces, restores the kernel tunables and removes the cgroups. Logs
are files in the lab dir, which is kept when ``close(keep=True)`` or the ``with`` block
raised. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from labkit.apiserver import (
    Process,
    etcd_argv,
    kube_dir,
    wait_until,
    write_kubeconfig,
    write_service_account_key,
    write_token_file,
)
from labkit.netlab import Lab, ip

BUILD_SCRIPT = "scripts/build-kube-node"
PROGRAMS = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
)
HOST_COMMANDS = (
    "etcd",
    "containerd",
    "containerd-shim-runc-v2",
    "runc",
    "ctr",
    "iptables",
    "nsenter",
    "unshare",
    "curl",
    "openssl",
)
CNI_BIN = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
PAUSE_IMAGE = "k8s.gcr.io/pause:3.4.1"
BUSYBOX_IMAGE = "vip-agent.invalid/busybox:1"

SERVICE_CIDR = "10.96.0.0/24"
POD_SUBNET = "203.0.113.128/25"
POD_GATEWAY = "203.0.113.129"
API_PORT = 6443
ETCD_URL = "http://127.0.0.1:2379"
SERVICE_IP = "10.96.0.1"  # the ``kubernetes`` Service's ClusterIP, the range's first
CONTROL_PLANE_VIP = "198.51.100.10"
"""The address a control-plane VIP may take on the node's segment; the API server's
certificate covers it (kubeadm puts --control-plane-endpoint in the certificate too)."""
CONTAINERD_NAMESPACE = "k8s.io"

# kubelet's setupKernelTunables (pkg/kubelet/cm/container_manager_linux.go) writes these
# host-wide values; they are put back at teardown.
KERNEL_TUNABLES = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
CGROUP_FS = Path("/sys/fs/cgroup")


class KubeNodeError(RuntimeError):
    """A daemon of the node did not start, or teardown left something behind."""


def missing_parts() -> str | None:
    """Why a node cannot be brought up here (what is not built or installed), or None."""
    missing = [p for p in PROGRAMS if not os.access(kube_dir() / p, os.X_OK)]
    missing += [c for c in HOST_COMMANDS if shutil.which(c) is None]
    missing += [f"{CNI_BIN}/{p}" for p in CNI_PLUGINS if not (CNI_BIN / p).exists()]
    missing += [
        f"images/{i}"
        for i in ("pause.tar", "busybox.tar")
        if not (kube_dir() / "images" / i).exists()
    ]
    if missing:
        return f"{', '.join(missing)} missing; run {BUILD_SCRIPT} as root"
    return None


@dataclass(frozen=True)
class Token:
    user: str
    groups: tuple[str, ...]
    value: str


class KubeNode:
    """One Kubernetes node with its own control plane, in namespaces; a context manager.

    ``name`` is the Node's name; ``prefix`` names the namespaces (``PREFIX-node``,
    ``PREFIX-client``, ``PREFIX-sw``) and the cgroup root. ``start()`` returns once the Node
    is Ready and the ``default`` ServiceAccount has its token; :attr:`ready_seconds` is the
    time from kubelet's start to the Node's Ready condition.
    """

    def __init__(
        self,
        *,
        name: str = "node1",
        prefix: str | None = None,
        root: Path | None = None,
        start_timeout: float = 120.0,
    ) -> None:
        reason = missing_parts()
        if reason:
            raise KubeNodeError(reason)
        self.name = name
        self.prefix = prefix or f"vn{os.getpid() % 100000}"
        self.root = root or Path(tempfile.mkdtemp(prefix="vip-agent-node-"))
        self.start_timeout = start_timeout
        self.bin = kube_dir()
        self.lab: Lab | None = None
        self.mount_ns = self.root / "mntns" / "mnt"
        self.cgroup_root = f"/vip-agent-{self.prefix}"
        self.processes: dict[str, Process] = {}
        self.tunables: dict[str, str] = {}
        self.ready_seconds: float | None = None  # kubelet start until the Node is Ready
        self.start_seconds: float | None = None  # the whole start()
        self.tokens = {
            component: Token(user, groups, secrets.token_hex(16))
            for component, (user, groups) in {
                "admin": ("vip-agent-node-admin", ("system:masters",)),
                "kubelet": (f"system:node:{name}", ("system:nodes",)),
                "kube-proxy": ("system:kube-proxy", ()),
                "kube-controller-manager": ("system:kube-controller-manager", ()),
                "kube-scheduler": ("system:kube-scheduler", ()),
            }.items()
        }

    # --- addresses and paths ----------------------------------------------------------

    @property
    def node_ns(self) -> str:
        return f"{self.prefix}-node"

    @property
    def client_ns(self) -> str:
        return f"{self.prefix}-client"

    @property
    def address(self) -> str:
        """The node's InternalIP (its eth0 on the switch)."""
        return self._lab["node"].address

    @property
    def client_address(self) -> str:
        return self._lab["client"].address

    @property
    def api_url(self) -> str:
        return f"https://{self.address}:{API_PORT}"

    @property
    def ca_file(self) -> Path:
        """The API server's certificate followed by its CA (the layout kube-apiserver's own
        self-signed pair has), which clients trust."""
        return self.root / "pki" / "apiserver.crt"

    @property
    def kubeconfig(self) -> Path:
        """An administrator's kubeconfig (group system:masters), usable from the node and
        client namespaces (the server is the node's address)."""
        return self.root / "kubeconfigs" / "admin"

    @property
    def manifest_dir(self) -> Path:
        """kubelet's static pod manifest directory."""
        return self.root / "manifests"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    def log(self, daemon: str) -> Path:
        return self.root / "logs" / f"{daemon}.log"

    # --- running things ---------------------------------------------------------------

    def node_argv(self, *argv: str) -> list[str]:
        """``argv`` run in the node's network and mount namespaces."""
        return ["nsenter", f"--mount={self.mount_ns}", f"--net=/run/netns/{self.node_ns}", *argv]

    def run_in_node(
        self, *argv: str, check: bool = True, timeout: float = 60.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` where the node's daemons run (their network and mount namespaces)."""
        return _run(self.node_argv(*argv), check=check, timeout=timeout, input=input)

    def run_in_client(
        self, *argv: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the client's network namespace (the host's mounts)."""
        return _run(
            ["nsenter", f"--net=/run/netns/{self.client_ns}", *argv], check=check, timeout=timeout
        )

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 60.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The real kubectl 1.20 as the administrator, from the node's namespace."""
        argv = [str(self.bin / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        return self.run_in_node(*argv, check=check, timeout=timeout, input=input)

    def kubectl_json(self, *args: str, timeout: float = 60.0) -> Any:
        """``kubectl ARGS -o json``, parsed."""
        return json.loads(self.kubectl(*args, "-o", "json", timeout=timeout).stdout)

    def apply(self, manifest: str | Path, *, timeout: float = 60.0) -> str:
        """``kubectl apply`` a file (a Path) or YAML text (a str); kubectl's output."""
        text = manifest.read_text(encoding="utf-8") if isinstance(manifest, Path) else manifest
        return self.kubectl("apply", "-f", "-", input=text, timeout=timeout).stdout

    def import_image(self, archive: Path, *, timeout: float = 300.0) -> None:
        """Import a docker-archive (or OCI) tar into containerd, where kubelet finds it."""
        self.run_in_node(*self._ctr("images", "import", str(archive)), timeout=timeout)

    def tag_image(self, source: str, target: str) -> None:
        """Give an imported image a second name (``ctr images tag``), as a registry would
        hold one image under two tags."""
        self.run_in_node(*self._ctr("images", "tag", "--force", source, target), timeout=30)

    def images(self) -> set[str]:
        """Image names containerd holds for kubelet."""
        done = self.run_in_node(*self._ctr("images", "list", "-q"), timeout=30)
        return set(done.stdout.split())

    def wait_pod_ready(
        self, selector: str, *, namespace: str = "default", timeout: float = 60.0, count: int = 1
    ) -> list[dict[str, Any]]:
        """Wait until at least ``count`` pods match ``selector`` and all of them are Ready;
        their objects."""

        def ready() -> list[dict[str, Any]]:
            pods = self.kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]
            if len(pods) < count or not all(_is_ready(p) for p in pods):
                return []
            return list(pods)

        try:
            result: list[dict[str, Any]] = wait_until(
                ready, timeout=timeout, interval=0.5, what=f"pods {selector} Ready"
            )
        except TimeoutError as exc:
            detail = self.kubectl("describe", "pods", "-n", namespace, "-l", selector, check=False)
            raise TimeoutError(f"{exc}\n{detail.stdout[-3000:]}") from None
        return result

    def node_object(self) -> dict[str, Any]:
        result: dict[str, Any] = self.kubectl_json("get", "node", self.name)
        return result

    def pretty_get(self, path: str, *, user_agent: str = "curl/7.88.1") -> tuple[int, str]:
        """GET ``path`` from the client namespace with curl, as a person would (curl's
        User-Agent makes kube-apiserver pretty-print JSON); (status, body)."""
        done = self.run_in_client(
            "curl",
            "-sS",
            "-m",
            "10",
            "--noproxy",
            "*",
            "--cacert",
            str(self.ca_file),
            "-A",
            user_agent,
            "-H",
            f"Authorization: Bearer {self.tokens['admin'].value}",
            "-w",
            "\n%{http_code}",
            f"{self.api_url}{path}",
            check=False,
        )
        body, _, code = done.stdout.rpartition("\n")
        return int(code or 0), body

    def alive(self, daemon: str) -> bool:
        proc = self.processes.get(daemon)
        return proc is not None and proc.alive()

    # --- the apiserver alone --------------------------------------------------------

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver alone, by pid, as on a control-plane node whose apiserver
        is not up yet; etcd, the controllers, containerd, kubelet and kube-proxy keep
        running (kubelet still runs static pods). SIGKILL after 5 s: it closes its port at
        once on SIGTERM but its process lingers (15 s and more here) over the watches it
        drains. Returns once nothing answers on the API port (bounded)."""
        proc = self.processes.pop("kube-apiserver", None)
        if proc is None or not proc.alive():
            raise KubeNodeError("kube-apiserver is not running")
        proc.terminate(grace=5)
        wait_until(
            lambda: not self._get_ok(f"{self.api_url}/readyz", token=True),
            timeout=15,
            what="kube-apiserver gone",
        )

    def start_apiserver(self, *, timeout: float = 90.0) -> float:
        """Start kube-apiserver again with the argv it started with (its log goes on);
        returns, in seconds, how long it took to answer /readyz (bounded by ``timeout``).
        The other daemons reconnect on their own: :meth:`wait_reconnected`."""
        if self.alive("kube-apiserver"):
            raise KubeNodeError("kube-apiserver is already running")
        started = time.monotonic()
        self._start_apiserver(timeout=timeout)
        return time.monotonic() - started

    def wait_reconnected(self, since: float, *, timeout: float = 90.0) -> float:
        """Wait (bounded) until the node is back in order after the apiserver came back:
        every daemon still running, kubelet's Lease renewed after ``since`` (a
        ``time.time()``), the Node Ready and without the not-ready/unreachable taints
        the node lifecycle controller puts on a node that went quiet. Seconds it took."""
        started = time.monotonic()
        for daemon in self.processes:
            if not self.alive(daemon):
                raise KubeNodeError(str(self.processes[daemon].failure("died")))

        def back() -> bool:
            lease = self.kubectl(
                "get", "lease", self.name, "-n", "kube-node-lease", "-o", "json",
                check=False, timeout=10,
            )  # fmt: skip
            if lease.returncode != 0:
                return False
            renewed = json.loads(lease.stdout).get("spec", {}).get("renewTime")
            if not renewed or timestamp(renewed) < since:
                return False
            node = self.kubectl("get", "node", self.name, "-o", "json", check=False, timeout=10)
            if node.returncode != 0:
                return False
            obj = json.loads(node.stdout)
            taints = {t.get("key") for t in obj.get("spec", {}).get("taints") or []}
            quiet = {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}
            return _condition(obj, "Ready") and not taints & quiet

        wait_until(back, timeout=timeout, interval=0.5, what=f"{self.name} reconnected")
        return time.monotonic() - started

    # --- lifecycle --------------------------------------------------------------------

    def __enter__(self) -> KubeNode:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(keep=exc_type is not None)

    def start(self) -> KubeNode:
        if self.lab is not None:
            raise KubeNodeError("already started")
        started = time.monotonic()
        try:
            for sub in ("logs", "pki", "kubeconfigs", "manifests", "run/netns", "var-lib", "log"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            self.lab = Lab(["node", "client"], root=self.root / "hosts", prefix=self.prefix)
            # No default route: a look-up of the host's DNS server or a cloud metadata
            # address (kubelet's in-tree cloud credential providers try both) fails at
            # once instead of timing out. Service addresses need a route for the node's
            # own connections to reach kube-proxy's DNAT in OUTPUT.
            ip("-n", self.node_ns, "route", "add", SERVICE_CIDR, "dev", "eth0")
            self._make_mount_namespace()
            self._make_cgroup_root()
            self._write_credentials()
            self._start_control_plane()
            self._start_containerd()
            for image in ("pause.tar", "busybox.tar"):
                self.import_image(self.bin / "images" / image)
            self._start_kubelet()
            self._start_kube_proxy()
            self._wait_service_account()
        except BaseException:
            self.close(keep=True)
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def close(self, *, keep: bool = False) -> None:
        """Stop everything (by pid), unmount, delete the namespaces, restore the kernel
        tunables and remove the cgroups; the lab dir goes unless ``keep``. Raises
        :class:`KubeNodeError` when something could not be undone (after undoing the rest)."""
        problems: list[str] = []
        for daemon in ("kubelet", "kube-proxy"):
            self._stop(daemon)
        problems += self._remove_containers()
        self._stop("containerd")
        problems += self._kill_leftovers()
        for daemon in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            self._stop(daemon)
        problems += self._unmount()
        if self.lab is not None:
            self.lab.close()
            self.lab = None
        problems += self._restore_tunables()
        problems += self._remove_cgroup_root()
        if problems:
            keep = True
        if keep:
            print(f"kube node: logs kept in {self.root}")
        else:
            _rmtree(self.root)
        if problems:
            raise KubeNodeError("teardown left: " + "; ".join(problems))

    # --- start-up ---------------------------------------------------------------------

    @property
    def _lab(self) -> Lab:
        if self.lab is None:
            raise KubeNodeError("not started")
        return self.lab

    def _make_mount_namespace(self) -> None:
        holder = self.mount_ns.parent
        holder.mkdir(parents=True, exist_ok=True)
        # A namespace file can only be bound onto a private mount.
        _run(["mount", "--bind", str(holder), str(holder)])
        _run(["mount", "--make-private", str(holder)])
        self.mount_ns.touch()
        stash = self.root / "cgroup-stash"
        stash.mkdir(exist_ok=True)
        script = "\n".join(
            [
                "set -e",
                f"mount --rbind {CGROUP_FS} {stash}",
                # sysfs shows the network namespace of whoever mounts it: this one's.
                "mount -t sysfs sysfs /sys",
                f"mount --rbind {stash} {CGROUP_FS}",
                f"umount -l {stash}",
                f"mount --bind {self.root / 'run'} /run",
                f"mount --bind {self.root / 'var-lib'} /var/lib",
                f"mount --bind {self.root / 'log'} /var/log",
            ]
        )
        _run(
            [
                "nsenter",
                f"--net=/run/netns/{self.node_ns}",
                "unshare",
                f"--mount={self.mount_ns}",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
            ]
        )

    def _cgroup_dirs(self) -> list[Path]:
        """Our cgroup root in every hierarchy: the v1 ones kubelet checks, and the v2
        ("unified") one of a hybrid host, where runc mirrors the pods' cgroups too."""
        name = self.cgroup_root.lstrip("/")
        if (CGROUP_FS / "cgroup.procs").exists():  # a cgroup v2 only host
            return [CGROUP_FS / name]
        return [
            hierarchy / name
            for hierarchy in sorted(CGROUP_FS.iterdir())
            if (hierarchy / "cgroup.procs").exists()
        ]

    def _make_cgroup_root(self) -> None:
        for path in self._cgroup_dirs():
            path.mkdir(exist_ok=True)
            # A new cpuset cgroup has no CPUs or memory nodes: no task could join it.
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if (path / knob).exists():
                    (path / knob).write_text((path.parent / knob).read_text())

    def _write_serving_cert(self, pki: Path) -> None:
        """A CA and the API server's certificate it signs (``apiserver.crt`` holds both,
        the CA last), valid for every address clients use, the control-plane VIP included."""
        names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc"]
        names += ["kubernetes.default.svc.cluster.local", "localhost"]
        addresses = [self.address, SERVICE_IP, "127.0.0.1", CONTROL_PLANE_VIP]
        sans = ",".join([f"DNS:{n}" for n in names] + [f"IP:{a}" for a in addresses])
        extensions = pki / "apiserver.ext"
        extensions.write_text(
            f"subjectAltName={sans}\nbasicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
            encoding="utf-8",
        )
        for argv in (
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "7",
             "-keyout", "ca.key", "-out", "ca.crt", "-subj", f"/CN={self.prefix}-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key",
             "-out", "apiserver.csr", "-subj", "/CN=kube-apiserver"],
            ["x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-set_serial", "2", "-days", "7", "-extfile", str(extensions),
             "-out", "apiserver-leaf.crt"],
        ):  # fmt: skip
            _run(["openssl", *argv], cwd=pki)
        (pki / "apiserver.crt").write_bytes(
            (pki / "apiserver-leaf.crt").read_bytes() + (pki / "ca.crt").read_bytes()
        )

    def _write_credentials(self) -> None:
        pki = self.root / "pki"
        self._write_serving_cert(pki)
        write_token_file(
            pki / "tokens.csv", {t.value: (t.user, t.groups) for t in self.tokens.values()}
        )
        write_service_account_key(pki / "sa.key")
        for component, token in self.tokens.items():
            write_kubeconfig(
                self.root / "kubeconfigs" / component,
                server=self.api_url,
                ca_file=self.ca_file,
                token=token.value,
            )

    def _spawn(self, daemon: str, argv: Sequence[str]) -> Process:
        proc = Process(daemon, self.node_argv(*argv), self.log(daemon))
        self.processes[daemon] = proc
        return proc

    def _wait_up(self, daemon: str, check: Callable[[], bool], *, timeout: float) -> None:
        proc = self.processes[daemon]

        def up() -> bool:
            if not proc.alive():
                raise KubeNodeError(str(proc.failure("exited during start-up")))
            return check()

        try:
            wait_until(up, timeout=timeout, what=f"{daemon} up")
        except TimeoutError:
            raise KubeNodeError(str(proc.failure(f"not up within {timeout:g}s"))) from None

    def _get_ok(self, url: str, *, token: bool = False, expect: str = "ok") -> bool:
        """``url`` answers 2xx from inside the node, with ``expect`` in the body."""
        argv = ["curl", "-sf", "-m", "2", "--noproxy", "*"]
        if token:
            argv += ["--cacert", str(self.ca_file)]
            argv += ["-H", f"Authorization: Bearer {self.tokens['admin'].value}"]
        done = self.run_in_node(*argv, url, check=False, timeout=10)
        return done.returncode == 0 and expect in done.stdout

    def _apiserver_argv(self) -> list[str]:
        pki = self.root / "pki"
        return [
            str(self.bin / "kube-apiserver"),
            f"--etcd-servers={ETCD_URL}",
            "--bind-address=0.0.0.0",
            f"--advertise-address={self.address}",
            f"--secure-port={API_PORT}",
            "--insecure-port=0",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.key'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--kubelet-preferred-address-types=InternalIP",
            "--profiling=false",
            "--v=1",
        ]

    def _start_apiserver(self, *, timeout: float = 90.0) -> None:
        self._spawn("kube-apiserver", self._apiserver_argv())
        self._wait_up("kube-apiserver", self._apiserver_ready, timeout=timeout)

    def _apiserver_ready(self) -> bool:
        return self.ca_file.exists() and self._get_ok(f"{self.api_url}/readyz", token=True)

    def _start_control_plane(self) -> None:
        etcd = ETCD_URL
        self._spawn(
            "etcd",
            etcd_argv(
                "etcd",
                data_dir=self.root / "etcd",
                client_url=etcd,
                peer_url="http://127.0.0.1:2380",
            ),
        )
        self._wait_up(
            "etcd", lambda: self._get_ok(f"{etcd}/health", expect='"health":"true"'), timeout=30
        )
        self._start_apiserver()
        pki = self.root / "pki"
        kubeconfigs = self.root / "kubeconfigs"
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin / "kube-controller-manager"),
                f"--kubeconfig={kubeconfigs / 'kube-controller-manager'}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                # Handed to pods as ca.crt beside their ServiceAccount token.
                f"--root-ca-file={self.ca_file}",
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                "--port=0",
                "--bind-address=127.0.0.1",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(self.bin / "kube-scheduler"),
                f"--kubeconfig={kubeconfigs / 'kube-scheduler'}",
                "--leader-elect=false",
                "--port=0",
                "--bind-address=127.0.0.1",
                "--v=1",
            ],
        )

    def _ctr(self, *args: str) -> list[str]:
        return ["ctr", "-a", str(self.containerd_socket), "-n", CONTAINERD_NAMESPACE, *args]

    def _start_containerd(self) -> None:
        base = self.root / "containerd"
        cni_conf = self.root / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-bridge.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "0.4.0",
                    "name": "vip-agent-node",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": "cni0",
                            "isGateway": True,
                            "ipMasq": True,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "dataDir": str(self.root / "cni" / "ipam"),
                                "ranges": [[{"subnet": POD_SUBNET, "gateway": POD_GATEWAY}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                },
                indent=2,
            ),
            encoding="utf-8",
        )
        config = base / "config.toml"
        base.mkdir(exist_ok=True)
        config.write_text(
            _containerd_config(base=base, socket=self.containerd_socket, cni_conf=cni_conf),
            encoding="utf-8",
        )
        self._spawn("containerd", ["containerd", f"--config={config}"])
        self._wait_up(
            "containerd",
            lambda: (
                self.run_in_node(*self._ctr("version"), check=False, timeout=10).returncode == 0
            ),
            timeout=30,
        )

    def _start_kubelet(self) -> None:
        base = self.root / "kubelet"
        base.mkdir(exist_ok=True)
        config = base / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "cgroupDriver": "cgroupfs",
                    "cgroupRoot": self.cgroup_root,
                    "failSwapOn": False,
                    "staticPodPath": str(self.manifest_dir),
                    "volumePluginDir": str(base / "volume-plugins"),
                    # The API server reaches kubelet (logs, exec) without a client
                    # certificate; the node's namespace is the only place that can.
                    "authentication": {
                        "anonymous": {"enabled": True},
                        "webhook": {"enabled": False},
                    },
                    "authorization": {"mode": "AlwaysAllow"},
                    "readOnlyPort": 0,
                    "healthzBindAddress": "127.0.0.1",
                    "clusterDomain": "cluster.local",
                    # The suite's disk is shared with other builds: no eviction for space.
                    "evictionHard": {
                        "memory.available": "100Mi",
                        "nodefs.available": "1%",
                        "imagefs.available": "1%",
                        "nodefs.inodesFree": "1%",
                    },
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                },
                sort_keys=False,
            ),
            encoding="utf-8",
        )
        self.tunables = _read_tunables()
        started = time.monotonic()
        self._spawn(
            "kubelet",
            [
                str(self.bin / "kubelet"),
                f"--config={config}",
                f"--kubeconfig={self.root / 'kubeconfigs' / 'kubelet'}",
                "--container-runtime=remote",
                f"--container-runtime-endpoint=unix://{self.containerd_socket}",
                # containerd's sandbox_image is what runs; this keeps image GC off it.
                f"--pod-infra-container-image={PAUSE_IMAGE}",
                f"--root-dir={base / 'root'}",
                f"--cert-dir={base / 'pki'}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.address}",
                "--v=1",
            ],
        )
        self._wait_up("kubelet", self._node_ready, timeout=self.start_timeout)
        self.ready_seconds = time.monotonic() - started

    def _node_ready(self) -> bool:
        done = self.kubectl("get", "node", self.name, "-o", "json", check=False, timeout=10)
        if done.returncode != 0:
            return False
        return _condition(json.loads(done.stdout), "Ready")

    def _start_kube_proxy(self) -> None:
        config = self.root / "kube-proxy.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "mode": "iptables",
                    "clientConnection": {
                        "kubeconfig": str(self.root / "kubeconfigs" / "kube-proxy")
                    },
                    "hostnameOverride": self.name,
                    "clusterCIDR": POD_SUBNET,
                    "healthzBindAddress": "127.0.0.1:10256",
                    "metricsBindAddress": "127.0.0.1:10249",
                    # 0: leave the host-wide nf_conntrack_max and hashsize as they are.
                    "conntrack": {"maxPerCore": 0, "min": 0},
                },
                sort_keys=False,
            ),
            encoding="utf-8",
        )
        self._spawn("kube-proxy", [str(self.bin / "kube-proxy"), f"--config={config}", "--v=1"])
        self._wait_up(
            "kube-proxy",
            lambda: self._get_ok("http://127.0.0.1:10256/healthz", expect="lastUpdated"),
            timeout=30,
        )

    def _wait_service_account(self) -> None:
        """Pods are refused until their namespace's default ServiceAccount has a token."""

        def has_token() -> bool:
            for namespace in ("default", "kube-system"):
                done = self.kubectl(
                    "get", "serviceaccount", "default", "-n", namespace, "-o", "json",
                    check=False, timeout=10,
                )  # fmt: skip
                if done.returncode != 0 or not json.loads(done.stdout).get("secrets"):
                    return False
            return True

        self._wait_up("kube-controller-manager", has_token, timeout=60)

    # --- teardown ---------------------------------------------------------------------

    def _stop(self, daemon: str) -> None:
        proc = self.processes.pop(daemon, None)
        if proc is not None:
            proc.terminate(grace=15)

    def _remove_containers(self) -> list[str]:
        """Kill and delete every container (and so its shim) through containerd."""
        if not self.alive("containerd"):
            return []
        done = self.run_in_node(*self._ctr("containers", "list", "-q"), check=False, timeout=30)
        for container in done.stdout.split():
            self.run_in_node(
                *self._ctr("tasks", "kill", "-s", "SIGKILL", container), check=False, timeout=30
            )
        for container in done.stdout.split():
            self.run_in_node(
                *self._ctr("tasks", "delete", "-f", container), check=False, timeout=30
            )
            self.run_in_node(*self._ctr("containers", "delete", container), check=False, timeout=30)
        return []

    def _cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        for top in self._cgroup_dirs():
            if not top.exists():
                continue
            for procs in top.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(p) for p in procs.read_text().split())
        return pids

    def _shim_pids(self) -> set[int]:
        """containerd shims serving our containerd (they name its socket on their command
        line) that outlived it."""
        marker = str(self.containerd_socket).encode()
        pids = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if argv and argv[0].endswith(b"containerd-shim-runc-v2") and marker in argv:
                    pids.add(int(entry.name))
        return pids

    def _kill_leftovers(self) -> list[str]:
        """SIGKILL, by pid, container processes in our cgroups and our shims."""
        for _ in range(50):
            pids = self._cgroup_pids() | self._shim_pids()
            if not pids:
                return []
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        return [f"processes {sorted(self._cgroup_pids() | self._shim_pids())} would not die"]

    def _mounts_in_namespace(self) -> list[str]:
        """Mount points in the node's mount namespace that are not the host's."""
        done = _run(
            ["nsenter", f"--mount={self.mount_ns}", "cat", "/proc/self/mountinfo"],
            check=False,
            timeout=10,
        )
        host = {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}
        ours = []
        for line in done.stdout.splitlines():
            point = line.split()[4]
            if point not in host or point.startswith(str(self.root)):
                ours.append(point)
        return ours

    def _unmount(self) -> list[str]:
        if not self.mount_ns.exists() or not _is_mount_point(self.mount_ns):
            return self._unmount_holder()
        # Deepest first: kubelet's volume mounts and containerd's pod netns pins, then the
        # binds this harness made. Lazy, as a process of ours may still hold a file open.
        for point in sorted(self._mounts_in_namespace(), key=len, reverse=True):
            if point.startswith(str(self.root)) or point in {"/run", "/var/lib", "/var/log"}:
                _run(
                    ["nsenter", f"--mount={self.mount_ns}", "umount", "-l", point],
                    check=False,
                    timeout=10,
                )
        _run(["umount", str(self.mount_ns)], check=False, timeout=10)
        return self._unmount_holder()

    def _unmount_holder(self) -> list[str]:
        holder = self.mount_ns.parent
        if holder.exists() and _is_mount_point(holder):
            _run(["umount", str(holder)], check=False, timeout=10)
        left = [
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(str(self.root))
        ]
        return [f"mounts {left}"] if left else []

    def _restore_tunables(self) -> list[str]:
        problems = []
        for name, value in self.tunables.items():
            path = Path("/proc/sys") / name
            try:
                if path.read_text().strip() != value:
                    path.write_text(value + "\n")
            except OSError as exc:
                problems.append(f"{name} not restored to {value}: {exc}")
        return problems

    def _remove_cgroup_root(self) -> list[str]:
        left = []
        for top in self._cgroup_dirs():
            if not top.exists():
                continue
            # Leaves first: a cgroup with children cannot go.
            for path in sorted(
                (p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
            ):
                with contextlib.suppress(OSError):
                    path.rmdir()
            try:
                top.rmdir()
            except OSError as exc:
                left.append(f"cgroup {top}: {exc}")
        return left


def _containerd_config(*, base: Path, socket: Path, cni_conf: Path) -> str:
    return f"""\
version = 2
root = "{base / "root"}"
state = "{base / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{base / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # root here lacks CAP_SYS_RESOURCE: without this runc cannot lower a container's
  # oom_score_adj below its own and every sandbox fails ("can't get final child's PID").
  restrict_oom_score_adj = true
  disable_apparmor = true

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni_conf}"
"""


def _run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60.0,
    input: str | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        list(argv),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        env=_clean_env(),
    )
    if check and done.returncode != 0:
        raise KubeNodeError(
            f"{' '.join(argv)} exited {done.returncode}:\n"
            f"{done.stderr[-2000:]}{done.stdout[-1000:]}"
        )
    return done


def _clean_env() -> Mapping[str, str]:
    """The environment without proxies: nothing in the namespaces goes through one."""
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


def _condition(obj: Mapping[str, Any], kind: str) -> bool:
    conditions = obj.get("status", {}).get("conditions") or []
    return any(c.get("type") == kind and c.get("status") == "True" for c in conditions)


def timestamp(rfc3339: str) -> float:
    """A Kubernetes or containerd timestamp (``2006-01-02T15:04:05Z``, fractions allowed,
    to the microsecond) as ``time.time()`` seconds."""
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def _is_ready(pod: Mapping[str, Any]) -> bool:
    return _condition(pod, "Ready")


def _is_mount_point(path: Path) -> bool:
    wanted = str(path)
    return any(
        line.split()[4] == wanted for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )


def _read_tunables() -> dict[str, str]:
    values = {}
    for name in KERNEL_TUNABLES:
        with contextlib.suppress(OSError):
            values[name] = (Path("/proc/sys") / name).read_text().strip()
    return values


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

"""The container image, built and run for real.

scripts/build-image builds container/Containerfile with buildah on a base mmdebstrap makes
(minutes the first time; seconds when nothing changed: the image is cached in
/var/cache/vip-agent/images). Root only: without root these tests skip, and fail in CI.

* the image is under 300 MB and its entrypoint is ``vip-agent run``;
* its programs run: the agent, keepalived, haproxy, ip, and a real BIRD that birdc asks;
* the agent in the image renders the example cluster byte for byte as the checkout does;
* every path the agent writes by default is a writable volume of the DaemonSet and of the
  static pod, and the image runs as those manifests run it: its root filesystem mounted
  read-only, their volumes mounted, in a network namespace of its own standing in for the
  node's, with exactly their capabilities and no_new_privs, the agent as pid 1; it turns
  ready with keepalived and haproxy (mode vrrp), and with BIRD (mode bgp).

Every buildah container a test makes is removed by its id.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from agent import settings as settings_mod
from labkit.checkers import ScratchNamespace, root_skip_reason
from labkit.netlab import wait_for
from tests.conftest import EXAMPLES, ROOT
from tests.support.requirements import require_binaries, unavailable

BUILD = ROOT / "scripts" / "build-image"
ENTRYPOINT = ["/opt/vip-agent/bin/vip-agent", "run"]
SIZE_LIMIT = 300 * 1000**2
"""Bytes, counted as buildah counts them (its MB is 10**6 bytes)."""


def version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


@pytest.fixture(scope="module")
def image() -> str:
    """localhost/vip-agent:<version>, built (or found in the cache) by scripts/build-image."""
    if os.geteuid() != 0:
        unavailable("needs root: buildah builds and runs the image (CI runs as root)")
    built = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=1800, check=False)
    assert built.returncode == 0, built.stderr[-4000:]
    archive = Path(built.stdout.strip())
    assert archive.is_file() and archive.name.startswith("vip-agent-"), built.stdout
    return f"localhost/vip-agent:{version()}"


def buildah(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        ["buildah", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"buildah {shlex.join(args)}: {done.stderr}"
    return done.stdout


@contextmanager
def working_container(image: str) -> Iterator[str]:
    """A buildah container of the image (its id), removed by that id afterwards."""
    with tempfile.TemporaryDirectory(prefix="vip-agent-image-") as tmp:
        cidfile = Path(tmp) / "cid"
        buildah("from", "--pull=never", "--quiet", "--cidfile", str(cidfile), image)
        cid = cidfile.read_text().strip()
    try:
        yield cid
    finally:
        subprocess.run(["buildah", "rm", cid], capture_output=True, timeout=120, check=False)


def run_in(
    cid: str, *argv: str, volumes: tuple[str, ...] = (), netns: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``buildah run``: the image's own programs, its environment, the host's network
    namespace or ``netns``."""
    cmd = ["buildah", "run", "--isolation", "chroot"]
    for volume in volumes:
        cmd += ["-v", volume]
    cmd += [cid, "--", *argv]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.run(cmd, capture_output=True, timeout=120, check=False)


def image_config(image: str) -> dict[str, Any]:
    """The image's OCI config: Entrypoint, Cmd, Env ..."""
    return dict(json.loads(buildah("inspect", "--type", "image", image))["OCIv1"]["config"])


def parse_size(text: str) -> float:
    """buildah's human size ("255 MB") in bytes."""
    found = re.fullmatch(r"([0-9.]+)\s*(B|kB|MB|GB)", text.strip())
    assert found, f"unexpected size {text!r}"
    number, unit = found.groups()
    return float(number) * {"B": 1, "kB": 1000, "MB": 1000**2, "GB": 1000**3}[unit]


# --- the image -----------------------------------------------------------------------------


def test_image_is_under_300_mb_and_runs_the_agent(image: str) -> None:
    [listed] = json.loads(buildah("images", "--json", image))
    assert parse_size(listed["size"]) < SIZE_LIMIT, (
        f"{image} is {listed['size']}; see the README (Running it) for what takes the space"
    )
    config = image_config(image)
    assert config["Entrypoint"] == ENTRYPOINT
    # the static pod gives no args: a Cmd (the base's bash) would become vip-agent run's
    assert not config.get("Cmd"), config["Cmd"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PATH"].startswith("/opt/vip-agent/bin:")


def test_its_programs_run(image: str) -> None:
    expected = {
        ("vip-agent", "--version"): f"vip-agent, version {version()}",
        ("keepalived", "--version"): "Keepalived v2.",
        ("haproxy", "-v"): "HAProxy version 2.",
        ("bird", "--version"): "BIRD version 2.",
        ("ip", "-V"): "iproute2",
    }
    with working_container(image) as cid:
        for argv, text in expected.items():
            done = run_in(cid, *argv)
            said = (done.stdout + done.stderr).decode(errors="replace")
            assert done.returncode == 0 and text in said, f"{shlex.join(argv)}: {said}"
        # ca-certificates' postinst ran: the bundle is there and full
        done = run_in(cid, "grep", "-c", "BEGIN CERTIFICATE", "/etc/ssl/certs/ca-certificates.crt")
        assert done.returncode == 0 and int(done.stdout) > 100
        # birdc has no --version: it asks a BIRD started for it, in a namespace of its own
        # (BIRD with only the device protocol changes nothing; the pidfile stops it)
        script = (
            "printf 'router id 192.0.2.1;\\nprotocol device {}\\n' >/tmp/bird.conf"
            " && bird -c /tmp/bird.conf -s /tmp/bird.ctl -P /tmp/bird.pid"
            ' && trap "kill $(cat /tmp/bird.pid)" EXIT'
            " && birdc -s /tmp/bird.ctl show status"
        )
        netns = ScratchNamespace(f"vipagent-img-{os.getpid()}")
        try:
            done = run_in(cid, "sh", "-c", script, netns=netns.name)
        finally:
            netns.delete()
        said = (done.stdout + done.stderr).decode(errors="replace")
        assert done.returncode == 0 and "Daemon is up and running" in said, said


def test_renders_the_example_cluster_as_the_checkout_does(image: str) -> None:
    args = ["render", "--dry-run", "--manifests", str(EXAMPLES / "cluster.yaml")]
    args += ["--config", str(EXAMPLES / "config.yaml")]
    checkout = subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    with working_container(image) as cid:
        inside = run_in(cid, "vip-agent", *args, volumes=(f"{EXAMPLES}:{EXAMPLES}:ro",))
    assert checkout.returncode == inside.returncode == 0, inside.stderr.decode()
    assert inside.stdout == checkout.stdout
    # the rejected inputs, in the same words (buildah may add lines of its own)
    assert set(checkout.stderr.splitlines()) <= set(inside.stderr.splitlines())


# --- the manifests' read-only root filesystem ------------------------------------------------


NODES = {
    "daemonset.yaml": ("worker-1", "198.51.100.21"),
    "static-pod.yaml": ("cp-1", "198.51.100.11"),
}
"""The node each manifest runs on here: nodes of examples/cluster.yaml."""


class Pod:
    """The one container of container/<name> and what the kubelet would give it."""

    def __init__(self, name: str) -> None:
        docs = [d for d in yaml.safe_load_all((ROOT / "container" / name).read_text()) if d]
        pod = next(d for d in docs if d["kind"] in ("DaemonSet", "Pod"))
        self.spec = pod["spec"]["template"]["spec"] if pod["kind"] == "DaemonSet" else pod["spec"]
        [self.container] = self.spec["containers"]
        self.config_maps = {
            d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"
        }
        self.node_name, self.node_address = NODES[name]

    @property
    def security(self) -> dict[str, Any]:
        return dict(self.container["securityContext"])

    def env(self) -> dict[str, str]:
        """The container's environment, with the downward API filled in for this node."""
        fields = {"spec.nodeName": self.node_name, "status.hostIP": self.node_address}
        out = {}
        for item in self.container.get("env", []):
            if "value" in item:
                out[item["name"]] = str(item["value"])
            else:
                out[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        return out

    def mounts(self) -> list[tuple[str, dict[str, Any], bool]]:
        """(mountPath, volume, readOnly) for every volumeMount."""
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        return [
            (m["mountPath"], volumes[m["name"]], bool(m.get("readOnly", False)))
            for m in self.container.get("volumeMounts", [])
        ]

    def config_files(self) -> dict[str, dict[str, str]]:
        """mountPath -> the files of the ConfigMap mounted there."""
        return {
            path: self.config_maps[volume["configMap"]["name"]]
            for path, volume, _ in self.mounts()
            if "configMap" in volume
        }

    def settings(self, tmp: Path) -> settings_mod.Settings:
        """The agent's settings in this pod, as `vip-agent run` would load them."""
        args = self.container.get("args", [])
        config = tmp / "no-config.yaml"
        config.write_text("")  # not the host's /etc/vip-agent/config.yaml
        if "--config" in args:
            inside = PurePosixPath(args[args.index("--config") + 1])
            files = self.config_files()[str(inside.parent)]
            config.write_text(files[inside.name])
        return settings_mod.load(flags={}, environ=self.env(), config_file=config)

    def writable(self, path: str) -> bool:
        """A writable volume holds ``path`` (the root filesystem is read-only)."""
        target = PurePosixPath(path)
        return any(
            not read_only
            and (target == PurePosixPath(where) or PurePosixPath(where) in target.parents)
            for where, _, read_only in self.mounts()
        )


MANIFESTS = ["daemonset.yaml", "static-pod.yaml"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_path_the_agent_writes_by_default_is_a_writable_volume(
    name: str, tmp_path: Path
) -> None:
    pod = Pod(name)
    assert pod.security["readOnlyRootFilesystem"] is True
    settings = pod.settings(tmp_path)
    # run_dir holds the pidfiles, sockets, FIFO and status.json; the configurations are
    # written as a temp file beside the target, then renamed (and .failed kept there)
    written = {settings.run_dir}
    for key in ("keepalived_config", "haproxy_config", "bird_config", *settings_mod._IN_RUN_DIR):
        written.add(str(PurePosixPath(getattr(settings, key)).parent))
    for path in sorted(written):
        assert pod.writable(path), f"{name}: {path} is on the read-only root filesystem"


BGP = {"mode": "bgp", "bgp_local_as": 64512, "bgp_peers": ["198.51.100.1:64500"]}
"""mode bgp with a peer that never answers: BIRD runs, the session stays down."""


@pytest.mark.parametrize(
    ("name", "extra", "daemon_config"),
    [
        ("daemonset.yaml", {}, "keepalived_config"),
        ("daemonset.yaml", BGP, "bird_config"),
        ("static-pod.yaml", {}, "keepalived_config"),
    ],
    ids=["daemonset-vrrp", "daemonset-bgp", "static-pod"],
)
def test_runs_read_only_as_the_manifest_runs_it(
    image: str, name: str, extra: dict[str, Any], daemon_config: str, tmp_path: Path
) -> None:
    reason = root_skip_reason()
    if reason:
        unavailable(reason)
    require_binaries("unshare", "chroot", "curl")
    pod = Pod(name)
    settings = pod.settings(tmp_path)
    written = [getattr(settings, daemon_config), settings.haproxy_config]
    with PodRun(pod, image, tmp_path, extra=extra) as run:
        port = settings.metrics_address.rpartition(":")[2]
        wait_for(
            lambda: run.curl(f"http://127.0.0.1:{port}/readyz"),
            timeout=60,
            interval=0.5,
            what=f"/readyz of the agent in the image ({name}); log: {run.log}",
        )
        for path in written:
            assert (Path(f"/proc/{run.agent}/root") / path.lstrip("/")).is_file(), path
        code = run.stop()
    log = run.log.read_text(errors="replace")
    for complaint in ("Read-only file system", "Operation not permitted", "Permission denied"):
        assert complaint not in log, log[-3000:]
    assert code == 0, log[-3000:]


class PodRun:
    """The image run the way a container runtime runs the pod's container, by hand.

    A network namespace with the node's address on eth0 stands in for the node's (the
    pods use hostNetwork). In new mount, UTS and pid namespaces: the container's root
    filesystem (``buildah mount``) bind-mounted read-only, proc, sysfs, a small /dev, a
    tmpfs for every emptyDir and the ConfigMap's files read-only; then chroot, drop to the
    granted capabilities with no_new_privs (the image's setpriv), and exec the image's
    entrypoint with the pod's args and environment, as pid 1. The mount points are made in
    the container's own layer first, as the runtime makes them. The DaemonSet watches an API
    server; here its ConfigMap also carries examples/cluster.yaml, named by
    VIP_AGENT_MANIFESTS.
    """

    def __init__(self, pod: Pod, image: str, tmp: Path, *, extra: Mapping[str, Any]) -> None:
        self.pod = pod
        self.image = image
        self.tmp = tmp
        self.extra = dict(extra)
        self.log = tmp / "agent.log"
        self.cid = ""
        self.netns: ScratchNamespace | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.agent = 0

    def __enter__(self) -> PodRun:
        try:
            self._start()
        except BaseException:
            self._cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._cleanup()

    def _start(self) -> None:
        cidfile = self.tmp / "cid"
        buildah("from", "--pull=never", "--quiet", "--cidfile", str(cidfile), self.image)
        self.cid = cidfile.read_text().strip()
        rootfs = Path(buildah("mount", self.cid).strip())
        config = image_config(self.image)
        env = dict(item.split("=", 1) for item in config["Env"])
        env |= self.pod.env()
        root = self.tmp / "root"
        root.mkdir()
        lines = [
            "set -eu",
            "mount --make-rprivate /",
            f"mount --bind {rootfs} {root}",
            f"mount -o remount,bind,ro {root}"
            if self.pod.security.get("readOnlyRootFilesystem")
            else ":",
            f"mount -t proc proc {root}/proc",
            f"mount -t sysfs -o ro sysfs {root}/sys",
            f"mount -t tmpfs -o nosuid,mode=755 tmpfs {root}/dev",
        ]
        for node in ("null", "zero", "full", "random", "urandom", "tty"):
            lines.append(f": >{root}/dev/{node} && mount --bind /dev/{node} {root}/dev/{node}")
        for where, volume, read_only in self.pod.mounts():
            (rootfs / where.lstrip("/")).mkdir(parents=True, exist_ok=True)
            target = f"{root}{where}"
            if "emptyDir" in volume:
                lines.append(f"mount -t tmpfs -o mode=755 tmpfs {target}")
            elif "configMap" in volume:
                source = self._config_map(where)
                env["VIP_AGENT_MANIFESTS"] = f"{where}/cluster.yaml"
                lines.append(f"mount --bind {source} {target}")
                if read_only:
                    lines.append(f"mount -o remount,bind,ro {target}")
            else:
                raise AssertionError(f"volume {volume} at {where}: not emptyDir or configMap")
        caps = ",".join(
            ["-all", *(f"+{c.lower()}" for c in self.pod.security["capabilities"]["add"])]
        )
        argv = [*config["Entrypoint"], *self.pod.container.get("args", [])]
        lines += [
            f"hostname {self.pod.node_name}",
            shlex.join(
                [
                    *("exec", "chroot", str(root), "/usr/bin/env", "-i"),
                    *(f"{k}={v}" for k, v in sorted(env.items())),
                    *("setpriv", f"--bounding-set={caps}", "--inh-caps=-all", "--no-new-privs"),
                    *("--", *argv),
                ]
            ),
        ]
        self.netns = ScratchNamespace(f"vipagent-imgrun-{os.getpid()}")
        ns = self.netns.name
        subprocess.run(
            ["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"],
            check=True,
            capture_output=True,
        )
        for command in (
            ["addr", "add", f"{self.pod.node_address}/24", "dev", "eth0"],
            ["link", "set", "eth0", "up"],
            ["link", "set", "peer0", "up"],
            ["link", "set", "lo", "up"],
        ):
            subprocess.run(["ip", "-n", ns, *command], check=True, capture_output=True)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    *("ip", "netns", "exec", ns),
                    *("unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child"),
                    *("sh", "-c", "\n".join(lines)),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._find_agent, timeout=10, interval=0.05, what="unshare's child")

    def _config_map(self, where: str) -> Path:
        """The ConfigMap mounted at ``where``, as files (plus examples/cluster.yaml)."""
        source = self.tmp / "configmap"
        source.mkdir()
        for key, text in self.pod.config_files()[where].items():
            if key == "config.yaml" and self.extra:
                text = yaml.safe_dump({**yaml.safe_load(text), **self.extra})
            (source / key).write_text(text)
        (source / "cluster.yaml").write_text((EXAMPLES / "cluster.yaml").read_text())
        return source

    def _find_agent(self) -> bool:
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            found = children.read_text().split()
        except OSError:
            found = []
        if found:
            self.agent = int(found[0])
        assert self.proc.poll() is None, self.log.read_text(errors="replace")[-3000:]
        return bool(found)

    def curl(self, url: str) -> bool:
        assert self.netns is not None and self.proc is not None
        assert self.proc.poll() is None, self.log.read_text(errors="replace")[-3000:]
        cmd = ["ip", "netns", "exec", self.netns.name, "curl", "-sf", "-m", "3", "-o", "/dev/null"]
        return subprocess.run([*cmd, url], timeout=10, check=False).returncode == 0

    def stop(self) -> int:
        """SIGTERM to the agent, as the kubelet sends it; its exit code."""
        assert self.proc is not None
        os.kill(self.agent, signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def _cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # the agent is the pid namespace's init: killing it ends every process in it
            if self.agent:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.agent, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self.netns is not None:
            self.netns.delete()
        if self.cid:
            for command in ("umount", "rm"):
                subprocess.run(
                    ["buildah", command, self.cid], capture_output=True, timeout=120, check=False
                )

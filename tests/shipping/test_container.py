"""container/: the Containerfile, and what the manifests ask of the agent.

tests/shipping/test_image.py builds the image and runs it (root, buildah: minutes the
first time).  These checks need no image:

* the Containerfile is parsed: stages, base images, that every COPY source exists in
  the checkout and every ``--from`` names an earlier stage, that the ENTRYPOINT is the
  console script the builder's virtualenv gets;
* the builder stage is rehearsed: a wheel is built from exactly the files the
  Containerfile copies (a missing one, such as README.md, fails here), and the agent
  imported from that wheel renders what the checkout renders;
* the settings the manifests carry (the DaemonSet's ConfigMap, the static pod's
  environment) load and render;
* the capability set both manifests grant is enough: two agents in the namespace lab run
  keepalived and haproxy with exactly that bounding set and no_new_privs, and fail over.

tests/shipping/test_manifests_dry_run.py sends the manifests to a real API server.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import yaml

from agent import settings as settings_mod
from labkit.checkers import root_skip_reason
from labkit.netlab import PYTHON, Host, Lab, agent_config, wait_for
from tests.conftest import EXAMPLES, ROOT
from tests.support.requirements import require_binaries, unavailable

CONTAINERFILE = ROOT / "container" / "Containerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in CONTAINERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "the file ends inside a continued line"
    return out


def stages() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for word, args in instructions():
        if word == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            found.append({"image": parts[0], "name": name, "steps": []})
        else:
            assert found, f"{word} before the first FROM"
            found[-1]["steps"].append((word, args))
    return found


def copied_paths() -> list[str]:
    out = []
    for stage in stages():
        for word, args in stage["steps"]:
            if word == "COPY" and "--from=" not in args:
                out.extend(shlex.split(args)[:-1])
    return out


def test_containerfile_stages_copies_and_entrypoint() -> None:
    builder, final = stages()
    assert builder["name"] == "builder"
    assert builder["image"] == final["image"] == "debian:bookworm-slim", (
        "the venv's python3 must be the same interpreter in both stages"
    )
    # every COPY source is in the checkout
    for source in copied_paths():
        assert (ROOT / source).exists(), f"COPY {source}: not in the checkout"
    # COPY --from names an earlier stage, and copies what it built
    runs = " ".join(args for word, args in builder["steps"] if word == "RUN")
    [venv] = re.findall(r"python3 -m venv (\S+)", runs)
    froms = [args for word, args in final["steps"] if word == "COPY" and "--from=" in args]
    assert froms == [f"--from=builder {venv} {venv}"]
    assert f"{venv}/bin/pip install --no-cache-dir /src" in runs
    # the entrypoint is the console script pyproject.toml declares, in that venv
    scripts = _pyproject()["project"]["scripts"]
    assert scripts == {"vip-agent": "agent.cli:entry"}
    [(_, entry)] = [(w, a) for w, a in final["steps"] if w == "ENTRYPOINT"]
    assert yaml.safe_load(entry) == [f"{venv}/bin/vip-agent", "run"], "exec form"
    packages = " ".join(args for word, args in final["steps"] if word == "RUN").split()
    for package in ("keepalived", "haproxy", "iproute2", "python3"):
        assert package in packages
    assert "python3-venv" in " ".join(a for w, a in builder["steps"] if w == "RUN")


def _pyproject() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_builder_stage_rehearsal_wheel_from_the_copied_files(tmp_path: Path) -> None:
    """Build the wheel from only what the Containerfile copies, and run the agent from it."""
    context = tmp_path / "src"
    context.mkdir()
    for source in copied_paths():
        src = ROOT / source
        if src.is_dir():
            shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, context / source)
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path / "w"),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if built.returncode != 0 and "hatchling" in built.stderr and "No matching" in built.stderr:
        unavailable(f"cannot fetch the build backend hatchling: {built.stderr[-300:]}")
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "w").glob("vip_agent-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "vip-agent = agent.cli:entry" in archive.read(entry_points).decode()
        assert {"agent/templates/keepalived.conf.j2", "agent/templates/haproxy.cfg.j2"} <= names
        archive.extractall(tmp_path / "site")
    args = ["render", "--dry-run", "--manifests", str(EXAMPLES / "cluster.yaml")]
    args += ["--config", str(EXAMPLES / "config.yaml")]
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    from_wheel = subprocess.run(
        [
            sys.executable,
            "-c",
            "import agent.cli, sys; print(agent.cli.__file__, file=sys.stderr);"
            "sys.argv[0] = 'vip-agent'; agent.cli.entry()",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert str(tmp_path / "site" / "agent" / "cli.py") in from_wheel.stderr
    checkout = subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert from_wheel.returncode == checkout.returncode == 0, from_wheel.stderr
    assert from_wheel.stdout == checkout.stdout


def manifest(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ROOT / "container" / name).read_text()) if d]


def test_daemonset_config_loads(tmp_path: Path) -> None:
    [config_map, daemonset] = manifest("daemonset.yaml")
    path = tmp_path / "config.yaml"
    path.write_text(config_map["data"]["config.yaml"])
    pod = daemonset["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == ["--config", "/etc/vip-agent/config.yaml"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert mount["mountPath"] == "/etc/vip-agent"
    settings = settings_mod.load(
        flags={},
        environ={"NODE_NAME": "n1", "VIP_AGENT_NODE_ADDRESS": "198.51.100.11"},
        config_file=path,
    )
    assert settings.metrics_address.endswith(":9808")
    probes = {container[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")}
    assert probes == {"/healthz", "/readyz"}
    assert {container[p]["httpGet"]["port"] for p in ("livenessProbe", "readinessProbe")} == {
        int(settings.metrics_address.rpartition(":")[2])
    }
    # the writable paths the agent uses are volumes (the root filesystem is read-only)
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    for where in (
        settings.run_dir,
        Path(settings.keepalived_config).parent,
        Path(settings.haproxy_config).parent,
    ):
        assert str(where) in mounted


def test_static_pod_environment_renders_the_control_plane_vip(tmp_path: Path) -> None:
    [pod] = manifest("static-pod.yaml")
    [container] = pod["spec"]["containers"]
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    env["VIP_AGENT_NODE_ADDRESS"] = "198.51.100.11"  # status.hostIP, from the downward API
    env["VIP_AGENT_INTERFACE"] = "eth0"
    assert env["VIP_AGENT_KUBERNETES"] == "false"
    empty = tmp_path / "no-objects.yaml"
    empty.write_text("")  # static mode: no cluster objects at all
    done = subprocess.run(
        [sys.executable, "-m", "agent", "render", "--dry-run", "--manifests", str(empty)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "virtual_router_id 51" in done.stdout and "192.0.2.10/32 dev eth0" in done.stdout
    assert "bind 192.0.2.10:8443 transparent" in done.stdout
    assert "unicast_src_ip 198.51.100.11" in done.stdout


def host_ports(name: str) -> set[int]:
    """The ports the agent of a (hostNetwork) manifest listens on: its metrics address
    and its probes."""
    docs = manifest(name)
    pod = next(d for d in docs if d["kind"] in ("DaemonSet", "Pod"))
    spec = pod["spec"]["template"]["spec"] if pod["kind"] == "DaemonSet" else pod["spec"]
    assert spec["hostNetwork"] is True
    [container] = spec["containers"]
    ports = {container[p]["httpGet"]["port"] for p in ("livenessProbe", "readinessProbe")}
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    config = next((d for d in docs if d["kind"] == "ConfigMap"), None)
    if "VIP_AGENT_METRICS_ADDRESS" in env:
        address = str(env["VIP_AGENT_METRICS_ADDRESS"])
    else:
        assert config is not None
        address = yaml.safe_load(config["data"]["config.yaml"])["metrics_address"]
    ports.add(int(address.rpartition(":")[2]))
    return ports


def test_static_pod_and_daemonset_can_share_a_control_plane_node() -> None:
    """Both are hostNetwork and the DaemonSet tolerates control-plane nodes, where the
    static pod runs: on one port the second agent exited "Address already in use" (found
    by tests/node/test_shipped_manifests.py under a real kubelet)."""
    assert len(host_ports("static-pod.yaml")) == 1
    assert not host_ports("static-pod.yaml") & host_ports("daemonset.yaml")


# --- the granted capabilities, in the lab ------------------------------------------------


def granted(name: str) -> list[str]:
    docs = manifest(name)
    pod = next(d for d in docs if d["kind"] in ("DaemonSet", "Pod"))
    spec = pod["spec"]["template"]["spec"] if pod["kind"] == "DaemonSet" else pod["spec"]
    [container] = spec["containers"]
    context = container["securityContext"]
    assert context["privileged"] is False and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    return sorted(context["capabilities"]["add"])


def test_both_manifests_grant_the_same_capabilities() -> None:
    assert granted("daemonset.yaml") == granted("static-pod.yaml")


def test_granted_capabilities_are_enough_for_vrrp_and_haproxy() -> None:
    reason = root_skip_reason()
    if reason:
        unavailable(reason)
    require_binaries("keepalived", "haproxy", "setpriv", "curl")
    caps = ",".join(["-all", *(f"+{c.lower()}" for c in granted("daemonset.yaml"))])
    vip = "192.0.2.10"
    with Lab(["n1", "n2"]) as lab:
        agents = []
        for host in lab.hosts.values():
            config = agent_config(
                host,
                control_plane_vip=vip,
                control_plane_backends=[h.address for h in lab.hosts.values()],
                advert_int=0.2,
            )
            agents.append(
                host.spawn(
                    [
                        *("setpriv", f"--bounding-set={caps}", "--inh-caps=-all"),
                        "--no-new-privs",
                        *(PYTHON, "-m", "agent", "run", "--config", str(config)),
                    ],
                    log=host.dir / "agent.log",
                )
            )
        wait_for(lambda: any(h.has(vip) for h in lab.hosts.values()), timeout=20, what="a master")
        for host in lab.hosts.values():
            wait_for(lambda h=host: ready(h), timeout=15, interval=0.2, what=f"{host.name} ready")
        # `ip netns exec` and setpriv exec (no fork): the spawned pid is the agent's
        for agent in agents:
            fields = dict(
                line.split(":\t", 1)
                for line in Path(f"/proc/{agent.pid}/status").read_text().splitlines()
            )
            assert "agent" in Path(f"/proc/{agent.pid}/cmdline").read_text()
            assert int(fields["CapBnd"], 16) == sum(
                1 << CAP_BITS[c] for c in granted("daemonset.yaml")
            )
            assert fields["NoNewPrivs"].strip() == "1"
        for host in lab.hosts.values():
            text = (host.dir / "agent.log").read_text()
            assert "Operation not permitted" not in text, text[-2000:]
        holder = next(h for h in lab.hosts.values() if h.has(vip))
        other = next(h for h in lab.hosts.values() if h is not holder)
        agents[list(lab.hosts).index(holder.name)].send_signal(signal.SIGTERM)
        wait_for(lambda: other.has(vip), timeout=5, what="failover under the restricted set")


def ready(host: Host) -> bool:
    """/readyz answers 200: the last apply passed and keepalived and haproxy both run."""
    port = (host.dir / "run" / "metrics.port").read_text().strip()
    url = f"http://127.0.0.1:{port}/readyz"
    return host.run("curl", "-sf", "-m", "5", url, check=False).returncode == 0


CAP_BITS = {"NET_BIND_SERVICE": 10, "NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13, "KILL": 5}
"""Bit numbers from linux/capability.h, for reading CapBnd in /proc/PID/status."""

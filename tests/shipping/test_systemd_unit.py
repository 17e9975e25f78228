"""systemd/vip-agent.service and systemd/config.yaml.example.

* ``systemd-analyze verify`` on the unit.  verify insists that ExecStart's binary exists,
  and /usr/bin/vip-agent does not on a development machine, so the unit is verified
  twice: as shipped, where the one complaint allowed is that missing binary, and as a
  copy whose ExecStart path (only that) points at the ``vip-agent`` installed with this
  checkout, where verify must print nothing at all.
* The agent really runs under the unit's restrictions that can be reproduced without
  systemd as PID 1: the capability bounding set (setpriv) and the system call filter
  (strace lists every call of the agent, ``keepalived -t`` and ``haproxy -c``; each must be
  in ``@system-service`` and none in the groups the unit denies).  ``--daemons none``
  stands in for ``--daemons systemd`` here: there is no systemd to reload units through,
  and systemctl asks PID 1 over a socket, which needs no capability.
  ProtectSystem= and the other mount options need systemd and are not exercised.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from ipaddress import ip_address
from pathlib import Path

import psutil
import yaml

from agent import settings as settings_mod
from labkit.checkers import root_skip_reason
from labkit.netlab import wait_for
from tests.conftest import ROOT
from tests.support.requirements import require_binaries, unavailable

UNIT = ROOT / "systemd" / "vip-agent.service"
EXAMPLE = ROOT / "systemd" / "config.yaml.example"
SHIPPED_BINARY = "/usr/bin/vip-agent"


def directives(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; systemd allows a key more than once."""
    out: list[tuple[str, str, str]] = []
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def values(key: str) -> list[str]:
    return [v for _, k, v in directives(UNIT) if k == key]


def installed_vip_agent() -> Path:
    path = Path(sys.executable).parent / "vip-agent"
    if not path.exists():
        unavailable(f"{path} not installed (make setup installs the checkout)")
    return path


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=false", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        unavailable("systemd-analyze not installed (apt-get install systemd)")
    copy = tmp_path / "vip-agent.service"
    text = UNIT.read_text()
    assert text.count(f"ExecStart={SHIPPED_BINARY} ") == 1
    copy.write_text(
        text.replace(f"ExecStart={SHIPPED_BINARY} ", f"ExecStart={installed_vip_agent()} ")
    )
    done = verify(copy)
    assert done.returncode == 0 and done.stderr == "" and done.stdout == "", done.stderr

    shipped = verify(UNIT)
    complaints = [line for line in shipped.stderr.splitlines() if line.strip()]
    if Path(SHIPPED_BINARY).exists():
        assert shipped.returncode == 0 and complaints == []
    else:
        assert complaints and all(
            f"Command {SHIPPED_BINARY} is not executable" in line for line in complaints
        ), complaints


def test_unit_says_what_the_design_needs() -> None:
    [exec_start] = values("ExecStart")
    assert exec_start.endswith("run --daemons systemd --config /etc/vip-agent/config.yaml")
    assert values("Type") == ["notify"]
    assert values("Restart") == ["always"] and values("RestartSec") == ["1"]
    assert "network-online.target" in values("After") and "network-online.target" in " ".join(
        values("Wants")
    )
    assert values("Before") == ["keepalived.service haproxy.service"]
    assert "keepalived.service haproxy.service" in values("Wants")
    assert values("ProtectSystem") == ["strict"]
    assert values("ReadWritePaths") == ["/etc/keepalived /etc/haproxy"]
    assert values("RuntimeDirectory") == ["vip-agent"]
    assert values("NoNewPrivileges") == ["yes"]
    assert values("CapabilityBoundingSet") == [""]
    # the settings the unit's paths must agree with
    defaults = settings_mod.Settings()
    for path in (defaults.keepalived_config, defaults.haproxy_config):
        assert path.startswith(("/etc/keepalived/", "/etc/haproxy/"))
    for path in (defaults.run_dir, defaults.health_file, defaults.vrrp_notify_fifo or ""):
        assert path.startswith("/run/vip-agent")


def test_config_example_loads_and_names_only_real_settings() -> None:
    loaded = settings_mod.load(flags={}, environ={}, config_file=EXAMPLE)
    assert loaded.control_plane_vip == ip_address("192.0.2.10")
    known = {f.name for f in settings_mod.fields()}
    mentioned = set(re.findall(r"^# ?([a-z_]+):", EXAMPLE.read_text(), re.M))
    mentioned |= set(yaml.safe_load(EXAMPLE.read_text()))
    assert mentioned - known == set()
    assert len(mentioned) >= 30, "the commonly used settings are all there"


# --- the agent under the unit's restrictions --------------------------------------------


def syscall_group(name: str, seen: set[str] | None = None) -> set[str]:
    """The system calls of a systemd group, nested groups expanded (systemd's own table)."""
    seen = set() if seen is None else seen
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager", name],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    calls: set[str] = set()
    for raw in out.splitlines()[1:]:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            if line not in seen:
                seen.add(line)
                calls |= syscall_group(line, seen)
        else:
            calls.add(line)
    return calls


def bounding_set() -> str:
    """The unit's CapabilityBoundingSet as a setpriv --bounding-set argument."""
    [caps] = values("CapabilityBoundingSet")
    return ",".join(["-all", *(f"+{c.lower().removeprefix('cap_')}" for c in caps.split())])


def test_agent_works_within_the_units_capabilities_and_system_calls(tmp_path: Path) -> None:
    reason = root_skip_reason()
    if reason:
        unavailable(reason)
    require_binaries("keepalived", "haproxy", "strace", "setpriv", "systemd-analyze")
    ns = f"vipagent-unit-{os.getpid()}"
    run = tmp_path / "run"
    # the agent watches its config file's directory: keep the trace and the log elsewhere
    (tmp_path / "conf").mkdir()
    (tmp_path / "out").mkdir()
    config = tmp_path / "conf" / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kubernetes": False,
                "node_name": "n1",
                "node_address": "198.51.100.11",
                "interface": "eth0",
                "daemons": "none",
                "run_dir": str(run),
                "keepalived_config": str(tmp_path / "etc" / "keepalived.conf"),
                "haproxy_config": str(tmp_path / "etc" / "haproxy.cfg"),
                "health_file": str(run / "apiserver.health"),
                "haproxy_stats_socket": str(run / "haproxy.sock"),
                "vrrp_notify_fifo": str(run / "vrrp.fifo"),
                "metrics_address": "127.0.0.1:0",
                "control_plane_vip": "192.0.2.10",
                "control_plane_backends": ["198.51.100.11"],
            }
        )
    )
    (tmp_path / "etc").mkdir()
    trace = tmp_path / "out" / "strace.out"
    log = tmp_path / "out" / "agent.log"
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
    proc: subprocess.Popen[bytes] | None = None
    try:
        for args in (
            ["link", "add", "eth0", "type", "veth", "peer", "name", "p0"],
            ["link", "set", "lo", "up"],
            ["link", "set", "eth0", "up"],
            ["addr", "add", "198.51.100.11/24", "dev", "eth0"],
        ):
            subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    *("ip", "netns", "exec", ns),
                    *("setpriv", f"--bounding-set={bounding_set()}", "--inh-caps=-all"),
                    *("strace", "-f", "-qq", "-o", str(trace)),
                    *(sys.executable, "-m", "agent", "run", "--config", str(config)),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: "applied" in log.read_text(), timeout=60, interval=0.1, what="apply")
        time.sleep(1.0)  # a few loop rounds, a status write, a metrics port
        assert (tmp_path / "etc" / "keepalived.conf").exists()
        assert (run / "status.json").exists() and (run / "metrics.port").exists()
        # the spawned pid is strace (ip netns exec and setpriv exec); stop the agent itself,
        # so its shutdown is traced too, and strace ends with it
        [agent] = psutil.Process(proc.pid).children()
        agent.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc is not None and proc.poll() is None:
            # the agent first: it outlives a killed strace (the tracee is just detached)
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in psutil.Process(proc.pid).children(recursive=True):
                    child.kill()
            proc.kill()
            proc.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
    text = log.read_text()
    assert "validation failed" not in text and "Traceback" not in text, text
    assert "keepalived" in trace.read_text() and "haproxy" in trace.read_text()
    used = set(re.findall(r"^\d+\s+([a-z_0-9]+)\(", trace.read_text(), re.M))
    assert {"execve", "openat", "write"} <= used, "the trace has the agent's calls"
    assert used - syscall_group("@system-service") == set()
    denied = set()
    for value in values("SystemCallFilter"):
        if value.startswith("~"):
            for group in value[1:].split():
                denied |= syscall_group(group)
    assert used & denied == set()

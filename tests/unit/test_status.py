"""The status file, ``vip-agent status`` on it, and the HTTP endpoint's health answers.

The two-node lab (tests/lab/test_operability_lab.py) runs the same against real agents;
here the document is built from a translated state so every field can be checked.
"""

from __future__ import annotations

import http.client
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.core.snapshot import Snapshot
from agent.core.translate import translate
from agent.daemons import ReloadOutcome
from agent.logs import redactor
from agent.reconcile import Status
from agent.settings import Settings
from agent.telemetry import status as status_mod
from agent.telemetry.metrics import Metrics, MetricsServer, liveness, parse_address, readiness
from agent.telemetry.vrrp_state import InstanceState
from labkit import objects

SECRET = "Pw0rd.x1"


def agent_status() -> Status:
    settings = Settings(
        interface="eth0",
        control_plane_vip="192.0.2.10",
        vrrp_version=2,
        auth_pass=SECRET,
        node_name="n1",
    )
    snapshot = Snapshot.from_objects([objects.configmap({"192.0.2.50": "", "192.0.2.300": ""})])
    state = translate(snapshot, settings, node_name="n1", interface="eth0")
    assert any(i.auth_pass == SECRET for i in state.instances)
    status = Status(reconciles=3, last_apply_ok=False, last_apply_wall=1000.0)
    status.state = state
    status.rejections = state.rejections
    status.last_error = f"validation failed: keepalived.conf: Unknown keyword '{SECRET}'"
    status.reload_outcomes["keepalived"] = ReloadOutcome(True, "reload complete", 0.2)
    return status


def document(pid: int) -> dict[str, object]:
    return status_mod.build(
        identity=status_mod.Identity(
            node="n1", interface="eth0", daemons="supervise", version="1.2.3", pid=pid
        ),
        status=agent_status(),
        vrrp={"control_plane": InstanceState("control_plane", "MASTER", 231, 990.0)},
        mismatches=[],
        apiserver_healthy=True,
        daemons_running={"keepalived": True, "haproxy": True},
        metrics_port=9808,
        redact=redactor([SECRET]),
        wall=1005.0,
    )


def test_document_holds_no_secret_and_is_written_atomically_0644(tmp_path: Path) -> None:
    doc = document(os.getpid())
    path = tmp_path / "status.json"
    status_mod.write(path, doc)
    text = path.read_text()
    assert SECRET not in text
    assert "<redacted>" in text, "the checker output was kept, redacted"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"], "no temp file left"
    back = status_mod.read(path)
    [cp, services] = back["instances"]
    assert (cp["name"], cp["vrrp_state"], cp["vrrp_priority"]) == ("control_plane", "MASTER", 231)
    assert cp["vips"] == ["192.0.2.10"]
    assert services["vrrp_state"] is None and services["vips"] == ["192.0.2.50"]
    assert back["rejections_total"] == 1
    assert back["rejections"][0]["code"] == "bad_address"
    assert back["last_apply"]["ok"] is False


def test_human_summary_with_live_addresses() -> None:
    import ipaddress

    doc = status_mod.live(document(os.getpid()), {ipaddress.ip_address("192.0.2.10")})
    text = status_mod.human(doc, now=1010.0)
    assert doc["running"] is False, "pytest is not a vip-agent"
    assert "NOT RUNNING" in text
    assert "holds: 192.0.2.10" in text
    assert "control_plane: MASTER, priority 231, vrid 51" in text
    assert "services_v4: UNKNOWN" in text and "holds none" in text
    assert "apiserver: healthy" in text
    assert "last apply: FAILED" in text and SECRET not in text
    assert "[bad_address] ConfigMap kube-system/vip-configmap key '192.0.2.300'" in text
    assert "cluster source: ok" in text


def test_a_failing_source_reaches_status_readiness_and_metrics() -> None:
    """The source's error (API unreachable, RBAC, a broken manifest) is not only logged."""
    error = f"API server unreachable (list services): token {SECRET}xx refused"
    doc = status_mod.build(
        identity=status_mod.Identity(
            node="n1", interface="eth0", daemons="none", version="1", pid=os.getpid()
        ),
        status=agent_status(),
        vrrp={},
        mismatches=[],
        apiserver_healthy=None,
        source_error=error,
        daemons_running={},
        metrics_port=None,
        redact=redactor([SECRET]),
        wall=1005.0,
    )
    assert (
        doc["source_error"] == "API server unreachable (list services): token <redacted>xx refused"
    )
    text = status_mod.human(doc, now=1010.0)
    assert "cluster source: FAILING (API server unreachable (list services)" in text
    assert SECRET not in text
    failing: list[str | None] = [error]
    ready = readiness(lambda: True, lambda: {}, source_error=lambda: failing[0])
    ok, why = ready()
    assert not ok and "cluster source failing" in why
    failing[0] = None
    assert ready() == (True, "ok")
    registry = CollectorRegistry()
    metrics = Metrics(registry, version="1")
    metrics.source_error(error)
    assert registry.get_sample_value("vip_agent_source_healthy") == 0
    metrics.source_error(None)
    assert registry.get_sample_value("vip_agent_source_healthy") == 1


def run_status(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "status", "--run-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_status_command_without_a_running_agent(tmp_path: Path) -> None:
    missing = run_status(tmp_path)
    assert missing.returncode == 2
    assert f"no status file at {tmp_path}/status.json" in missing.stderr
    assert "is vip-agent run running here?" in missing.stderr

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    status_mod.write(tmp_path / "status.json", document(int(dead.stdout)))
    stale = run_status(tmp_path)
    assert stale.returncode == 1
    assert "NOT RUNNING" in stale.stdout
    assert "is not running; this is the last status it wrote" in stale.stderr
    as_json = run_status(tmp_path, "--json")
    assert as_json.returncode == 1
    parsed = json.loads(as_json.stdout)
    assert parsed["running"] is False and parsed["node"] == "n1"

    (tmp_path / "status.json").write_text("{not json")
    broken = run_status(tmp_path)
    assert broken.returncode == 2 and "is not JSON" in broken.stderr


# --- HTTP -------------------------------------------------------------------------------


def get(port: int, path: str) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        conn.close()


def test_metrics_healthz_readyz_over_http() -> None:
    registry = CollectorRegistry()
    Metrics(registry, version="1.2.3")
    now = [100.0]
    beat: list[float | None] = [None]
    apply_ok: list[bool | None] = [None]
    running = {"keepalived": True, "haproxy": True}
    server = MetricsServer(
        "127.0.0.1:0",
        registry,
        healthz=liveness(lambda: beat[0], clock=lambda: now[0], started=90.0, max_age=60),
        readyz=readiness(lambda: apply_ok[0], lambda: running),
    )
    server.start()
    try:
        assert server.port > 0
        code, ctype, body = get(server.port, "/metrics")
        assert code == 200 and ctype.startswith("text/plain")
        assert 'vip_agent_build_info{version="1.2.3"} 1.0' in body
        assert get(server.port, "/healthz")[0] == 200  # starting, 10 s in
        now[0] = 200.0
        assert get(server.port, "/healthz")[:1] == (503,)  # never went round in 110 s
        beat[0] = 195.0
        assert get(server.port, "/healthz")[0] == 200
        now[0] = 300.0
        code, _, body = get(server.port, "/healthz")
        assert code == 503 and "loop stuck" in body
        code, _, body = get(server.port, "/readyz")
        assert code == 503 and "no configuration applied yet" in body
        apply_ok[0] = True
        assert get(server.port, "/readyz")[0] == 200
        running["haproxy"] = False
        code, _, body = get(server.port, "/readyz")
        assert code == 503 and "not running: haproxy" in body
        apply_ok[0] = False
        assert "last apply failed" in get(server.port, "/readyz")[2]
        assert get(server.port, "/nope")[0] == 404
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9808", ("127.0.0.1", 9808, 2)),
        ("0.0.0.0:0", ("0.0.0.0", 0, 2)),
        ("[::1]:9808", ("::1", 9808, 10)),
        (":9808", ("0.0.0.0", 9808, 2)),
    ],
)
def test_parse_address(address: str, expected: tuple[str, int, int]) -> None:
    host, port, family = parse_address(address)
    assert (host, port, int(family)) == expected

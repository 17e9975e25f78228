"""What operators see of real agents: metrics over HTTP, ``vip-agent status``, clean logs.

Two network namespaces on a bridge each run ``vip-agent run`` in static mode with real
keepalived and haproxy (labkit/netlab.py).  Metrics are scraped with curl from inside the
node's namespace, from the port the agent wrote to ``run_dir/metrics.port``; the VRRP
state in them comes from keepalived's own notify FIFO.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import stat

import pytest

from labkit.netlab import PYTHON, Host, Lab, agent_config, sample, scrape, start_agent, wait_for
from tests.conftest import ROOT

VIP = "192.0.2.10"
SECRET = "q7Zx.w9K"


pytestmark = pytest.mark.usefixtures("lab_ready")


def vrrp(host: Host, state: str) -> float | None:
    _, body = scrape(host)
    return sample(body, "vip_agent_vrrp_state", instance="control_plane", state=state)


def status(host: Host, *args: str) -> tuple[int, str, str]:
    done = host.run(
        PYTHON,
        "-m",
        "agent",
        "status",
        "--config",
        str(host.dir / "config.yaml"),
        *args,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def test_vrrp_state_in_metrics_and_status_follow_a_failover(pair: Lab) -> None:
    n1, n2 = pair["n1"], pair["n2"]
    # Priorities move while the agents start (the health prober's first verdicts change
    # the track file's weight), so the VIP may move once or twice: wait until one node is
    # MASTER and holds the VIP, the other BACKUP without it, unchanged for 2 s.
    seen: list[tuple[object, ...]] = []

    def settled() -> bool:
        now = (vrrp(n1, "MASTER"), vrrp(n2, "MASTER"), n1.has(VIP), n2.has(VIP))
        seen.append(now)
        good = now in ((1.0, 0.0, True, False), (0.0, 1.0, False, True))
        return good and len(seen) >= 10 and len(set(seen[-10:])) == 1

    wait_for(settled, timeout=30, interval=0.2, what="one MASTER with the VIP, one BACKUP")
    holder, other = (n1, n2) if n1.has(VIP) else (n2, n1)
    assert vrrp(other, "BACKUP") == 1 and vrrp(other, "FAULT") == 0
    for host in (holder, other):
        code, body = scrape(host)
        assert code == 200
        assert sample(body, "vip_agent_reconciles_total") is not None
        assert sample(body, "vip_agent_vips_managed") == 1
        assert (sample(body, "vip_agent_last_apply_success_timestamp_seconds") or 0) > 0
        assert sample(body, "vip_agent_renders_total", daemon="keepalived", result="changed") == 1
        assert scrape(host, "/healthz")[0] == 200
        wait_for(lambda h=host: scrape(h, "/readyz")[0] == 200, timeout=10, what="ready")
        mode = (host.dir / "run" / "status.json").stat().st_mode
        assert stat.S_IMODE(mode) == 0o644

    code, out, err = status(holder)
    assert code == 0, err
    assert "holds: 192.0.2.10" in out
    assert re.search(r"control_plane: MASTER, priority \d+, vrid 51, VIPs 192.0.2.10", out), out
    code, out, err = status(other)
    assert code == 0, err
    assert "holds: no VIPs" in out
    assert "control_plane: BACKUP" in out and "holds none" in out
    code, out, _ = status(holder, "--json")
    document = json.loads(out)
    assert document["running"] is True and document["held_vips"] == [VIP]
    assert document["instances"][0]["vrrp_state"] == "MASTER"
    assert document["last_apply"]["ok"] is True and document["node"] == holder.name

    # the holder's agent stops (keepalived with it): the other node's metrics see MASTER
    transitions = "vip_agent_vrrp_transitions_total"
    before = sample(scrape(other)[1], transitions, instance="control_plane", state="MASTER") or 0
    agent = pair.processes[list(pair.hosts).index(holder.name)]
    agent.send_signal(signal.SIGTERM)
    wait_for(lambda: vrrp(other, "MASTER") == 1, timeout=10, interval=0.1, what="failover")
    assert vrrp(other, "BACKUP") == 0
    _, body = scrape(other)
    assert sample(body, transitions, instance="control_plane", state="MASTER") == before + 1
    assert sample(
        body, "vip_agent_vrrp_vip_mismatch", instance="control_plane", problem="master_without_vip"
    ) in (None, 0.0)
    wait_for(lambda: "holds: 192.0.2.10" in status(other)[1], timeout=10, what="status moves")
    agent.wait(timeout=10)
    code, out, err = status(holder)
    assert code == 1 and "NOT RUNNING" in out and "is not running" in err
    assert "holds: no VIPs" in out


def test_no_secret_in_any_log_line_status_or_metrics() -> None:
    with Lab(["n1", "n2"]) as lab:
        for host, fmt in zip(lab.hosts.values(), ("text", "json"), strict=True):
            templates = host.dir / "templates"
            shutil.copytree(ROOT / "templates", templates)
            config = agent_config(
                host,
                control_plane_vip=VIP,
                control_plane_backends=[h.address for h in lab.hosts.values()],
                vrrp_version=2,
                advert_int=1,
                auth_pass=SECRET,
                log_format=fmt,
                templates=str(templates),
            )
            start_agent(host, config)
        wait_for(lambda: any(h.has(VIP) for h in lab.hosts.values()), timeout=20, what="a master")
        n1 = lab["n1"]
        live = (n1.dir / "etc" / "keepalived.conf").read_text()
        assert f"auth_pass {SECRET}" in live, "the secret is really in use"
        # a template that puts the password where keepalived -t quotes it back in its error
        template = n1.dir / "templates" / "keepalived.conf.j2"
        template.write_text(
            template.read_text() + "{% for i in instances %}\n{{ i.auth_pass }}\n{% endfor %}\n"
        )
        log = n1.dir / "agent.log"
        wait_for(lambda: "validation failed" in log.read_text(), timeout=15, what="rejected")
        failed = (n1.dir / "etc" / "keepalived.conf.failed").read_text()
        assert f"\n{SECRET}\n" in failed, "the checker did see the secret"
        for host in lab.hosts.values():
            wait_for(lambda h=host: scrape(h)[0] == 200, timeout=10, what="metrics")
            assert SECRET not in scrape(host)[1]
            assert SECRET not in (host.dir / "run" / "status.json").read_text()
        for proc in lab.processes:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
        text = log.read_text()
        assert "Unknown keyword '<redacted>'" in text
        json_lines = (lab["n2"].dir / "agent.log").read_text().splitlines()
        assert json_lines and all(json.loads(line)["msg"] is not None for line in json_lines)
        for host in lab.hosts.values():
            whole = (host.dir / "agent.log").read_text()
            assert "keepalived: " in whole, "keepalived's own output is in the log too"
            assert SECRET not in whole, f"{host.name}: the VRRP password reached the log"

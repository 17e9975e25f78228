"""A real haproxy under a low hard RLIMIT_NOFILE (agent.core.haproxy_fds).

haproxy runs as the agent runs it (master-worker, reloads on the master CLI) under
``prlimit --nofile=1700:1700``.  First haproxy alone, in a scratch namespace: it starts
with 50 PROXY listeners; the cluster then grows to 300 (1,500 descriptors for listeners
and checks).  The file rendered as before the budget makes the reload fail: haproxy
takes its floor of 100 connections, needs 1,739 and stops loading ("Cannot raise FD
limit to 1739, limit is 1700").  Rendered for the limit with room for 10 connections,
the same cluster reloads (with ``maxconn 80``).

Then the whole agent under that limit, with room for 100 connections: the cluster grows
past what fits, haproxy keeps reloading with the older Services' listeners, the newest
Services' are rejected by name (``vip-agent status``, the log, the metrics), and
keepalived.conf still applies: their VIPs are announced.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agent.apply import Target, apply
from agent.assets import template_dirs
from agent.core import render
from agent.core.translate import translate
from agent.daemons.haproxy import Haproxy, check_haproxy
from agent.settings import Settings
from labkit.checkers import ScratchNamespace
from labkit.fd_budget import proxy_cluster, proxy_objects, vip
from labkit.netlab import PYTHON, Host, Lab, agent_config, sample, scrape, wait_for

pytestmark = pytest.mark.usefixtures("lab_ready")

LIMIT = 1700


@pytest.fixture
def netns() -> Iterator[str]:
    ns = ScratchNamespace(f"vipagent-fd-{os.getpid()}")
    try:
        subprocess.run(["ip", "-n", ns.name, "link", "set", "lo", "up"], check=True)
        yield ns.name
    finally:
        ns.delete()


def rendered(run: Path, listeners: int, **limits: int) -> str:
    settings = Settings(
        interface="eth0",
        run_dir=str(run),
        haproxy_stats_socket=str(run / "haproxy.sock"),
        haproxy_hard_stop_after=5,
        **limits,  # type: ignore[arg-type]
    )
    state = translate(proxy_cluster(listeners), settings, node_name="n1", interface="eth0")
    return render.Renderer(template_dirs(None)).render(state)["haproxy.cfg"]


def install(config: Path, text: str) -> None:
    result = apply([Target("haproxy.cfg", config, 0o640, check_haproxy)], {"haproxy.cfg": text})
    assert result.ok, result.errors


def started(netns: str, run: Path, first: str) -> Haproxy:
    config = run / "haproxy.cfg"
    install(config, first)
    daemon = Haproxy(
        binary="haproxy",
        config=config,
        run_dir=run,
        prefix=["prlimit", f"--nofile={LIMIT}:{LIMIT}", "--", "ip", "netns", "exec", netns],
        confirm_timeout=20,
    )
    daemon.start()
    # the master answers on its CLI once the first worker runs
    daemon._processes_when_ready(deadline=time.monotonic() + 20)
    return daemon


def test_the_old_file_fails_to_reload_and_the_new_one_reloads(netns: str, tmp_path: Path) -> None:
    old = started(netns, tmp_path / "old", rendered(tmp_path / "old", 50))
    try:
        install(old.config, rendered(tmp_path / "old", 300))
        outcome = old.reload()
        assert not outcome.ok, outcome
        assert any(
            f"Cannot raise FD limit to 1739, limit is {LIMIT}" in line for line in old.child.lines
        ), old.child.lines[-20:]
    finally:
        old.stop()

    limits = {"haproxy_fd_limit": LIMIT, "haproxy_threads": 2, "haproxy_min_connections": 10}
    run = tmp_path / "new"
    new = started(netns, run, rendered(run, 50, **limits))
    try:
        grown = rendered(run, 300, **limits)
        assert f"    fd-hard-limit {LIMIT}\n    maxconn 80\n" in grown
        install(new.config, grown)
        outcome = new.reload()
        assert outcome.ok, (outcome, new.child.lines[-20:])
        info = new.master_command("@1 show info")
        assert "Maxconn: 80\n" in info and f"Maxsock: {LIMIT - 1}\n" in info, info
    finally:
        new.stop()


def publish(path: Path, listeners: int) -> None:
    """The cluster as the manifests source reads it: written aside, then renamed in."""
    aside = path.with_suffix(".tmp")
    aside.write_text(yaml.safe_dump_all(proxy_objects(listeners)))
    os.replace(aside, path)


def listening(host: Host) -> int:
    """Sockets listening on a Service VIP (192.0.2.0/24, ports 80 and 81) in ``host``."""
    lines = host.run("ss", "-Hltn").stdout.splitlines()
    return sum(1 for line in lines if re.search(r" 192\.0\.2\.\d+:8[01] ", line))


def test_a_growing_cluster_loses_only_its_newest_listeners_and_keeps_applying() -> None:
    """The whole agent under the hard limit (supervise: haproxy inherits it, one CPU so one
    thread): 1,700 - 33 - 3 - 2 x 100 leaves 1,464 descriptors, 292 listeners of 5."""
    with Lab(["n1"]) as lab:
        host = lab["n1"]
        manifests = host.dir / "manifests"
        manifests.mkdir()
        cluster = manifests / "cluster.yaml"
        publish(cluster, 290)  # 145 Services, 1,450 descriptors
        config = agent_config(host, manifests=[str(manifests)], real_server_check="none")
        limited = ["taskset", "-c", "0", "prlimit", f"--nofile={LIMIT}:{LIMIT}", "--"]
        host.spawn(
            [*limited, PYTHON, "-m", "agent", "run", "--config", str(config)],
            log=host.dir / "agent.log",
        )
        wait_for(lambda: listening(host) == 290, timeout=60, what="290 listeners")

        publish(cluster, 300)  # 5 more Services: the first fits, the 4 newest do not
        etc = host.dir / "etc"
        # keepalived.conf still applies: every VIP is announced, the cut ones' too
        wait_for(lambda: host.has(vip(149)), timeout=60, what="the newest Service's VIP")
        keepalived = (etc / "keepalived.conf").read_text()
        assert all(vip(i) in keepalived for i in range(150))
        wait_for(lambda: listening(host) == 292, timeout=30, what="292 listeners")
        text = (etc / "haproxy.cfg").read_text()
        assert text.count("\nlisten ") == 292 and f"    fd-hard-limit {LIMIT}\n" in text
        assert f"{vip(145)}:81 " in text and f"{vip(146)}:80 " not in text

        _, body = scrape(host)
        assert sample(body, "vip_agent_reloads_total", daemon="haproxy", result="ok")
        assert not sample(body, "vip_agent_reloads_total", daemon="haproxy", result="failed")
        assert sample(body, "vip_agent_rejected_inputs", kind="Service", reason="fd_budget") == 8
        done = host.run(PYTHON, "-m", "agent", "status", "--config", str(config), check=False)
        for i in range(146, 150):
            for p in "ab":
                named = f"Service default/svc-{i} key 'port {p}': haproxy has no file descriptors"
                assert named in done.stdout, done.stdout
        assert "svc-145 key" not in done.stdout
        log = (host.dir / "agent.log").read_text()
        assert "rejected: Service default/svc-149 key 'port b'" in log
        assert "Cannot raise FD limit" not in log and "RenderError" not in log

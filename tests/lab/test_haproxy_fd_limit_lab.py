"""A real haproxy under a low hard RLIMIT_NOFILE: the agent's haproxy.cfg reloads, or is
refused before it is written (agent.core.haproxy_fds).

haproxy runs as the agent runs it (agent.daemons.haproxy.Haproxy, master-worker, reloads
on the master CLI) in a scratch namespace, under ``prlimit --nofile=1700:1700``.  It
starts with 50 PROXY listeners; the cluster then grows to 300 (1,500 descriptors for
listeners and checks).  The file rendered as before this change makes the reload fail:
haproxy takes its floor of 100 connections, needs 1,739 and stops loading ("Cannot raise
FD limit to 1739, limit is 1700").  Rendered for the limit, the same cluster reloads
(with ``maxconn 80``), or, when that is fewer connections than haproxy_min_connections
allows, is refused before anything is written and the running haproxy is left alone.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.apply import Target, apply
from agent.assets import template_dirs
from agent.core import render
from agent.core.translate import translate
from agent.daemons.haproxy import Haproxy, check_haproxy
from agent.settings import Settings
from labkit.checkers import ScratchNamespace
from labkit.fd_budget import proxy_cluster

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


def test_a_cluster_that_cannot_fit_is_refused_and_haproxy_keeps_running(
    netns: str, tmp_path: Path
) -> None:
    limits = {"haproxy_fd_limit": LIMIT, "haproxy_threads": 2}  # at least 100 connections
    first = rendered(tmp_path, 50, **limits)
    daemon = started(netns, tmp_path, first)
    try:
        with pytest.raises(render.RenderError, match="300 listeners and 1200 health checks"):
            rendered(tmp_path, 300, **limits)
        assert daemon.config.read_text() == first
        assert daemon.reload().ok  # the running configuration still reloads
    finally:
        daemon.stop()

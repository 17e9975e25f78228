"""`vip-agent run` with real keepalived and haproxy in network namespaces (supervise mode).

Two nodes on a bridge run the whole agent in static mode (no cluster): the control-plane
VIP floats between them by real VRRP.  What a node operator relies on is checked by
watching the interface addresses: a crash of the agent never flaps the VIP, a killed
keepalived comes back, SIGTERM hands the VIP over at once, and a broken configuration
never replaces a working one.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import yaml

from agent.daemons.process import read_pid
from labkit.netlab import (
    Host,
    Lab,
    VipWatch,
    agent_config,
    sample,
    scrape,
    start_agent,
    wait_for,
)
from labkit.objects import configmap, endpoint, endpoint_slice, port, service
from tests.conftest import ROOT

VIP = "192.0.2.10"


pytestmark = pytest.mark.usefixtures("lab_ready")


def holder_and_other(lab: Lab) -> tuple[Host, Host]:
    n1, n2 = lab["n1"], lab["n2"]
    # the preferred master is fixed by the rendezvous priorities; let a first election settle
    time.sleep(1.0)
    return (n1, n2) if n1.has(VIP) else (n2, n1)


def keepalived_pid(host: Host) -> int:
    pid = read_pid(host.dir / "run" / "keepalived.pid")
    assert pid is not None
    return pid


def test_agent_sigkill_keeps_the_vip_and_restart_adopts_without_flap(pair: Lab) -> None:
    holder, _ = holder_and_other(pair)
    agent = pair.processes[list(pair.hosts).index(holder.name)]
    before = keepalived_pid(holder)
    # netlink, every 5 ms over a socket kept open (polling with `ip` under a loaded
    # machine counted its own failures as a missing VIP)
    watch = VipWatch(pair, VIP, list(pair.hosts))
    try:
        killed = time.time()
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=5)
        time.sleep(1.5)  # the daemons carry on alone
        restarted = start_agent(holder, holder.dir / "config.yaml")
        log = holder.dir / "agent.log"
        wait_for(lambda: "adopted running pid" in log.read_text(), timeout=10, what="adoption")
        time.sleep(1.5)
        away = watch.longest(killed, lambda h: holder.name not in h)
    finally:
        watch.close()
    assert restarted.poll() is None
    assert keepalived_pid(holder) == before, "keepalived was restarted, not adopted"
    assert away == 0.0, f"the VIP left {holder.name} for {away:.3f} s"
    # adopted daemons stop about as fast as its own children (their exits are init's to
    # reap: waiting for the zombies to go took 3.5 s per daemon)
    stopping = time.monotonic()
    restarted.send_signal(signal.SIGTERM)
    assert restarted.wait(timeout=10) == 0
    assert time.monotonic() - stopping < 3.0


def test_killed_keepalived_comes_back_and_sigterm_releases_the_vip(pair: Lab) -> None:
    holder, other = holder_and_other(pair)
    old = keepalived_pid(holder)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: other.has(VIP), timeout=5, what="backup takes over")
    wait_for(
        lambda: read_pid(holder.dir / "run" / "keepalived.pid") not in (None, old),
        timeout=10,
        what="supervisor restarts keepalived",
    )
    # the preferred node preempts back once its keepalived runs again
    wait_for(lambda: holder.has(VIP), timeout=10, what="VIP returns to the preferred node")
    log_text = (holder.dir / "agent.log").read_text()
    deaths = len(re.findall(r"keepalived: pid \d+ exited; restarting", log_text))
    # one fault, one restart: the orphaned VRRP child is killed with its dead parent,
    # so the new keepalived does not find it running and die too
    assert deaths == 1, log_text
    assert "ended the children it left running" in log_text
    _, body = scrape(holder)
    assert sample(body, "vip_agent_daemon_restarts_total", daemon="keepalived") == 1
    assert sample(body, "vip_agent_daemon_restarts_total", daemon="haproxy") == 0

    agent = pair.processes[list(pair.hosts).index(holder.name)]
    agent.send_signal(signal.SIGTERM)
    released = wait_for(lambda: not holder.has(VIP), timeout=1.0, interval=0.01, what="release")
    assert released < 1.0
    wait_for(lambda: other.has(VIP), timeout=2, what="peer takes the VIP")
    agent.wait(timeout=10)
    assert agent.returncode == 0


def test_broken_template_keeps_the_running_config_until_fixed(tmp_path: Path) -> None:
    with Lab(["n1"]) as lab:
        host = lab["n1"]
        templates = host.dir / "templates"
        shutil.copytree(ROOT / "templates", templates)
        manifests = host.dir / "manifests"
        manifests.mkdir()
        objects = [
            configmap({"192.0.2.50": "default/web"}),
            service("web", [port("http", 80, 8080)]),
            endpoint_slice("web", [port("http", 8080)], [endpoint("203.0.113.5")]),
        ]
        (manifests / "cluster.yaml").write_text(yaml.safe_dump_all(objects))
        config = agent_config(
            host, templates=str(templates), manifests=[str(manifests)], real_server_check="none"
        )
        start_agent(host, config)
        wait_for(lambda: host.has("192.0.2.50"), timeout=15, what="VIP up")
        live = host.dir / "etc" / "keepalived.conf"
        good = live.read_text()
        pid = keepalived_pid(host)

        template = templates / "keepalived.conf.j2"
        template.write_text(template.read_text() + "\nno_such_keyword {{ router_id }}\n")
        failed = live.with_name("keepalived.conf.failed")
        wait_for(failed.exists, timeout=10, what=".failed written")
        log = host.dir / "agent.log"
        wait_for(lambda: "validation failed" in log.read_text(), timeout=5, what="reported")
        assert live.read_text() == good
        assert "no_such_keyword" in failed.read_text()
        assert keepalived_pid(host) == pid and host.has("192.0.2.50")

        template.write_text((ROOT / "templates" / "keepalived.conf.j2").read_text())
        objects[0] = configmap({"192.0.2.50": "default/web", "192.0.2.51": ""})
        (manifests / "cluster.yaml").write_text(yaml.safe_dump_all(objects))
        wait_for(lambda: host.has("192.0.2.51"), timeout=15, what="valid change applies")
        assert not failed.exists()
        assert keepalived_pid(host) == pid, "a reload, not a restart"
        assert os.stat(live).st_mode & 0o777 == 0o600


def test_killed_vrrp_child_releases_the_vip_before_the_peer_takes_it(pair: Lab) -> None:
    """keepalived respawns a dead VRRP child after 0, 1, 2 s; the addresses it held must
    not stay meanwhile, or the VIP is on two nodes once the peer takes over."""
    holder_and_other(pair)
    watch = VipWatch(pair, VIP, list(pair.hosts))
    killed_on = []
    try:
        started = time.time()
        for _ in range(3):  # the respawn delay grows with each death
            master = pair[next(iter(watch.current()))]
            killed_on.append(master)
            os.kill(read_pid(master.dir / "run" / "keepalived_vrrp.pid") or 0, signal.SIGKILL)
            released = functools.partial(lambda name: name not in watch.current(), master.name)
            wait_for(released, timeout=1, what="the killed node releases the VIP")
            wait_for(lambda: len(watch.current()) == 1, timeout=5, what="a new master")
            time.sleep(2.5)  # the dead node's VRRP is back, and it may preempt again
        two_holders = watch.longest(started, lambda h: len(h) > 1)
        no_holder = watch.longest(started, lambda h: not h)
    finally:
        watch.close()
    # a preemption hands over in milliseconds (the new master adds the VIP as the old one
    # hears its advert); without the release the dead child's VIP stayed 1-2 s
    assert two_holders < 0.1, f"the VIP was on both nodes for {two_holders:.3f} s"
    assert no_holder < 1.0
    for host in killed_on:
        assert "releasing this node's VIPs now" in (host.dir / "agent.log").read_text()


def test_a_lab_takes_its_directory_with_it_unless_it_failed(lab_ready: None) -> None:
    """Labs are made by the hundred in a CI run: a clean one leaves nothing in /tmp, a
    failed one leaves its logs."""
    with Lab(["n1"]) as lab:
        clean = lab.root
        assert clean.is_dir()
    assert not clean.exists()
    with pytest.raises(RuntimeError, match="a failing test"), Lab(["n1"]) as lab:
        failed = lab.root
        raise RuntimeError("a failing test")
    try:
        assert (failed / "n1").is_dir(), "the failed lab's host directories stay"
    finally:
        shutil.rmtree(failed, ignore_errors=True)

"""haproxy's file descriptor budget: the arithmetic, which PROXY listeners fit (first come
first served: the apiserver frontend, the vip-configmap, then Services oldest first), what
the template says, and where the limit comes from (agent.core.haproxy_fds,
agent.daemons.haproxy.fd_limit)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from agent.assets import template_dirs
from agent.core import haproxy_fds, render
from agent.core.model import DesiredState, IPAddress, Reason
from agent.core.snapshot import Snapshot
from agent.core.translate import translate
from agent.daemons.haproxy import fd_limit, threads, with_fd_limit
from agent.settings import Daemons, Settings
from labkit.fd_budget import proxy_cluster
from labkit.objects import configmap, endpoint, endpoint_slice, node, port, service


def haproxy_cfg(listeners: int, **settings: object) -> str:
    s = Settings(interface="eth0", **settings)  # type: ignore[arg-type]
    state = translate(proxy_cluster(listeners), s, node_name="n1", interface="eth0")
    return render.Renderer(template_dirs(None)).render(state)["haproxy.cfg"]


def test_the_count_is_what_haproxy_reported_for_the_benchmark_that_could_not_reload() -> None:
    # bench/daemon_reload_cost.py: 5,000 listeners, 4 checked servers each, 2 threads;
    # haproxy: "Cannot raise FD limit to 25239, limit is 20000" (its floor: 100 connections)
    with pytest.raises(haproxy_fds.FdBudgetError) as err:
        haproxy_fds.budget(
            listeners=5000, checks=20000, limit=20000, min_connections=100, threads=2
        )
    assert str(err.value).startswith(
        "haproxy.cfg refused: 5000 listeners and 20000 health checks (2 threads) need 25039 "
        "file descriptors, and at least 100 connections (haproxy_min_connections) 2 more "
        "each: 25239 in all, but haproxy may open 20000 (haproxy_fd_limit"
    )


@pytest.mark.parametrize(
    ("listeners", "checks", "limit"),
    # haproxy 2.6.12, show info: Maxsock 289 / 739 / 1739 at these sizes with 100 conns
    [(10, 40, 289), (100, 400, 739), (300, 1200, 1739)],
)
def test_room_for_the_floor_exactly_at_the_size_haproxy_measured(
    listeners: int, checks: int, limit: int
) -> None:
    fits = haproxy_fds.budget(
        listeners=listeners, checks=checks, limit=limit, min_connections=100, threads=2
    )
    assert fits.maxconn is None  # haproxy derives 100 by itself, and it fits
    with pytest.raises(haproxy_fds.FdBudgetError):
        haproxy_fds.budget(
            listeners=listeners, checks=checks, limit=limit - 1, min_connections=100, threads=2
        )


def test_below_haproxys_floor_the_maxconn_that_fits_is_rendered() -> None:
    # 300 listeners, 1,200 checks, limit 1,700: haproxy alone would take 100 connections
    # and need 1,739; with room for 10 allowed, maxconn is what fits
    b = haproxy_fds.budget(listeners=300, checks=1200, limit=1700, min_connections=10, threads=2)
    assert b.maxconn == (1700 - 1539) // 2 == 80
    assert haproxy_fds.FIXED + 300 + 1200 + 3 * 2 + 2 * b.maxconn <= 1700
    with pytest.raises(haproxy_fds.FdBudgetError):
        haproxy_fds.budget(listeners=300, checks=1200, limit=1700, min_connections=81, threads=2)


def test_without_a_known_thread_count_the_most_haproxy_starts_is_counted() -> None:
    b = haproxy_fds.budget(listeners=0, checks=0, limit=10000, min_connections=100)
    assert b.threads == 64 and b.fixed == haproxy_fds.FIXED + 3 * 64


def test_an_unknown_limit_renders_the_global_section_as_before() -> None:
    text = haproxy_cfg(4)
    assert "fd-hard-limit" not in text and "maxconn" not in text


def test_a_known_limit_is_rendered_and_maxconn_left_to_haproxy_when_it_fits() -> None:
    text = haproxy_cfg(4, haproxy_fd_limit=20000, haproxy_threads=2)
    assert "    fd-hard-limit 20000\n" in text
    assert "maxconn" not in text  # it would change with every endpoint: see the module


def test_a_tight_limit_renders_the_maxconn_that_fits() -> None:
    # 300 listeners x (1 + 4 checks) = 1,500
    text = haproxy_cfg(300, haproxy_fd_limit=1700, haproxy_threads=2, haproxy_min_connections=10)
    assert text.count("\nlisten ") == 300
    assert "    fd-hard-limit 1700\n    maxconn 80\n" in text


def test_a_cluster_past_its_budget_keeps_the_listeners_that_fit_in_admission_order() -> None:
    # 300 listeners x 5 under 1,700 with 2 threads and 100 connections: 1,461 left for
    # listeners and checks, 292 listeners; the newest 4 Services' 8 are rejected, and
    # the file renders
    s = Settings(interface="eth0", haproxy_fd_limit=1700, haproxy_threads=2)
    state = translate(proxy_cluster(300), s, node_name="n1", interface="eth0")
    assert len(state.listeners) == 292
    assert cut(state) == [f"default/svc-{i} port {p}" for i in range(146, 150) for p in "ab"]
    text = render.Renderer(template_dirs(None)).render(state)["haproxy.cfg"]
    assert text.count("\nlisten ") == 292 and "maxconn" not in text


# --- the cut, first come first served ----------------------------------------------

CP_NODES = [node("cp-1", "198.51.100.11", control_plane=True), node("n1", "198.51.100.21")]


def limits(budget: int) -> dict[str, int]:
    """Settings that leave exactly ``budget`` descriptors for listeners and checks."""
    threads = 1 if budget % 2 == 0 else 2
    min_connections = (256 - haproxy_fds.FIXED - 3 * threads - budget) // 2
    out = {
        "haproxy_fd_limit": 256,
        "haproxy_threads": threads,
        "haproxy_min_connections": min_connections,
    }
    assert haproxy_fds.room(limit=256, min_connections=min_connections, threads=threads) == budget
    return out


def proxy_lb(name: str, vip: str, *, created: str, servers: int = 2) -> list[dict[str, Any]]:
    """A PROXY LoadBalancer Service on ``vip`` port 80 with ``servers`` endpoints: it
    costs haproxy 1 + ``servers`` descriptors."""
    svc = service(
        name,
        [port("http", 80, 8080)],
        annotations={"kube-vip.io/loadbalancerIPs": vip, "vip-agent.io/method": "PROXY"},
        type="LoadBalancer",
    )
    svc["metadata"].update(creationTimestamp=created, uid=f"uid-{name}")
    backends = [endpoint(f"10.0.{len(name)}.{i + 1}") for i in range(servers)]
    return [svc, endpoint_slice(name, [port("http", 8080)], backends)]


def run(objs: list[dict[str, Any]], *, node_name: str = "n1", **settings: Any) -> DesiredState:
    s = Settings(interface="eth0", **settings)
    return translate(Snapshot.from_objects(objs), s, node_name=node_name, interface="eth0")


def held(state: DesiredState) -> set[IPAddress]:
    return {v for i in state.instances for v in (*i.vips, *i.excluded_vips)}


def kept(state: DesiredState) -> list[str]:
    return [lst.service for lst in state.listeners]


def cut(state: DesiredState) -> list[str]:
    return [f"{r.obj} {r.key}" for r in state.rejections if r.code is Reason.FD_BUDGET]


OLD, NEW = "2024-01-01T00:00:00Z", "2024-06-01T00:00:00Z"


def test_the_older_service_keeps_its_listener_and_the_newer_is_rejected() -> None:
    # the newer one sorts first by name and by VIP: only admission order decides
    objs = [
        *proxy_lb("b-old", "192.0.2.20", created=OLD),
        *proxy_lb("a-new", "192.0.2.10", created=NEW),
    ]
    state = run(objs, **limits(5))
    assert kept(state) == ["default/b-old:http"]
    assert cut(state) == ["default/a-new port http"]
    # and the newer one's VIP stays announced, as a Service without endpoints
    assert ipaddress.ip_address("192.0.2.10") in held(state)
    files = render.Renderer(template_dirs(None)).render(state)
    assert "192.0.2.10" in files["keepalived.conf"] and "192.0.2.10" not in files["haproxy.cfg"]


def test_the_vip_configmap_comes_before_every_service() -> None:
    asked = service("z-cm", [port("http", 80, 8080)])
    asked["metadata"].update(creationTimestamp=NEW)
    objs = [
        configmap({"192.0.2.30": "default/z-cm:PROXY"}),
        asked,
        endpoint_slice("z-cm", [port("http", 8080)], [endpoint("10.0.9.1"), endpoint("10.0.9.2")]),
        *proxy_lb("a-old", "192.0.2.10", created=OLD),
    ]
    state = run(objs, **limits(5))
    assert kept(state) == ["default/z-cm:http"]
    assert cut(state) == ["default/a-old port http"]


def test_the_apiserver_frontend_fits_first() -> None:
    objs = [*CP_NODES, *proxy_lb("a-old", "192.0.2.10", created=OLD)]
    # the frontend: 1 + 1 apiserver; the listener: 1 + 2
    fits = run(objs, node_name="cp-1", control_plane_vip="192.0.2.5", **limits(5))
    assert fits.apiserver is not None and kept(fits) == ["default/a-old:http"]
    short = run(objs, node_name="cp-1", control_plane_vip="192.0.2.5", **limits(4))
    assert short.apiserver is not None and kept(short) == []
    [why] = [str(r) for r in short.rejections if r.code is Reason.FD_BUDGET]
    assert "the apiserver frontend and earlier listeners take the rest of the 4" in why
    render.Renderer(template_dirs(None)).render(short)  # the frontend fits: it renders


def test_only_the_apiserver_frontend_not_fitting_refuses_the_file() -> None:
    state = run(CP_NODES, node_name="cp-1", control_plane_vip="192.0.2.5", **limits(1))
    with pytest.raises(render.RenderError, match="1 listeners and 1 health checks"):
        render.Renderer(template_dirs(None)).render(state)


def test_the_boundary_is_exact() -> None:
    objs = [*proxy_lb("a", "192.0.2.10", created=OLD), *proxy_lb("b", "192.0.2.20", created=NEW)]
    at = run(objs, **limits(6))
    assert kept(at) == ["default/a:http", "default/b:http"] and cut(at) == []
    below = run(objs, **limits(5))
    assert kept(below) == ["default/a:http"] and cut(below) == ["default/b port http"]


def test_nothing_is_cut_or_walked_when_everything_fits() -> None:
    state = run(proxy_lb("a", "192.0.2.10", created=OLD))
    assert state.listener_checks == 2
    listeners = state.listeners
    common = {"order": [], "apiserver": None, "min_connections": 100, "threads": 2}
    assert haproxy_fds.fit(listeners, checks=2, limit=20000, **common) == (listeners, 2, [])
    assert haproxy_fds.fit(listeners, checks=2, limit=None, **common)[0] is listeners


def test_a_later_listener_that_fits_is_kept_past_one_that_does_not() -> None:
    # first come first served, as VIP:port slots are: a big Service in the middle costs
    # itself, not every Service created after it
    objs = [
        *proxy_lb("a", "192.0.2.10", created=OLD),
        *proxy_lb("big", "192.0.2.20", created="2024-03-01T00:00:00Z", servers=10),
        *proxy_lb("c", "192.0.2.30", created=NEW),
    ]
    state = run(objs, **limits(6))
    assert kept(state) == ["default/a:http", "default/c:http"]
    assert cut(state) == ["default/big port http"]


def test_the_rejection_names_the_service_the_port_and_what_to_do() -> None:
    objs = [*proxy_lb("a", "192.0.2.10", created=OLD), *proxy_lb("b", "192.0.2.20", created=NEW)]
    [rejection] = [r for r in run(objs, **limits(5)).rejections if r.code is Reason.FD_BUDGET]
    assert str(rejection) == (
        "Service default/b key 'port http': haproxy has no file descriptors left for the "
        "listener on 192.0.2.20 port 80: it needs 3 (1 and 1 per health check), and earlier "
        "listeners take the rest of the 5 that its limit of 256 leaves for listeners and "
        "health checks; the VIP stays announced without this listener; raise haproxy's "
        "LimitNOFILE or haproxy_fd_limit"
    )


def test_the_limit_is_the_setting_the_agents_hard_limit_or_the_units() -> None:
    def hard(n: int) -> tuple[int, int]:
        return (1024, n)

    supervise = Settings(daemons=Daemons.SUPERVISE)
    systemd = Settings(daemons=Daemons.SYSTEMD)
    assert fd_limit(supervise, rlimit=lambda: hard(20000)) == 20000
    assert fd_limit(Settings(haproxy_fd_limit=4096), rlimit=lambda: hard(20000)) == 4096
    assert fd_limit(systemd, systemctl_show=lambda unit, prop: "524288") == 524288
    assert fd_limit(systemd, systemctl_show=lambda unit, prop: "infinity") is None
    assert fd_limit(systemd, systemctl_show=lambda unit, prop: None) is None
    assert fd_limit(Settings(daemons=Daemons.NONE)) is None


def test_threads_are_the_cpus_under_supervise_and_unknown_otherwise() -> None:
    assert threads(Settings(daemons=Daemons.SUPERVISE), cpus=lambda: 8) == 8
    assert threads(Settings(daemons=Daemons.SUPERVISE), cpus=lambda: 256) == 64
    assert threads(Settings(daemons=Daemons.SYSTEMD)) is None
    assert threads(Settings(daemons=Daemons.SYSTEMD, haproxy_threads=4)) == 4


def test_with_fd_limit_fills_in_what_was_found() -> None:
    s = with_fd_limit(Settings(daemons=Daemons.SYSTEMD), systemctl_show=lambda u, p: "65536")
    assert (s.haproxy_fd_limit, s.haproxy_threads) == (65536, None)
    unchanged = Settings(daemons=Daemons.NONE)
    assert with_fd_limit(unchanged) is unchanged

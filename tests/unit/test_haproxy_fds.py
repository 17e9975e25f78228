"""haproxy's file descriptor budget: the arithmetic, what the template says, and where the
limit comes from (agent.core.haproxy_fds, agent.daemons.haproxy.fd_limit)."""

from __future__ import annotations

import pytest

from agent.assets import template_dirs
from agent.core import haproxy_fds, render
from agent.core.translate import translate
from agent.daemons.haproxy import fd_limit, threads, with_fd_limit
from agent.settings import Daemons, Settings
from labkit.fd_budget import proxy_cluster


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


def test_a_file_that_cannot_fit_is_refused_naming_the_counts_and_settings() -> None:
    with pytest.raises(render.RenderError, match="300 listeners and 1200 health checks") as err:
        haproxy_cfg(300, haproxy_fd_limit=1700, haproxy_threads=2)
    assert "haproxy_min_connections" in str(err.value)
    assert "haproxy_fd_limit" in str(err.value)


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

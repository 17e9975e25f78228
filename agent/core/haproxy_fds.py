"""Pure: how many file descriptors a rendered haproxy.cfg needs, and whether it fits.

haproxy 2.6 sizes itself at start (and at every master-worker reload, which re-executes
the master and starts a new worker) as ``maxsock``::

    maxsock = FIXED + listeners + health checks + 3 x threads + 2 x maxconn

(one descriptor per bound listener, one reserved per server with ``check``, an epoll fd
and a wake-up pipe per thread, two per connection; no pipes: nothing here splices).
The shell says how many threads haproxy runs (one per CPU it is bound to); when it
cannot, the most haproxy starts is counted.
``FIXED`` is what this template's global section costs: 33 with haproxy 2.6.12 (its 10
reserved, the stats socket's 10 connections, the master CLI pair...), read from
``show info`` (``Maxsock``) at several sizes.  Without ``maxconn`` haproxy derives it from
the limit: ``(limit - everything else) / 2``, but never less than 100 connections; it then
raises RLIMIT_NOFILE to ``maxsock`` and, under the default ``strict-limits``, refuses to
start when the hard limit is lower: "Cannot raise FD limit to 25239, limit is 20000"
(5,000 listeners with 4 checked servers each under a hard limit of 20,000).  A reload
that fails so leaves the old worker serving the old configuration, and the master in its
wait mode.

So the agent, which knows the listener and check counts and the limit haproxy runs under,
decides before it renders.  Translation (:func:`fit`) keeps the PROXY listeners that fit
first come first served, as it gives out VIP:port slots: the apiserver frontend first,
then each request's listeners in admission order (vip-configmap entries, then Services
oldest first), each costing one descriptor and one per checked server.  A listener that
does not fit is left out with a rejection naming its Service and port (a later, smaller
one may still fit), and everything else still applies.  Its VIP stays announced, held
without that listener as a Service without endpoints is.  One tenant's Service with many
ports, or a cluster that grows, so costs the newest listeners, not every configuration
update on the node.  The budget is what remains for listeners and checks once threads
and ``min_connections`` connections have theirs.  The common case, everything fits,
costs one comparison: translation counts the checks as it forwards
(agent.core.translate.passes), and only a cut walks the listeners.

Render then writes ``fd-hard-limit`` (haproxy never sizes itself past the limit the agent
counted with) and, only when haproxy's floor of 100 connections would not fit, an
explicit ``maxconn`` that does.  It refuses the file (:class:`FdBudgetError`) only for
what cannot be cut: the apiserver frontend alone not fitting.

``maxconn`` is left to haproxy otherwise: it changes with every endpoint added or
removed, and a changed global section makes the incremental check (agent.validate) check
the whole file; haproxy's own derivation is the same number.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from agent.core.grammar import ip_text
from agent.core.model import (
    ApiserverProxy,
    DesiredState,
    ProxyListener,
    Reason,
    Rejection,
)

FIXED = 33
"""Descriptors the template's global section costs haproxy 2.6 (``show info`` Maxsock
less the parts counted below)."""
MAX_THREADS = 64
"""Threads counted when the shell does not know how many haproxy runs: it starts one per
CPU it is bound to, up to Debian's build's MAX_THREADS of 64."""
HAPROXY_FLOOR = 100
"""haproxy's DEFAULT_MAXCONN: the least it derives by itself, fitting or not."""


class FdBudgetError(ValueError):
    """haproxy cannot load the configuration within its file descriptor limit."""


@dataclass(frozen=True)
class FdBudget:
    """What the rendered haproxy.cfg costs and what the global section says about it."""

    listeners: int
    checks: int
    limit: int
    threads: int
    fixed: int
    """Descriptors needed before any connection (listeners, checks, threads, FIXED)."""
    maxconn: int | None
    """Rendered ``maxconn``; None: haproxy derives it (at least 100, and it fits)."""


def counts(state: DesiredState) -> tuple[int, int]:
    """(listeners, servers with a health check) of the haproxy.cfg the template renders:
    every PROXY listener and the apiserver frontend, every server of them is checked."""
    listeners = len(state.listeners)
    checks = state.listener_checks
    if state.apiserver is not None:
        listeners += 1
        checks += len(state.apiserver.servers)
    return listeners, checks


def budget(
    *, listeners: int, checks: int, limit: int, min_connections: int, threads: int = MAX_THREADS
) -> FdBudget:
    """The global limits for haproxy.cfg, or FdBudgetError when it cannot fit in ``limit``."""
    fixed = FIXED + listeners + checks + 3 * threads
    if listeners + checks > room(limit=limit, min_connections=min_connections, threads=threads):
        raise FdBudgetError(
            f"haproxy.cfg refused: {listeners} listeners and {checks} health checks "
            f"({threads} threads) need {fixed} file descriptors, and at least "
            f"{min_connections} connections (haproxy_min_connections) 2 more each: "
            f"{fixed + 2 * min_connections} in all, but haproxy may open {limit} "
            "(haproxy_fd_limit, its hard RLIMIT_NOFILE); raise haproxy's LimitNOFILE, "
            "or serve fewer PROXY Services from this node"
        )
    connections = (limit - fixed) // 2
    maxconn = connections if connections < HAPROXY_FLOOR else None
    return FdBudget(
        listeners=listeners,
        checks=checks,
        limit=limit,
        threads=threads,
        fixed=fixed,
        maxconn=maxconn,
    )


def for_state(state: DesiredState) -> FdBudget | None:
    """The budget of ``state``'s haproxy.cfg; None when the limit is not known."""
    if state.haproxy_fd_limit is None:
        return None
    listeners, checks = counts(state)
    return budget(
        listeners=listeners,
        checks=checks,
        limit=state.haproxy_fd_limit,
        min_connections=state.haproxy_min_connections,
        threads=state.haproxy_threads or MAX_THREADS,
    )


def room(*, limit: int, min_connections: int, threads: int | None) -> int:
    """Descriptors left for listeners and health checks under ``limit`` once the global
    section, the threads and ``min_connections`` connections have theirs."""
    return limit - FIXED - 3 * (threads or MAX_THREADS) - 2 * min_connections


class Request(Protocol):
    """Who asked for a listener (agent.core.translate.requests.VipRequest)."""

    @property
    def kind(self) -> str: ...
    @property
    def obj(self) -> str: ...
    @property
    def key(self) -> str: ...


def fit(
    listeners: tuple[ProxyListener, ...],
    *,
    checks: int,
    order: Iterable[tuple[Request, Iterable[ProxyListener]]],
    apiserver: ApiserverProxy | None,
    limit: int | None,
    min_connections: int,
    threads: int | None,
) -> tuple[tuple[ProxyListener, ...], int, list[Rejection]]:
    """The ``listeners`` that fit in ``limit`` (in their order), their servers, and a
    rejection for each one that does not.  ``checks``: the servers of ``listeners``;
    ``order``: the same listeners by request, in admission order, read only when they
    do not all fit.  Without a known limit, or when all fit, ``listeners`` is returned
    as it is, at no cost per listener."""
    if limit is None:
        return listeners, checks, []
    budget = room(limit=limit, min_connections=min_connections, threads=threads)
    used = 1 + len(apiserver.servers) if apiserver is not None else 0
    if used + len(listeners) + checks <= budget:
        return listeners, checks, []
    kept: set[int] = set()
    kept_checks = 0
    rejections: list[Rejection] = []
    for request, group in order:
        for listener in group:
            need = 1 + len(listener.servers)
            if used + need <= budget:
                used += need
                kept_checks += need - 1
                kept.add(id(listener))
                continue
            why = _rejection(
                listener,
                request,
                apiserver=apiserver is not None,
                need=need,
                limit=limit,
                room=budget,
            )
            rejections.append(why)
    return tuple(lst for lst in listeners if id(lst) in kept), kept_checks, rejections


def _rejection(
    listener: ProxyListener,
    request: Request,
    *,
    apiserver: bool,
    need: int,
    limit: int,
    room: int,
) -> Rejection:
    # no count that changes with other Services' endpoints: the same problem must stay
    # the same line in the log and the same Event (agent.telemetry, agent.writeback)
    service, _, port = listener.service.rpartition(":")
    vip = ip_text(listener.vip)
    asked = ""
    if request.kind != "Service":
        asked = f"; {request.kind.lower()} {request.obj} key {request.key!r} asks for it"
    earlier = "the apiserver frontend and earlier listeners" if apiserver else "earlier listeners"
    return Rejection(
        kind="Service",
        obj=service,
        key=f"port {port}",
        reason=(
            f"haproxy has no file descriptors left for the listener on {vip} port "
            f"{listener.port}: it needs {need} (1 and 1 per health check), and {earlier} "
            f"take the rest of the {room} that its limit of {limit} leaves for listeners "
            f"and health checks{asked}; the VIP stays announced without this listener; "
            "raise haproxy's LimitNOFILE or haproxy_fd_limit"
        ),
        code=Reason.FD_BUDGET,
    )

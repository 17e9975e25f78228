"""What this node holds now: the status file ``vip-agent run`` keeps, and ``vip-agent status``.

The running agent rewrites ``<run_dir>/status.json`` after every reconcile, reload,
VRRP state change and apiserver health change: written to a temp file in the same
directory, fsynced and renamed, so a reader never sees half a document.  It is mode
0644 (an operator reads it without root) and holds no secret: it is built field by
field from the agent's state (never by dumping objects that carry ``auth_pass``), and
the checker output it quotes passes the same redactor as the logs.

``vip-agent status`` adds what only the live system knows: which VIPs are on the
interface right now (netlink), and whether the agent that wrote the file is still
running (the pid in the file is alive and is a vip-agent).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from agent.apply import replace_file
from agent.core.model import BgpSpeaker, DesiredState, IPAddress
from agent.reconcile import Status
from agent.telemetry.vrrp_state import InstanceState, Mismatch

SCHEMA = 1
FILE_NAME = "status.json"
MAX_REJECTIONS = 200
"""Rejections listed in the file (the count is always complete)."""


@dataclass(frozen=True)
class Identity:
    """What does not change while the agent runs."""

    node: str
    interface: str
    daemons: str
    version: str
    pid: int


def build(
    *,
    identity: Identity,
    status: Status,
    vrrp: Mapping[str, InstanceState],
    mismatches: list[Mismatch],
    apiserver_healthy: bool | None,
    source_error: str | None = None,
    cluster: Mapping[str, Any] | None = None,
    daemons_running: Mapping[str, bool],
    metrics_port: int | None,
    redact: Callable[[str], str],
    wall: float,
) -> dict[str, Any]:
    """The status document (plain JSON types only)."""
    state = status.state
    return {
        "schema": SCHEMA,
        "written_at": wall,
        "pid": identity.pid,
        "version": identity.version,
        "node": identity.node,
        "interface": identity.interface,
        "daemons": identity.daemons,
        "metrics_port": metrics_port,
        "reconciles": status.reconciles,
        "last_apply": {
            "ok": status.last_apply_ok,
            "time": status.last_apply_wall,
            "error": redact(status.last_error) if status.last_error else None,
        },
        "apiserver_healthy": apiserver_healthy,
        "source_error": redact(source_error) if source_error else None,
        "cluster": (
            {k: redact(v) if isinstance(v, str) else v for k, v in cluster.items()}
            if cluster is not None
            else None
        ),
        "daemon_status": _daemon_status(status, daemons_running, redact),
        "instances": _instances_doc(state, vrrp),
        "mismatches": [
            {"instance": m.instance, "problem": m.problem, "vips": [str(v) for v in m.vips]}
            for m in mismatches
        ],
        "bgp": _bgp(state.bgp) if state is not None and state.bgp is not None else None,
        "rejections_total": len(status.rejections),
        "rejections": [
            {
                "kind": r.kind,
                "object": r.obj,
                "key": r.key,
                "reason": r.reason,
                "code": r.code.value,
                "text": str(r),
            }
            for r in status.rejections[:MAX_REJECTIONS]
        ],
    }


def _instances_doc(
    state: DesiredState | None, vrrp: Mapping[str, InstanceState]
) -> list[dict[str, Any]]:
    instances = []
    for inst in state.instances if state is not None else ():
        entry = vrrp.get(inst.name)
        instances.append(
            {
                "name": inst.name,
                "virtual_router_id": inst.virtual_router_id,
                "configured_priority": inst.priority,
                "vrrp_state": entry.state if entry else None,
                "vrrp_priority": entry.priority if entry else None,
                "vrrp_state_since": entry.since if entry else None,
                "vips": [str(v) for v in inst.vips],
                "excluded_vips": [str(v) for v in inst.excluded_vips],
            }
        )
    return instances


def _daemon_status(
    status: Status, daemons_running: Mapping[str, bool], redact: Callable[[str], str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, running in sorted(daemons_running.items()):
        outcome = status.reload_outcomes.get(name)
        out[name] = {
            "running": running,
            "last_reload_ok": outcome.ok if outcome else None,
            "last_reload_detail": redact(outcome.detail) if outcome else None,
        }
    return out


def _bgp(bgp: BgpSpeaker) -> dict[str, Any]:
    return {
        "router_id": str(bgp.router_id),
        "local_as": bgp.local_as,
        "peers": [str(p) for p in bgp.peers],  # str() never shows a password
        "announcements": [{"vip": str(a.vip), "gated": a.gated} for a in bgp.announcements],
        "gate_table": bgp.gate_table,
    }


def write(path: Path, document: Mapping[str, Any]) -> None:
    """Replace ``path`` atomically with ``document`` (mode 0644)."""
    data = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
    replace_file(path, data, 0o644)


class StatusWriter:
    """An :class:`agent.reconcile.Observer` that rewrites the status file after each event.

    ``collect()`` builds the document; writes are serialised (the loop, the VRRP monitor
    and the prober all call :meth:`write_now`) and a failing write is logged, never raised
    into the loop.
    """

    def __init__(self, path: Path, collect: Callable[[], Mapping[str, Any] | None]) -> None:
        self.path = path
        self.collect = collect
        self._lock = threading.Lock()
        self.errors = 0

    def write_now(self) -> None:
        import logging

        with self._lock:
            try:
                document = self.collect()
                if document is not None:  # None: the agent is not running yet
                    write(self.path, document)
            except (OSError, KeyError, ValueError) as err:
                self.errors += 1
                if self.errors <= 5:
                    logging.getLogger("vip-agent.status").error(
                        "cannot write %s: %s", self.path, err
                    )

    # Observer: the file follows the loop
    def reconciled(self, seconds: float, ok: bool) -> None:
        self.write_now()

    def rendered(self, state: object) -> None:
        return None

    def applied(self, changed: frozenset[str], errors: Mapping[str, str]) -> None:
        return None

    def reloaded(self, daemon: str, outcome: object) -> None:
        self.write_now()


# --- reading it back: vip-agent status -------------------------------------------------


class NoStatus(Exception):
    """There is no status to show (no file, or not one of ours)."""


def read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NoStatus(f"no status file at {path}: is vip-agent run running here?") from None
    except OSError as err:
        raise NoStatus(f"cannot read {path}: {err.strerror}") from None
    try:
        document = json.loads(text)
    except ValueError:
        raise NoStatus(f"{path} is not JSON") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise NoStatus(f"{path}: unknown status format")
    return document


def agent_alive(pid: object) -> bool:
    """Is ``pid`` a running vip-agent (pids get reused, so the command line is checked)?"""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return "vip-agent" in cmdline or " -m agent" in cmdline


def live(
    document: dict[str, Any],
    on_interface: set[IPAddress] | None,
    *,
    bgp: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The document plus what is true now: agent running, VIPs held per instance, and in
    mode bgp the sessions and which gated VIPs are open (``bgp``: what the caller asked
    BIRD and the gate table)."""
    out = dict(document)
    if bgp is not None and out.get("bgp") is not None:
        out["bgp"] = {**out["bgp"], **bgp}
    out["running"] = agent_alive(document.get("pid"))
    held: list[str] = []
    instances = []
    for inst in document.get("instances", []):
        entry = dict(inst)
        if on_interface is not None:
            names = [*inst.get("vips", []), *inst.get("excluded_vips", [])]
            entry["held_vips"] = [v for v in names if _on(v, on_interface)]
            held.extend(entry["held_vips"])
        instances.append(entry)
    out["instances"] = instances
    out["held_vips"] = held if on_interface is not None else None
    return out


def _on(text: str, addresses: set[IPAddress]) -> bool:
    import ipaddress

    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(text) in addresses
    return False


def _ago(then: object, now: float) -> str:
    if not isinstance(then, int | float):
        return "never"
    seconds = max(0.0, now - then)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def human(document: Mapping[str, Any], *, now: float | None = None) -> str:
    """A summary for people: who this node is, what it holds, what went wrong."""
    now = time.time() if now is None else now
    lines = [
        *_header(document, now),
        *_instances(document.get("instances") or []),
        *_bgp_lines(document.get("bgp")),
        *(
            f"WARNING {m['instance']}: {m['problem'].replace('_', ' ')} ({', '.join(m['vips'])})"
            for m in document.get("mismatches") or []
        ),
        *_rejections(document),
    ]
    return "\n".join(lines) + "\n"


def _header(document: Mapping[str, Any], now: float) -> list[str]:
    running = "running" if document.get("running") else "NOT RUNNING"
    lines = [
        f"vip-agent {document.get('version')} on node {document.get('node')} "
        f"(interface {document.get('interface')}, daemons {document.get('daemons')}): "
        f"{running}, pid {document.get('pid')}, status written "
        f"{_ago(document.get('written_at'), now)}"
    ]
    apply = document.get("last_apply") or {}
    result = {True: "ok", False: "FAILED", None: "not yet"}[apply.get("ok")]
    lines.append(f"last apply: {result}, last success {_ago(apply.get('time'), now)}")
    if apply.get("error"):
        lines.append(f"  error: {apply['error']}")
    health = {True: "healthy", False: "FAILING", None: "not checked"}[
        document.get("apiserver_healthy")
    ]
    lines.append(f"apiserver: {health}")
    source = document.get("source_error")
    lines.append(f"cluster source: FAILING ({source})" if source else "cluster source: ok")
    cluster = document.get("cluster") or {}
    if cluster:
        holder = cluster.get("lease_holder") or "nobody"
        role = "this agent" if cluster.get("leader") else holder
        lines.append(f"allocations and Events by: {role}")
        for part in ("ingress", "events", "allocation", "lease"):
            if cluster.get(f"{part}_error"):
                lines.append(f"  {part} write failing: {cluster[f'{part}_error']}")
    for name, daemon in sorted((document.get("daemon_status") or {}).items()):
        lines.append(f"{name}: {'running' if daemon.get('running') else 'not running'}")
    held = document.get("held_vips")
    if held is not None:
        lines.append("holds: " + (", ".join(held) if held else "no VIPs"))
    return lines


def _instances(instances: list[Mapping[str, Any]]) -> list[str]:
    lines = ["instances:"] if instances else []
    for inst in instances:
        state = inst.get("vrrp_state") or "UNKNOWN"
        prio = inst.get("vrrp_priority")
        prio_text = f"priority {prio if prio is not None else inst.get('configured_priority')}"
        vips = [*inst.get("vips", []), *inst.get("excluded_vips", [])]
        here = inst.get("held_vips")
        where = ""
        if here is not None:
            where = "  holds " + (", ".join(here) if here else "none")
        lines.append(
            f"  {inst.get('name')}: {state}, {prio_text}, vrid {inst.get('virtual_router_id')}, "
            f"VIPs {', '.join(vips) or '-'}{where}"
        )
    return lines


def _bgp_lines(bgp: Mapping[str, Any] | None) -> list[str]:
    if not bgp:
        return []
    lines = [f"bgp: AS {bgp.get('local_as')}, router id {bgp.get('router_id')}"]
    sessions = bgp.get("sessions")
    if sessions is None:
        lines.append(f"  sessions: unknown ({bgp.get('sessions_error') or 'BIRD not asked'})")
    for session in sessions or []:
        lines.append(
            f"  peer {session['neighbor'] or session['name']}: {session['state']}, "
            f"{session['exported']} routes announced"
        )
    open_gates = bgp.get("gate_open")
    for a in bgp.get("announcements") or []:
        if a["gated"]:
            state = (
                "unknown" if open_gates is None else "open" if a["vip"] in open_gates else "CLOSED"
            )
            lines.append(f"  announces {a['vip']} while the apiserver is healthy (gate {state})")
        else:
            lines.append(f"  announces {a['vip']}")
    return lines


def _rejections(document: Mapping[str, Any]) -> list[str]:
    total = document.get("rejections_total", 0)
    listed = document.get("rejections") or []
    lines = [f"rejected inputs: {total}"]
    lines += [f"  [{r.get('code')}] {r.get('text')}" for r in listed]
    if total > len(listed):
        lines.append(f"  ... and {total - len(listed)} more")
    return lines

"""Pure rendering: DesiredState + templates -> {file name: text}.

The caller owns a :class:`Renderer` (the Jinja environment for its template directories
and the per-object value cache) and says which files to render, as data: a mapping of
file name to template name (``keepalived.conf`` -> ``keepalived.conf.j2``); a new daemon
is one more entry and one more template.

Python turns the model into plain, final strings (addresses formatted,
names chosen, numbers in range); the templates only loop and branch.  Every
string handed to a template is checked once more against a conservative
character set, so even a translation bug cannot put a newline, a brace, a
quote or a comment character into keepalived.conf or haproxy.cfg.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jinja2

from agent.core import grammar, haproxy_fds
from agent.core.memo import Generations
from agent.core.model import (
    Announcement,
    ApiserverProxy,
    BgpPeer,
    BgpSpeaker,
    Community,
    DesiredState,
    IPAddress,
    ProxyListener,
    TrackFile,
    VirtualServer,
    VrrpInstance,
)

OUTPUTS: Mapping[str, str] = {
    "keepalived.conf": "keepalived.conf.j2",
    "haproxy.cfg": "haproxy.cfg.j2",
}
"""The files of the VRRP mode and their templates (file name -> template name).

The agent asks for the files its daemon modules declare (``agent.daemons.CONFIG_FILES``,
which the core may not import); this default, kept equal to that list by
tests/unit/test_daemon_files.py, serves callers that only render (tests, labs, benches).
"""

# everything settings and translate can produce (auth_pass may hold '+'), nothing that
# keepalived or haproxy read as syntax: no quotes, braces, '#', '!', '$' or newlines
_SAFE = re.compile(r"^[A-Za-z0-9_.:/@=,+\[\] -]*$")


class RenderError(RuntimeError):
    """A template is broken, or a value is unsafe to write into a config file."""


def _safe(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    if not _SAFE.match(text):
        raise RenderError(f"refusing to render unsafe value {text!r}")
    return text


def _num(value: float) -> str:
    return format(value, "g")


_text = grammar.ip_text


def _host(address: IPAddress) -> str:
    return f"[{_text(address)}]" if address.version == 6 else str(address)


def _prefix(address: IPAddress) -> str:
    return f"{_text(address)}/{address.max_prefixlen}"


Values = SimpleNamespace
"""What a template sees for one object: ``i.name`` is an attribute lookup (``i["name"]``
works too).  Jinja tries getattr before getitem, so plain dicts cost a failed attribute
lookup for every field of every object; at a thousand Services that was half the render."""


def _instance(inst: VrrpInstance) -> Values:
    return Values(
        name=_safe(inst.name),
        owners=[_safe(o) for o in inst.owners],
        interface=_safe(inst.interface),
        virtual_router_id=inst.virtual_router_id,
        priority=inst.priority,
        advert_int=_num(inst.advert_int),
        version=inst.version,
        garp_master_delay=inst.garp_master_delay,
        garp_master_refresh=inst.garp_master_refresh,
        auth_pass=_safe(inst.auth_pass) if inst.auth_pass else None,
        unicast_src=_text(inst.unicast_src) if inst.unicast_src else None,
        unicast_peers=[_text(p) for p in inst.unicast_peers],
        track_interfaces=[_safe(i) for i in inst.track_interfaces],
        track_file=_safe(inst.track_file) if inst.track_file else None,
        vips=[_prefix(v) for v in inst.vips],
        vips_excluded=[_prefix(v) for v in inst.excluded_vips],
    )


def _virtual_server(vs: VirtualServer) -> Values:
    return Values(
        vip=_text(vs.vip),
        port=vs.port,
        protocol=vs.protocol.value,
        lb_kind=vs.method.value,
        lb_algo=_safe(vs.scheduler),
        persistence_timeout=vs.persistence_timeout,
        check=vs.health_check.value,
        delay_loop=vs.delay_loop,
        service=_safe(vs.service),
        real_servers=[
            Values(address=_text(rs.address), port=rs.port, weight=rs.weight)
            for rs in vs.real_servers
        ],
    )


def _listener(listener: ProxyListener) -> Values:
    return Values(
        name=_safe(listener.name),
        bind=f"{_host(listener.vip)}:{listener.port}",
        service=_safe(listener.service),
        servers=[
            Values(name=_safe(s.name), address=f"{_host(s.address)}:{s.port}")
            for s in listener.servers
        ],
    )


def _apiserver(api: ApiserverProxy) -> Values:
    verify = f"verify required ca-file {_safe(api.ca_file)}" if api.ca_file else "verify none"
    return Values(
        bind=f"{_host(api.vip)}:{api.port}",
        verify=verify,
        inter=f"{api.check_inter_ms}ms",
        fastinter=f"{api.check_fastinter_ms}ms",
        downinter=f"{api.check_downinter_ms}ms",
        fall=api.check_fall,
        rise=api.check_rise,
        servers=[
            Values(name=_safe(s.name), address=f"{_host(s.address)}:{s.port}") for s in api.servers
        ],
    )


# BIRD reads a password between double quotes: only a quote or a backslash could end or
# escape it; settings already refuse them, this refuses them again at the last step
_BIRD_PASSWORD = re.compile(r"^[A-Za-z0-9!#$%&()*+,./:;<=>?@^_{|}~\[\]-]{1,80}$")


def _bird_password(text: str) -> str:
    if not _BIRD_PASSWORD.match(text):
        raise RenderError("refusing to render an unsafe BGP password")
    return text


def _bgp(bgp: BgpSpeaker) -> Values:
    return Values(
        router_id=str(bgp.router_id),
        local_as=bgp.local_as,
        # both families always: adding a channel to a session later would reset it
        families=[_bgp_family(bgp, version) for version in (4, 6)],
        peers=[_bgp_peer(p, bgp) for p in bgp.peers],
        bfd=any(p.bfd for p in bgp.peers),
        bfd_interval=bgp.bfd_interval_ms,
        bfd_multiplier=bgp.bfd_multiplier,
        hold_time=bgp.hold_time,
        keepalive_time=bgp.keepalive_time,
        local_pref=bgp.local_pref,
        graceful_restart_time=bgp.graceful_restart_time,
        gate_table=bgp.gate_table,
        vip_interface=_safe(bgp.vip_interface),
    )


def _bgp_family(bgp: BgpSpeaker, version: int) -> Values:
    mine = [a for a in bgp.announcements if a.vip.version == version]
    return Values(
        version=version,
        static=[Values(prefix=_prefix(a.vip), owner=_safe(a.owner)) for a in mine if not a.gated],
        gated=[_prefix(a.vip) for a in mine if a.gated],
        exports=_bgp_exports(mine),
    )


def _bgp_exports(announcements: list[Announcement]) -> list[Values]:
    """Announcements grouped by what the filter does to them: one prefix set each (BIRD
    matches a set through a trie, where one ``if`` per VIP would cost a comparison per VIP
    per route)."""
    groups: dict[tuple[bool, tuple[Community, ...]], list[str]] = {}
    for a in announcements:
        groups.setdefault((a.gated, a.communities), []).append(_prefix(a.vip))
    return [
        Values(
            prefixes=prefixes,
            gated=gated,
            communities=[f"{c.parts[0]}, {c.parts[1]}" for c in communities if not c.large],
            large_communities=[", ".join(map(str, c.parts)) for c in communities if c.large],
        )
        for (gated, communities), prefixes in groups.items()
    ]


def _bgp_peer(p: BgpPeer, bgp: BgpSpeaker) -> Values:
    # a family the session is not of needs this node's address of it as next hop
    hop4 = bgp.next_hop4 if p.address.version == 6 else None
    hop6 = bgp.next_hop6 if p.address.version == 4 else None
    own = bgp.next_hop4 if p.address.version == 4 else bgp.next_hop6
    ibgp = p.asn == bgp.local_as
    # BIRD treats iBGP as multihop unless told the peer is directly connected, and a
    # multihop session with BFD needs its local address spelled out
    source = p.source or (own if p.bfd and p.multihop is not None else None)
    return Values(
        name=f"peer_{grammar.ip_token(p.address)}",
        address=str(p.address),
        port=p.port,
        asn=p.asn,
        multihop=p.multihop,
        source=str(source) if source else None,
        direct=ibgp and p.multihop is None,
        password=_bird_password(p.password) if p.password else None,
        bfd=p.bfd,
        next_hop={4: str(hop4) if hop4 else None, 6: str(hop6) if hop6 else None},
    )


def _track_file(track: TrackFile) -> Values:
    return Values(name=_safe(track.name), path=_safe(track.path), weight=track.weight)


class Renderer:
    """One explicit Jinja environment for a list of template directories (a user's
    directory first, packaged ones after), and what the last two renders produced per
    model object (see agent.core.memo).

    Compiling the templates costs more than rendering a thousand Services, so the caller
    keeps its Renderer between passes (Jinja re-checks each template's mtime on use, so an
    edited template is still picked up at once).  Between two reconciles of a large
    cluster almost every instance and virtual server is one already rendered, so two
    things are kept:

    * the template values of each model object, found by identity first (translate hands
      back the very same VirtualServer and ProxyListener objects for a Service that did
      not change: no deep hash) and by equality otherwise;
    * the text of each block a template renders through ``block()`` or ``blocks()`` (a
      macro and its values), by the template and the values' identity: an unchanged
      virtual server is one dictionary lookup, not a template run, and ``blocks()`` joins
      a whole list of them in one call from the template.  A template edited on disk is
      a new Template object, so nothing rendered from the old one is reused.

    Each cache holds what this pass and the last one used, and nothing else.  A one-shot
    render (``once=True``: the dry run) has no next pass to keep anything for, and skips
    the equality lookups, which hash every model object deeply.  A short-lived caller may
    hand in a ``bytecode_cache`` (the shell's, agent.assets.TemplateCache) so that the
    templates are not compiled again on every run.
    """

    def __init__(
        self,
        template_dirs: Sequence[Path],
        *,
        once: bool = False,
        bytecode_cache: jinja2.BytecodeCache | None = None,
    ) -> None:
        self.once = once
        self.template_dirs = tuple(Path(d) for d in template_dirs)
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader([str(d) for d in self.template_dirs]),
            bytecode_cache=bytecode_cache,
            auto_reload=True,
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        # globals, so that macros a template imports from another file see them too; held
        # weakly, or the environment and its Renderer would make a reference cycle, which
        # keeps a whole pass's values and texts alive until the cyclic collector walks them
        # (a tenth of a 5,000-Service dry run)
        self.env.globals["block"] = _weakly(self._block)
        self.env.globals["blocks"] = _weakly(self._blocks)
        self.values: Generations[VrrpInstance | VirtualServer | ProxyListener, Values] = (
            Generations()
        )
        self._by_id: dict[int, tuple[object, Values]] = {}
        """This pass's and the last pass's values by the id of their model object (the
        entry keeps the object alive, so its id is no other object's)."""
        self._by_id_last: dict[int, tuple[object, Values]] = {}
        self.blocks: dict[tuple[int, str, int], tuple[object, Values, str]] = {}
        """The text of each block this pass rendered, by (template, macro, values) ids."""
        self._blocks_last: dict[tuple[int, str, int], tuple[object, Values, str]] = {}
        self._template: jinja2.Template | None = None

    def _values(self, objs: Sequence[VrrpInstance | VirtualServer | ProxyListener]) -> list[Values]:
        """The template values of each of ``objs``: by identity first (translate hands
        back the very objects of an unchanged Service: one dict lookup), by equality
        next."""
        now, last, out = self._by_id, self._by_id_last, []
        for obj in objs:
            key = id(obj)
            entry = now.get(key) or last.get(key)
            if entry is None or entry[0] is not obj:
                convert = _CONVERT[type(obj)]
                if self.once:
                    entry = (obj, convert(obj))
                else:
                    entry = (obj, self.values.get(obj, lambda: convert(obj)))  # noqa: B023
            now[key] = entry
            out.append(entry[1])
        return out

    def _block(self, macro: Any, values: Values) -> str:
        """``macro(values)``, rendered once per template and values object."""
        if self.once:  # nothing to keep for a next pass
            return str(macro(values))
        template = self._template
        assert template is not None
        key = (id(template), str(macro.name), id(values))
        # the entry keeps the template and the values alive, so while it exists their ids
        # cannot belong to other objects
        entry = self.blocks.get(key) or self._blocks_last.get(key)
        if entry is None:
            entry = (template, values, str(macro(values)))
        self.blocks[key] = entry
        return entry[2]

    def _blocks(self, macro: Any, items: Sequence[Values]) -> str:
        """``block(macro, item)`` for every item, joined: one template call for all of
        them (a call from a template loop costs microseconds, thousands of them a
        pass).  The loop of ``_block``, written out: it runs for every object."""
        if self.once:  # nothing to keep for a next pass
            return "".join([str(macro(values)) for values in items])
        template = self._template
        assert template is not None
        name, tid = str(macro.name), id(template)
        now, last = self.blocks, self._blocks_last
        out = []
        for values in items:
            key = (tid, name, id(values))
            entry = now.get(key) or last.get(key)
            if entry is None:
                entry = (template, values, str(macro(values)))
            now[key] = entry
            out.append(entry[2])
        return "".join(out)

    def context(self, state: DesiredState) -> dict[str, Any]:
        """The plain values the templates see (templates must not mutate them)."""
        # what neither this pass nor the last used is forgotten
        self.values.turn()
        self._by_id_last, self._by_id = self._by_id, {}
        self._blocks_last, self.blocks = self.blocks, {}
        values = self._values
        try:
            fds = haproxy_fds.for_state(state)
        except haproxy_fds.FdBudgetError as err:
            raise RenderError(str(err)) from err
        return {
            "router_id": _safe(state.router_id),
            "notify_fifo": _safe(state.notify_fifo) if state.notify_fifo else None,
            "track_files": [_track_file(t) for t in state.track_files],
            "instances": values(state.instances),
            "virtual_servers": values(state.virtual_servers),
            "listeners": values(state.listeners),
            "apiserver": _apiserver(state.apiserver) if state.apiserver else None,
            "stats_socket": _safe(state.haproxy_stats_socket),
            "node": _safe(state.router_id),
            "bgp": _bgp(state.bgp) if state.bgp else None,
            "hard_stop_after": f"{state.haproxy_hard_stop_after_s}s",
            "fd_hard_limit": fds.limit if fds is not None else None,
            "maxconn": fds.maxconn if fds is not None else None,
        }

    def render(self, state: DesiredState, outputs: Mapping[str, str] = OUTPUTS) -> dict[str, str]:
        """``{file name: text}`` for every entry of ``outputs`` (file name -> template)."""
        values = self.context(state)
        out: dict[str, str] = {}
        for name, template in outputs.items():
            try:
                self._template = self.env.get_template(template)
                out[name] = self._template.render(values)
            except jinja2.TemplateError as err:
                where = f":{err.lineno}" if isinstance(err, jinja2.TemplateSyntaxError) else ""
                raise RenderError(f"template {template}{where}: {err}") from err
            finally:
                self._template = None
        return out


def _weakly(method: Callable[..., str]) -> Callable[..., str]:
    """``method`` for a caller that must not keep its object alive."""
    ref = weakref.WeakMethod(method)

    def call(*args: Any) -> str:
        bound = ref()
        if bound is None:  # only a template still running after its Renderer was dropped
            raise RenderError("the renderer of this template is gone")
        return bound(*args)

    return call


_CONVERT: dict[type, Any] = {
    VrrpInstance: _instance,
    VirtualServer: _virtual_server,
    ProxyListener: _listener,
}

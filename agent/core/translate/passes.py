"""What one translation keeps for the next: work proportional to the change.

A live agent translates the same cluster again and again, one object different each
time.  :class:`PlanMemo` (owned by the caller, passed to every translation that wants
to share work) keeps, between two passes:

* the forwarding plan of each request, by the identity of its Service and endpoint
  objects (:class:`agent.core.translate.forwarding.Plans`);
* the vip-configmap's requests, by the identity of the ConfigMap, and the LoadBalancer
  Services' requests while the Services are the same objects;
* admission (:class:`Ownership`): the same requests, forbidden addresses and pools admit
  the same VIPs, so the last result is taken as it is;
* the forwarding of every admitted request (:class:`Forwarded`): when the requests, the
  VIPs and the settings are those of the last pass, only the requests whose Service or
  endpoint objects changed are forwarded again, against the slots that were taken before
  them last time.  That is exact as long as each keeps the VIP:port slots it had (its
  Service's ports did not change), or takes others that no other request has: the slots
  every other request finds taken are then the same.  When one does not, the whole list
  is forwarded again, in order.  When admission changed (a VIP added or removed, a
  Service admitted or refused), the requests that came and went are patched in and out
  the same way, if none of their slots is another's, and those whose endpoints a
  changed VIP concerns are forwarded again;
* the VRRP instances, while their inputs are equal.

Whatever comes out is what a translation without the memo gives (tests/unit/
test_render_incremental.py checks it over random change sequences).  That one is a
``PlanMemo(once=True)``: a one-shot translation (the dry run) keeps nothing for a next pass,
and forwards every request in one loop into one table.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, NamedTuple

from agent.core.addresses import Forbidden
from agent.core.memo import IdentityMemo
from agent.core.model import (
    IPAddress,
    ProxyListener,
    Rejection,
    VirtualServer,
    VrrpInstance,
)
from agent.core.pools import Pools
from agent.core.snapshot import Key, Snapshot
from agent.core.translate.common import Rejections
from agent.core.translate.forwarding import (
    Forwarding,
    ForwardPlan,
    Plans,
    Slot,
    plan_for,
    replay,
)
from agent.core.translate.ownership import Ownership
from agent.core.translate.requests import (
    EntryMemo,
    ServiceAsks,
    VipRequest,
    configmap_requests,
    service_requests,
)
from agent.settings import Settings

ListenerKey = tuple[int, int, int]
_MISSING: Any = object()


@dataclass(frozen=True)
class Admission:
    """Admitted requests in order, who owns each VIP, and every admitted VIP."""

    admitted: list[VipRequest]
    ownership: Ownership
    vips: frozenset[IPAddress]
    rejections: tuple[Rejection, ...]


@dataclass(frozen=True)
class Forwarded:
    """What every admitted request forwards, as translate hands it on."""

    virtual_servers: tuple[VirtualServer, ...]
    """Sorted by slot."""
    listeners: tuple[ProxyListener, ...]
    """Sorted by (family, VIP, port)."""
    local_vips: Mapping[IPAddress, bool]
    """For Local-policy VIPs: does this node have a ready endpoint of it?"""
    checks: int = 0
    """The servers of ``listeners`` (haproxy checks each), kept up to date pass by pass
    so that haproxy's file descriptor budget costs no walk over every listener."""


class _Entry(NamedTuple):
    """What one admitted request forwarded in the last pass (a tuple: one is made for
    every request of a cold pass, and kept for it)."""

    request: VipRequest
    plan: ForwardPlan | None
    slots: frozenset[Slot]
    """Every slot of its plan's ports."""
    claims: frozenset[Slot]
    """The slots of the ports that claim theirs."""
    prior: frozenset[Slot]
    """Its slots that earlier requests (or the control plane) had taken."""
    rejections: tuple[Rejection, ...]
    virtual_servers: tuple[tuple[Slot, VirtualServer], ...]
    listeners: tuple[tuple[ListenerKey, ProxyListener], ...]
    local: bool | None
    """For a Local-policy plan: does it have a ready endpoint here (None: not Local)."""
    checks: int
    """The servers of its listeners."""


@dataclass(frozen=True)
class _Inputs:
    """What every request's forwarding shares; another value means starting over."""

    admitted: list[VipRequest]
    vips: frozenset[IPAddress]
    settings: Settings
    node_name: str
    initial: frozenset[Slot]


@dataclass
class _Sorted:
    """Values in the order of their keys, patched in place (each key is one slot)."""

    keys: list[Any]
    values: list[Any]

    @classmethod
    def of(cls, table: Mapping[Any, Any]) -> _Sorted:
        keys = sorted(table)
        return cls(keys, [table[k] for k in keys])

    def swap(
        self, old: tuple[tuple[Any, object], ...], new: tuple[tuple[Any, object], ...]
    ) -> None:
        """Replace one request's entries with its new ones."""
        for key in {k for k, _ in old} - {k for k, _ in new}:
            i = bisect_left(self.keys, key)
            del self.keys[i], self.values[i]
        for key, value in new:
            i = bisect_left(self.keys, key)
            if i < len(self.keys) and self.keys[i] == key:
                self.values[i] = value
            else:
                self.keys.insert(i, key)
                self.values.insert(i, value)


@dataclass
class _Forwarding:
    """The last pass's forwarding, kept to be patched by the next one."""

    inputs: _Inputs
    snapshot: Snapshot
    entries: list[_Entry | None]
    by_service: dict[Key, list[int]]
    by_vip: dict[IPAddress, list[int]]
    users: dict[Slot, int] = field(default_factory=dict)
    """How many requests' plans have each slot."""
    virtual_servers: _Sorted = field(default_factory=lambda: _Sorted([], []))
    listeners: _Sorted = field(default_factory=lambda: _Sorted([], []))
    local_vips: dict[IPAddress, bool] = field(default_factory=dict)
    checks: int = 0
    result: Forwarded | None = None
    rejections: tuple[Rejection, ...] | None = None


def _changed(old: Mapping[Any, object], new: Mapping[Any, object]) -> set[Any]:
    """Keys whose value is another (and unequal) object, or that came or went.

    A store keeps an unchanged object as the same dict (Snapshot.build makes new tuples
    of the same slices, equal at once), so a kind in which nothing changed costs one
    comparison in C, and the others one identity test per key.
    """
    if old is new or old == new:  # in C, each value found identical at once
        return set()
    out = {k for k, v in new.items() if (o := old.get(k, _MISSING)) is not v and o != v}
    out.update(old.keys() - new.keys())
    return out


class PlanMemo:
    """Work kept from one translation to the next (see the module docstring).  The caller
    owns it and passes it to every translation it wants to share work between; a
    translation without one starts cold and gives the same result."""

    def __init__(self, *, once: bool = False) -> None:
        self.once = once
        """A one-shot translation (the dry run): nothing is kept for a next pass, and the
        requests are forwarded in one loop, with none of the per-request records a next
        pass would patch."""
        self._claimed: list[tuple[VipRequest, list[ProxyListener]]] = []
        """With ``once``: the listeners each request claimed (``listeners_by_request``)."""
        self.plans = Plans()
        self._configmap: IdentityMemo[tuple[tuple[VipRequest, ...], tuple[Rejection, ...]]] = (
            IdentityMemo()
        )
        self._configmap_entries: EntryMemo = {}
        self._asks: tuple[Mapping[Key, object], ServiceAsks, tuple[Rejection, ...]] | None = None
        self._admission: tuple[tuple[object, ...], list[VipRequest], Admission] | None = None
        self._forwarding: _Forwarding | None = None
        self._instances: tuple[tuple[object, ...], list[VrrpInstance]] | None = None
        self.incremental_passes = 0
        """Forwarding passes that redid only the changed requests (for tests)."""
        self._patched = 0
        """Requests forwarded again since the last full pass: plans made for them stay
        until the next one, which comes once they are as many as all requests."""

    def turn(self) -> None:
        """Start a pass.  Plans turn only when every request is forwarded again (a patched
        pass looks up the changed ones alone, which would let the others be dropped)."""
        self._configmap.turn()

    def __len__(self) -> int:
        return len(self.plans)

    # --- requests and admission ---------------------------------------------------

    def configmap_requests(
        self, snapshot: Snapshot, settings: Settings, *, rej: Rejections
    ) -> list[VipRequest]:
        """The vip-configmap's requests (agent.core.translate.requests), parsed again only
        when the ConfigMap is another object than last time: thousands of entries cost
        10 us each, on every pass.  Even then only new or edited entries are read, and
        the others are the same request objects as last time (which lets forwarding
        patch instead of starting over)."""
        cm = snapshot.configmaps.get(settings.configmap_ref)

        def parse() -> tuple[tuple[VipRequest, ...], tuple[Rejection, ...]]:
            own = Rejections()
            entries = None if self.once else self._configmap_entries
            found = configmap_requests(snapshot, settings, rej=own, memo=entries)
            return tuple(found), tuple(own.items)

        found, rejections = (
            parse() if cm is None else self._configmap.get((cm,), settings, compute=parse)
        )
        rej.items.extend(rejections)
        return list(found)

    def service_requests(self, snapshot: Snapshot, *, rej: Rejections) -> ServiceAsks:
        """The LoadBalancer Services' requests (agent.core.translate.requests), the last
        ones while the Services are the same objects (one comparison in C)."""
        last = self._asks
        if last is not None and (last[0] is snapshot.services or last[0] == snapshot.services):
            rej.items.extend(last[2])
            return last[1]
        own = Rejections()
        asks = service_requests(snapshot, own)
        self._asks = (snapshot.services, asks, tuple(own.items))
        rej.items.extend(own.items)
        return asks

    def admit(
        self,
        requests: list[VipRequest],
        *,
        control_plane_vip: IPAddress | None,
        forbidden: Forbidden,
        pools: Pools | None,
        rej: Rejections,
    ) -> Admission:
        """Admit ``requests`` in order (agent.core.translate.ownership); the last result
        when the requests (compared element by element, the same objects at once) and
        what decides admission are equal to the last pass's."""
        key = (control_plane_vip, forbidden, pools)
        last = self._admission
        if last is not None and last[0] == key and last[1] == requests:
            rej.items.extend(last[2].rejections)
            return last[2]
        ownership = Ownership(control_plane_vip=control_plane_vip, forbidden=forbidden, pools=pools)
        own = Rejections()
        admitted = [r for r in requests if ownership.admit(r, own)]
        admission = Admission(admitted, ownership, ownership.vips, tuple(own.items))
        self._admission = (key, requests, admission)
        rej.items.extend(admission.rejections)
        return admission

    # --- forwarding ---------------------------------------------------------------

    def forward(
        self,
        admission: Admission,
        *,
        snapshot: Snapshot,
        settings: Settings,
        node_name: str,
        initial: frozenset[Slot],
        rej: Rejections,
    ) -> Forwarded:
        """Forward every admitted request, first come first served (``initial``: the
        slots taken before any, the control plane's)."""
        inputs = _Inputs(admission.admitted, admission.vips, settings, node_name, initial)
        if self.once:
            return self._forward_once(inputs, snapshot, rej)
        last = self._forwarding
        state = None
        if (
            last is not None
            and last.inputs.node_name == inputs.node_name
            and last.inputs.initial == inputs.initial
            and last.inputs.settings == inputs.settings
            and self._patched <= len(last.entries)
        ):
            same = last.inputs.admitted is inputs.admitted and last.inputs.vips == inputs.vips
            again = () if same else self._readmit(last, inputs, snapshot)
            if again is not None:
                state = self._patch(last, snapshot, again)
        if state is None:
            self.plans.turn()
            self._patched = 0
            # the last pass goes first: both at once would double the peak
            self._forwarding = last = None
            state = self._full(inputs, snapshot)
        else:
            self.incremental_passes += 1
        self._forwarding = state
        if state.rejections is None:
            state.rejections = tuple(r for e in state.entries if e for r in e.rejections)
        rej.items.extend(state.rejections)
        if state.result is None:
            state.result = Forwarded(
                virtual_servers=tuple(state.virtual_servers.values),
                listeners=tuple(state.listeners.values),
                local_vips=dict(state.local_vips),
                checks=state.checks,
            )
        return state.result

    def _forward_once(self, inputs: _Inputs, snapshot: Snapshot, rej: Rejections) -> Forwarded:
        """What ``_full`` forwards, in one table: a one-shot translation keeps no plan and
        no record of what each request forwarded (at 5,000 Services that bookkeeping was
        about a tenth of a dry run)."""
        taken = set(inputs.initial)
        out = Forwarding(virtual_servers={}, listeners={}, local_vips={})
        claimed = self._claimed = []
        for request in inputs.admitted:
            if request.method is None or request.service is None:
                continue
            plan = plan_for(
                request,
                snapshot=snapshot,
                settings=inputs.settings,
                node_name=inputs.node_name,
                plans=None,
                vips=inputs.vips,
                rej=rej,
            )
            if plan is None:
                continue
            mine = replay(request, plan, taken=taken, out=out, rej=rej)
            if mine:
                claimed.append((request, mine))
        servers, listeners = out.virtual_servers, out.listeners
        return Forwarded(
            virtual_servers=tuple(servers[slot] for slot in sorted(servers)),
            listeners=tuple(listeners[key] for key in sorted(listeners)),
            local_vips=out.local_vips,
            checks=sum(len(listener.servers) for listener in listeners.values()),
        )

    def _entry(
        self, request: VipRequest, inputs: _Inputs, snapshot: Snapshot, taken: set[Slot]
    ) -> _Entry:
        own = Rejections()
        plan = plan_for(
            request,
            snapshot=snapshot,
            settings=inputs.settings,
            node_name=inputs.node_name,
            plans=self.plans,
            vips=inputs.vips,
            rej=own,
        )
        if plan is None:
            none = frozenset[Slot]()
            return _Entry(request, None, none, none, none, tuple(own.items), (), (), None, 0)
        out = Forwarding(virtual_servers={}, listeners={}, local_vips={})
        slots = plan.slots
        prior = slots & taken
        replay(request, plan, taken=taken, out=out, rej=own)
        # kept for every request between passes: as little as will do
        return _Entry(
            request,
            plan,
            slots,
            plan.claims,
            prior,
            tuple(own.items),
            tuple(out.virtual_servers.items()),
            tuple(out.listeners.items()),
            out.local_vips.get(request.vip),
            sum(len(listener.servers) for listener in out.listeners.values()),
        )

    def _full(self, inputs: _Inputs, snapshot: Snapshot) -> _Forwarding:
        taken = set(inputs.initial)
        state = _Forwarding(inputs, snapshot, [], {}, {})
        virtual_servers: dict[Slot, VirtualServer] = {}
        listeners: dict[ListenerKey, ProxyListener] = {}
        for index, request in enumerate(inputs.admitted):
            if request.method is None or request.service is None:
                state.entries.append(None)
                continue
            entry = self._entry(request, inputs, snapshot, taken)
            state.entries.append(entry)
            state.by_service.setdefault(request.service, []).append(index)
            state.by_vip.setdefault(request.vip, []).append(index)
            _count(state.users, entry.slots, 1)
            virtual_servers.update(entry.virtual_servers)
            listeners.update(entry.listeners)
            state.checks += entry.checks
            if entry.local is not None:
                vip = request.vip
                state.local_vips[vip] = state.local_vips.get(vip, False) or entry.local
        state.virtual_servers = _Sorted.of(virtual_servers)
        state.listeners = _Sorted.of(listeners)
        return state

    def _readmit(self, last: _Forwarding, inputs: _Inputs, snapshot: Snapshot) -> set[int] | None:
        """``last`` brought in place to another list of admitted requests (a vip-configmap
        entry or a LoadBalancer Service came or went, or was admitted or refused), with
        the indices of the requests to forward again; None, ``last`` untouched, when
        every request must be.

        Exact when the requests that came and went are few and none of their VIP:port
        slots is another request's (nor the control plane's): every other request then
        finds the same slots taken before it as last time, and keeps what it forwarded.
        Those whose endpoints hold a VIP that came, or that left out one that went, are
        forwarded again."""
        old = last.inputs.admitted
        matched = _match(old, inputs.admitted, limit=8 + len(inputs.admitted) // 8)
        if matched is None:
            return None
        kept = {i for i in matched if i is not None}
        removed = [e for i, e in enumerate(last.entries) if i not in kept and e is not None]
        added = {
            j: self._entry(request, inputs, snapshot, set())
            for j, (request, i) in enumerate(zip(inputs.admitted, matched, strict=True))
            if i is None and request.method is not None and request.service is not None
        }
        if not _alone(last, removed, list(added.values()), inputs.initial):
            return None
        entries: list[_Entry | None] = [
            last.entries[i] if i is not None else added.get(j) for j, i in enumerate(matched)
        ]
        again = _vips_changed(
            entries, came=inputs.vips - last.inputs.vips, went=last.inputs.vips - inputs.vips
        )
        _splice(last, inputs, entries, removed=removed, added=list(added.values()))
        self._patched += len(added)
        return again

    def _patch(
        self, last: _Forwarding, snapshot: Snapshot, again: Iterable[int] = ()
    ) -> _Forwarding | None:
        """``last`` with the requests of changed Services (and those of ``again``)
        forwarded again, or None when one of them takes other slots than it did (then
        every request is, in order)."""
        old = last.snapshot
        services = _changed(old.services, snapshot.services)
        services |= _changed(old.endpoint_slices, snapshot.endpoint_slices)
        services |= _changed(old.endpoints, snapshot.endpoints)
        redo = sorted({i for key in services for i in last.by_service.get(key, ())}.union(again))
        fresh: list[tuple[int, _Entry]] = []
        for index in redo:
            before = last.entries[index]
            assert before is not None
            entry = self._entry(before.request, last.inputs, snapshot, set(before.prior))
            if (entry.slots != before.slots or entry.claims != before.claims) and not _moved(
                last, before, entry
            ):
                return None
            fresh.append((index, entry))
        last.snapshot = snapshot
        self._patched += len(fresh)
        if not fresh:
            return last
        last.result = None
        for index, entry in fresh:
            before = last.entries[index]
            assert before is not None
            last.entries[index] = entry
            if entry.rejections != before.rejections:
                last.rejections = None
            last.virtual_servers.swap(before.virtual_servers, entry.virtual_servers)
            last.listeners.swap(before.listeners, entry.listeners)
            last.checks += entry.checks - before.checks
            _local_again(last, entry.request.vip)
        return last

    def listeners_by_request(self) -> Iterator[tuple[VipRequest, list[ProxyListener]]]:
        """The last forwarding's listeners request by request, in admission order (each
        request's in its Service's port order): agent.core.haproxy_fds walks them when
        they do not all fit, and needs no matching of listener to request then."""
        if self.once:
            yield from self._claimed
            return
        state = self._forwarding
        for entry in state.entries if state is not None else ():
            if entry is not None and entry.listeners:
                yield entry.request, [listener for _, listener in entry.listeners]

    # --- VRRP ---------------------------------------------------------------------

    def instances(
        self, key: tuple[object, ...], compute: Callable[[], list[VrrpInstance]]
    ) -> list[VrrpInstance]:
        """The service instances for inputs ``key`` (compared by equality)."""
        last = self._instances
        if last is not None and last[0] == key:
            return list(last[1])
        found = compute()
        self._instances = (key, found)
        return list(found)


def _splice(
    last: _Forwarding,
    inputs: _Inputs,
    entries: list[_Entry | None],
    *,
    removed: list[_Entry],
    added: list[_Entry],
) -> None:
    """Make ``entries`` (the old ones kept, ``added`` among them) ``last``'s, for
    ``inputs``: the slots, virtual servers and listeners of ``removed`` out, of
    ``added`` in, the indices by Service and VIP made again."""
    for entry in removed:
        _count(last.users, entry.slots, -1)
        last.virtual_servers.swap(entry.virtual_servers, ())
        last.listeners.swap(entry.listeners, ())
        last.checks -= entry.checks
    for entry in added:
        _count(last.users, entry.slots, 1)
        last.virtual_servers.swap((), entry.virtual_servers)
        last.listeners.swap((), entry.listeners)
        last.checks += entry.checks
    last.inputs, last.entries = inputs, entries
    last.by_service, last.by_vip = {}, {}
    for index, kept in enumerate(entries):
        if kept is not None:
            assert kept.request.service is not None
            last.by_service.setdefault(kept.request.service, []).append(index)
            last.by_vip.setdefault(kept.request.vip, []).append(index)
    for vip in {e.request.vip for e in (*removed, *added)}:
        _local_again(last, vip)
    last.rejections = last.result = None


def _local_again(last: _Forwarding, vip: IPAddress) -> None:
    """Whether ``vip`` has a ready local endpoint, from its requests' entries again."""
    last.local_vips.pop(vip, None)
    for index in last.by_vip.get(vip, ()):
        e = last.entries[index]
        if e is not None and e.local is not None:
            last.local_vips[vip] = last.local_vips.get(vip, False) or e.local


def _match(old: list[VipRequest], new: list[VipRequest], *, limit: int) -> list[int | None] | None:
    """For each of ``new``, the index of the same request in ``old`` (None: it is new),
    or None when more than ``limit`` came or went, or the order changed.  The same
    object first (requests of unchanged sources are), an equal one next."""
    at = {id(r): i for i, r in enumerate(old)}
    matched: list[int | None] = [at.get(id(r)) for r in new]
    if None in matched:
        taken = {i for i in matched if i is not None}
        by_value = {r: i for i, r in reversed(list(enumerate(old))) if i not in taken}
        matched = [by_value.get(r) if i is None else i for r, i in zip(new, matched, strict=True)]
    found = [i for i in matched if i is not None]
    if any(a >= b for a, b in pairwise(found)):
        return None
    if (len(new) - len(found)) + (len(old) - len(found)) > limit:
        return None
    return matched


def _alone(
    last: _Forwarding, removed: list[_Entry], added: list[_Entry], initial: frozenset[Slot]
) -> bool:
    """Whether no slot of the requests that came or went is any other request's, or the
    control plane's: no one else's outcome can then change."""
    gone: dict[Slot, int] = {}
    _count(gone, (s for e in removed for s in e.slots), 1)
    if any(last.users.get(s, 0) > n for s, n in gone.items()):
        return False
    new = [s for e in added for s in e.slots]
    if len(set(new)) != len(new) or not initial.isdisjoint(new):
        return False
    return all(last.users.get(s, 0) == gone.get(s, 0) for s in new)


def _vips_changed(
    entries: list[_Entry | None], *, came: frozenset[IPAddress], went: frozenset[IPAddress]
) -> set[int]:
    """The entries whose endpoints hold a VIP that came, or that left out VIPs when some
    went: their plans change."""
    if not came and not went:
        return set()
    return {
        index
        for index, e in enumerate(entries)
        if e is not None
        and e.plan is not None
        and ((went and e.plan.vips_left_out) or not e.plan.servers.isdisjoint(came))
    }


def _count(users: dict[Slot, int], slots: Iterable[Slot], step: int) -> None:
    for slot in slots:
        left = users.get(slot, 0) + step
        if left:
            users[slot] = left
        else:
            users.pop(slot, None)


def _moved(last: _Forwarding, before: _Entry, entry: _Entry) -> bool:
    """Whether a request whose slots changed (its Service's ports did) can be patched:
    only when no other request has any of its old or new slots, nor the control plane
    (no one else looked at them, so no one else's outcome changes; it found none taken).
    Counts its new slots in when it can."""
    users = last.users
    _count(users, before.slots, -1)
    alone = (
        not entry.prior
        and not any(users.get(s, 0) for s in before.slots | entry.slots)
        and (before.slots | entry.slots).isdisjoint(last.inputs.initial)
    )
    if alone:
        _count(users, entry.slots, 1)
    return alone

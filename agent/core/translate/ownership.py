"""Who owns each VIP: forbidden addresses, pools, first come first served, sharing.

Requests arrive in order (the vip-configmap first, then Services oldest first, see
``requests``) and each is admitted or rejected here, before anything is forwarded:

1. the control-plane VIP of settings is never a service VIP;
2. an address no one may claim (``agent.core.addresses``: reserved forms, any Node's
   address, this node's own network) is rejected from every source;
3. when a pool ConfigMap exists, a Service may only claim an address inside a pool
   that serves its namespace (``agent.core.pools``); the vip-configmap is the cluster
   admins' and is not held to pools;
4. the first request for an address owns it.  A later one is admitted only when it
   comes from the same owner, or when both are Services of the same namespace carrying
   the same ``vip-agent.io/allow-shared-ip`` (or ``metallb.universe.tf/allow-shared-ip``)
   value; their ports must still differ (``forwarding`` rejects a port already taken).
   Everyone else is rejected with the owner's name.
"""

from __future__ import annotations

from agent.core.addresses import Forbidden
from agent.core.model import IPAddress, Reason
from agent.core.pools import Pools
from agent.core.translate.common import Rejections
from agent.core.translate.requests import VipRequest


class Ownership:
    """The admitted VIPs of one translation: owner and sharers of each, in order."""

    def __init__(
        self, *, control_plane_vip: IPAddress | None, forbidden: Forbidden, pools: Pools | None
    ) -> None:
        self.control_plane_vip = control_plane_vip
        self.forbidden = forbidden
        self.pools = pools
        self.first: dict[IPAddress, VipRequest] = {}
        """The request that owns each admitted VIP."""
        self.owners: dict[IPAddress, list[str]] = {}
        """Everyone admitted to each VIP (owner first), for the comment in the file."""

    def admit(self, request: VipRequest, rej: Rejections) -> bool:
        """Admit ``request``, or reject it (one line naming the object, key and why)."""
        refusal = self._refusal(request)
        if refusal is not None:
            code, reason = refusal
            rej.add(code, kind=request.kind, obj=request.obj, key=request.key, reason=reason)
            return False
        self.first.setdefault(request.vip, request)
        owners = self.owners.setdefault(request.vip, [])
        if request.owner not in owners:
            owners.append(request.owner)
        return True

    def _refusal(self, request: VipRequest) -> tuple[Reason, str] | None:
        vip = request.vip
        if self.control_plane_vip is not None and vip == self.control_plane_vip:
            return Reason.CONTROL_PLANE_VIP, "is the control-plane VIP"
        forbidden = self.forbidden.reason(vip)
        if forbidden is not None:
            return Reason.FORBIDDEN_ADDRESS, f"{vip} {forbidden}; never a VIP"
        if request.kind == "Service" and self.pools is not None and request.service:
            namespace = request.service[0]
            if not self.pools.serves(namespace, vip):
                return (
                    Reason.NOT_IN_POOL,
                    f"{vip} is in no pool of namespace {namespace} "
                    f"(ConfigMap {self.pools.ref}: {self.pools.describe(namespace)})",
                )
        owner = self.first.get(vip)
        if owner is None or owner.owner == request.owner or _shares(owner, request):
            return None
        since = f", created {owner.created}" if owner.created else ""
        return (
            Reason.VIP_OWNED,
            f"{vip} belongs to {owner.owner}{since}; sharing needs the same namespace and "
            f"the same allow-shared-ip annotation on both",
        )

    @property
    def vips(self) -> frozenset[IPAddress]:
        """Every admitted VIP, and the control-plane VIP."""
        cp = {self.control_plane_vip} if self.control_plane_vip is not None else set()
        return frozenset(self.first) | cp


def _shares(owner: VipRequest, request: VipRequest) -> bool:
    return (
        owner.kind == request.kind == "Service"
        and owner.service is not None
        and request.service is not None
        and owner.service[0] == request.service[0]
        and owner.shared is not None
        and owner.shared == request.shared
    )

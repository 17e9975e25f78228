"""IPVS proven in a real kernel: what the agent renders is what the kernel table holds.

Each cluster goes through the whole pipeline (objects -> ``translate`` -> ``render``), the
rendered keepalived.conf runs under keepalived in the qemu guest of ``labkit/ipvs_guest.py``
(Debian's 6.1 kernel with IPVS; the host has none) and the guest's ``ipvsadm -Sn`` is compared,
as a set of lines, with ``tests/support/ipvs_oracle.py``: an oracle computed from the
``DesiredState`` values, never from the rendered text. Equality proves that every virtual
server and real server the agent decided on reached the kernel with the right protocol,
addresses, ports, forwarding method, scheduler and persistence, and that nothing else did.

Two guest boots, run side by side on two workers (about 4 s and 6 s alone, 5.5 s and 7-8 s
together; the module takes 8-9 s):

* ``example``: examples/cluster.yaml for worker-1 with spread + unicast and no real-server
  checks (nothing answers in the guest; a TCP_CHECK would pull every real server). NAT with a
  named targetPort and ClientIP persistence, DR, UDP, SCTP, IPv6, an externalTrafficPolicy
  Local service. eth0 holds worker-1's node addresses so VRRP runs as on a real node; IPVS
  programming does not depend on VRRP state (a run without them, every instance in FAULT,
  gives the same table), so this is realism, not a precondition.
* ``synthetic``: built with labkit/objects.py. TUN (IPv4 and IPv6, TCP and UDP), one Service per
  scheduler the guest kernel has a module for (``vip-agent.io/scheduler``), a Service with 200
  ready endpoints in one EndpointSlice on TCP and UDP (400 real servers), a persistent Service,
  and an SCTP one. A kube-proxy-like foreign virtual server is created by ipvsadm before
  keepalived starts. Then a second cluster state is applied with SIGHUP: endpoints removed and
  added (TCP, UDP, TUN, IPv6), a Service deleted, a new one, scheduler and persistence edited
  in place, persistence dropped. After the reload the table must be exactly the second
  oracle plus the foreign virtual server, which keepalived must leave alone throughout.
  One TUN Service remaps its port (80 -> 8080): the agent rejects that port, since TUN (like
  DR) cannot change the destination port.

Documentation addresses only: VIPs 192.0.2.0/24 and 2001:db8::/64, endpoints 203.0.113.0/24
and 2001:db8:2::/64, nodes (and the foreign virtual server) 198.51.100.0/24, 2001:db8:1::/64.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from agent.assets import template_dirs
from agent.core import render
from agent.core.model import (
    DesiredState,
    HealthCheck,
    IPAddress,
    Method,
    Protocol,
    RealServer,
    VirtualServer,
)
from agent.core.snapshot import Snapshot
from agent.core.translate import translate
from agent.settings import SCHEDULERS, Settings
from agent.sources.manifests import load_snapshot
from labkit.ipvs_guest import GuestResult, guest_available, guest_modules, run_guest
from labkit.objects import configmap, endpoint, endpoint_slice, node, port, service
from tests.conftest import EXAMPLES
from tests.support import ipvs_oracle
from tests.support.ipvs_oracle import difference, expected_table, only_vips
from tests.support.requirements import unavailable

NODE = "worker-1"
SETTINGS = Settings(
    node_name=NODE, interface="eth0", spread=True, unicast=True, real_server_check="none"
)
NODE_ADDRESSES = [("eth0", "198.51.100.21/24"), ("eth0", "2001:db8:1::21/64")]

FOREIGN = {
    # what kube-proxy in IPVS mode leaves in the table: keepalived must never touch these
    "-A -t 198.51.100.99:443 -s rr",
    "-a -t 198.51.100.99:443 -r 203.0.113.99:8443 -m -w 1",
    "-A -u [2001:db8:1::99]:53 -s wlc",
}
FOREIGN_SCRIPT = (
    "ipvsadm -A -t 198.51.100.99:443 -s rr\n"
    "ipvsadm -a -t 198.51.100.99:443 -r 203.0.113.99:8443 -m -w 1\n"
    "ipvsadm -A -u [2001:db8:1::99]:53 -s wlc\n"
)

# Not in the guest build's optional list, so a guest without them is broken, not smaller.
BASELINE_SCHEDULERS = {"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq"}

Obj = dict[str, Any]


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


TUNNEL_VIPS = (ip("192.0.2.80"), ip("2001:db8::80"))
REMAP_VIP = ip("192.0.2.81")
MANY_VIP = ip("192.0.2.90")
EDITED_VIPS = (ip("192.0.2.70"), ip("2001:db8::70"))
LATE_VIP = ip("192.0.2.71")
GONE_VIP = ip("192.0.2.72")


def scheduler_vip(index: int) -> IPAddress:
    return ip(f"192.0.2.{100 + index}")


def guest_schedulers() -> list[str]:
    """The agent's schedulers that the guest kernel can load (``ip_vs_<name>``), sorted."""
    modules = set(guest_modules())
    return sorted(s for s in SCHEDULERS if f"ip_vs_{s}" in modules)


def state_of(objects: list[Obj]) -> DesiredState:
    return translate(Snapshot.from_objects(objects), SETTINGS, node_name=NODE, interface="eth0")


def keepalived_conf(state: DesiredState) -> str:
    return render.Renderer(template_dirs(None)).render(state)["keepalived.conf"]


def example_state() -> DesiredState:
    snapshot = load_snapshot([str(EXAMPLES / "cluster.yaml")])
    return translate(snapshot, SETTINGS, node_name=NODE, interface="eth0")


def synthetic_objects(stage: int, schedulers: list[str]) -> list[Obj]:
    """The synthetic cluster before (stage 1) and after (stage 2) the reload."""
    assert stage in (1, 2)
    first = stage == 1
    cm = {
        "192.0.2.80": "default/tunnel:TUN",
        "2001-db8--80": "default/tunnel:TUN",
        "192.0.2.90": "default/many",
        "192.0.2.70": "default/edited",
        "2001-db8--70": "default/edited",
        "192.0.2.72": "default/gone",  # stays in the ConfigMap; the Service goes
    }
    if first:
        cm["192.0.2.81"] = "default/tunnel-remap:TUN"
    else:
        cm["192.0.2.71"] = "default/late"
    objects: list[Obj] = [
        node("worker-1", "198.51.100.21", "2001:db8:1::21"),
        node("worker-2", "198.51.100.22", "2001:db8:1::22"),
    ]

    tunnel_ports = [port("http", 80, 80), port("syslog", 514, 514, "UDP")]
    tunnel_spec: Obj = {}
    if first:
        tunnel_spec = {
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 120}},
        }
    tunnel_v4 = ["203.0.113.80", "203.0.113.81"] if first else ["203.0.113.81", "203.0.113.83"]
    tunnel_v6 = "2001:db8:2::80" if first else "2001:db8:2::81"
    objects += [
        service("tunnel", tunnel_ports, **tunnel_spec),
        endpoint_slice(
            "tunnel",
            [port("http", 80), port("syslog", 514, protocol="UDP")],
            [endpoint(a) for a in tunnel_v4],
        ),
        endpoint_slice(
            "tunnel",
            [port("http", 80), port("syslog", 514, protocol="UDP")],
            [endpoint(tunnel_v6)],
            name="tunnel-v6",
            address_type="IPv6",
        ),
    ]
    if first:
        # TUN cannot change the destination port (see test_tunnel_cannot_remap_ports)
        objects += [
            service("tunnel-remap", [port("http", 80, 8080)]),
            endpoint_slice("tunnel-remap", [port("http", 8080)], [endpoint("203.0.113.82")]),
        ]

    many_hosts = range(1, 201) if first else range(41, 231)
    objects += [
        service("many", [port("http", 80, "http"), port("dns", 53, 5353, "UDP")]),
        endpoint_slice(
            "many",
            [port("http", 8080), port("dns", 5353, protocol="UDP")],
            [endpoint(f"203.0.113.{h}", node_name=f"worker-{h % 2 + 1}") for h in many_hosts],
        ),
    ]

    edited_annotations = None if first else {"vip-agent.io/scheduler": "sh"}
    timeout = 600 if first else 1800
    objects += [
        service(
            "edited",
            [port("https", 443, 8443)],
            annotations=edited_annotations,
            sessionAffinity="ClientIP",
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": timeout}},
        ),
        endpoint_slice("edited", [port("https", 8443)], [endpoint("203.0.113.70")]),
        endpoint_slice(
            "edited",
            [port("https", 8443)],
            [endpoint("2001:db8:2::70")],
            name="edited-v6",
            address_type="IPv6",
        ),
    ]

    if first:
        objects += [
            service("gone", [port("sig", 3868, 3868, "SCTP")]),
            endpoint_slice(
                "gone", [port("sig", 3868, protocol="SCTP")], [endpoint("203.0.113.72")]
            ),
        ]
    else:
        objects += [
            service("late", [port("syslog", 514, 5140, "UDP")]),
            endpoint_slice(
                "late",
                [port("syslog", 5140, protocol="UDP")],
                [endpoint("203.0.113.71"), endpoint("203.0.113.73")],
            ),
        ]

    for index, name in enumerate(schedulers):
        cm[str(scheduler_vip(index))] = f"default/sched-{name}"
        objects += [
            service(
                f"sched-{name}",
                [port("http", 80, 8080)],
                annotations={"vip-agent.io/scheduler": name},
            ),
            endpoint_slice(
                f"sched-{name}",
                [port("http", 8080)],
                [endpoint("203.0.113.100"), endpoint("203.0.113.101")],
            ),
        ]
    objects.append(configmap(cm))
    return objects


@dataclass(frozen=True)
class Boot:
    state: DesiredState
    reload_state: DesiredState | None
    future: Future[GuestResult]

    def result(self) -> GuestResult:
        return self.future.result()


@dataclass(frozen=True)
class Boots:
    example: Boot
    synthetic: Boot
    schedulers: list[str]


@pytest.fixture(scope="module")
def boots() -> Iterator[Boots]:
    """Start both guest boots at once (two workers: one qemu per core) and share them."""
    reason = guest_available()
    if reason is not None:
        unavailable(reason)
    schedulers = guest_schedulers()
    example = example_state()
    first = state_of(synthetic_objects(1, schedulers))
    second = state_of(synthetic_objects(2, schedulers))
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="ipvs-guest") as pool:
        example_run = pool.submit(
            run_guest, keepalived_conf(example), interfaces=["eth0"], addresses=NODE_ADDRESSES
        )
        synthetic_run = pool.submit(
            run_guest,
            keepalived_conf(first),
            interfaces=["eth0"],
            addresses=NODE_ADDRESSES,
            pre_script=FOREIGN_SCRIPT,
            reload_config=keepalived_conf(second),
        )
        yield Boots(
            example=Boot(example, None, example_run),
            synthetic=Boot(first, second, synthetic_run),
            schedulers=schedulers,
        )
    for name, run in (("example", example_run), ("synthetic", synthetic_run)):
        if run.exception() is None:
            print(f"\nguest run {name}: {run.result().seconds:.1f} s")


def assert_table(expected: set[str], actual: list[str], result: GuestResult) -> None:
    diff = difference(expected, actual)
    assert not diff, f"{diff}\n--- keepalived log ---\n{result.keepalived_log}"


# --- the example cluster -----------------------------------------------------------------


def test_example_cluster_table_is_the_oracle(boots: Boots) -> None:
    state = boots.example.state
    servers = state.virtual_servers
    # the example still exercises what the module docstring claims
    assert {vs.method for vs in servers} >= {Method.NAT, Method.DR}
    assert {vs.protocol for vs in servers} == {Protocol.TCP, Protocol.UDP, Protocol.SCTP}
    assert any(vs.vip.version == 6 for vs in servers)
    assert any(vs.persistence_timeout for vs in servers)
    assert any(rs.port != vs.port for vs in servers for rs in vs.real_servers)
    result = boots.example.result()
    assert_table(expected_table(state), result.first, result)


def test_example_cluster_vrrp_is_not_in_fault(boots: Boots) -> None:
    """With the node's addresses on eth0 the instances start as BACKUP, as on a real node."""
    log = boots.example.result().keepalived_log
    assert "Entering BACKUP STATE" in log, log
    assert "FAULT" not in log, log


# --- the synthetic cluster, first configuration ----------------------------------------------


def test_tunnel_virtual_servers(boots: Boots) -> None:
    """TUN reaches the kernel as ``-i`` (ipip) for IPv4 and IPv6, TCP and UDP, persistent."""
    result = boots.synthetic.result()
    expected = only_vips(expected_table(boots.synthetic.state), TUNNEL_VIPS)
    assert sum(line.endswith(" -i -w 1 --tun-type ipip") for line in expected) == 6
    assert sum(" -p 120" in line for line in expected) == 4
    assert_table(expected, sorted(only_vips(result.first, TUNNEL_VIPS)), result)


def test_every_scheduler_the_guest_kernel_has(boots: Boots) -> None:
    """Each ``vip-agent.io/scheduler`` value reaches the kernel as that ``-s``."""
    assert set(boots.schedulers) >= BASELINE_SCHEDULERS, boots.schedulers
    result = boots.synthetic.result()
    vips = [scheduler_vip(i) for i in range(len(boots.schedulers))]
    expected = only_vips(expected_table(boots.synthetic.state), vips)
    for name in boots.schedulers:
        assert any(line.startswith("-A ") and line.endswith(f" -s {name}") for line in expected)
    assert_table(expected, sorted(only_vips(result.first, vips)), result)


def test_two_hundred_endpoints(boots: Boots) -> None:
    """200 ready endpoints of one EndpointSlice become 200 TCP and 200 UDP real servers."""
    result = boots.synthetic.result()
    expected = only_vips(expected_table(boots.synthetic.state), [MANY_VIP])
    assert len(expected) == 2 + 400
    assert_table(expected, sorted(only_vips(result.first, [MANY_VIP])), result)


def test_first_table_is_exactly_the_oracle_and_the_foreign_servers(boots: Boots) -> None:
    result = boots.synthetic.result()
    assert_table(expected_table(boots.synthetic.state) | FOREIGN, result.first, result)


def test_tunnel_cannot_remap_ports(boots: Boots) -> None:
    """TUN, like DR, delivers the packet to the real server on the VIP's own port.

    keepalived would log "ports don't match - resetting" and program 203.0.113.82:80, not
    the pod's 8080; the agent rejects the port instead, and the kernel holds nothing for it.
    """
    result = boots.synthetic.result()
    assert not only_vips(result.first, [REMAP_VIP])
    assert not only_vips(expected_table(boots.synthetic.state), [REMAP_VIP])
    assert any("TUN cannot change the port" in str(r) for r in boots.synthetic.state.rejections)


# --- reload -----------------------------------------------------------------------------------


def test_reload_applies_the_second_state_exactly(boots: Boots) -> None:
    """After SIGHUP the table is the second oracle plus the foreign servers, nothing stale."""
    first, second = boots.synthetic.state, boots.synthetic.reload_state
    assert second is not None
    before, after = expected_table(first), expected_table(second)
    # the second state really adds, removes and edits on every axis the docstring lists
    gone_vips = {vs.vip for vs in first.virtual_servers} - {vs.vip for vs in second.virtual_servers}
    assert gone_vips == {GONE_VIP}
    assert only_vips(after, [LATE_VIP]) and not only_vips(before, [LATE_VIP])
    assert len(only_vips(before - after, [MANY_VIP])) == 80
    assert len(only_vips(after - before, [MANY_VIP])) == 60
    assert only_vips(before - after, TUNNEL_VIPS) and only_vips(after - before, TUNNEL_VIPS)
    assert {line for line in after - before if line.startswith("-A")} >= {
        "-A -t 192.0.2.70:443 -s sh -p 1800",
        "-A -t [2001:db8::70]:443 -s sh -p 1800",
        "-A -t 192.0.2.80:80 -s rr",
        "-A -u [2001:db8::80]:514 -s rr",
    }
    result = boots.synthetic.result()
    assert result.after_reload is not None
    assert_table(after | FOREIGN, result.after_reload, result)


def test_foreign_virtual_servers_survive_start_and_reload(boots: Boots) -> None:
    """keepalived only manages its own virtual servers; kube-proxy's stay as they were."""
    result = boots.synthetic.result()
    assert result.after_reload is not None
    assert set(result.first) >= FOREIGN, result.keepalived_log
    assert set(result.after_reload) >= FOREIGN, result.keepalived_log


def test_one_reload_complete_per_reload_with_the_checker_and_vrrp_children(boots: Boots) -> None:
    """keepalived's parent logs "Reload complete" once per reload, when every child has
    read the file, not once per child: what agent.daemons.keepalived waits for (the host
    shows the same with VRRP and BFD children: tests/functional/test_keepalived_daemon)."""
    log = boots.synthetic.result().keepalived_log
    assert "Starting Healthcheck child process" in log, log
    assert "Starting VRRP child process" in log, log
    assert log.count("Reloading ...") == 1, log
    assert log.count("Reload complete") == 1, log


# --- the oracle itself (no guest) ----------------------------------------------------------


def test_oracle_formatting() -> None:
    """The rules the guest runs confirmed, on values the clusters above do not produce."""

    def vs(vip: str, protocol: Protocol, method: Method, persistence: int | None) -> VirtualServer:
        return VirtualServer(
            vip=ip(vip),
            port=443,
            protocol=protocol,
            method=method,
            scheduler="wlc",
            persistence_timeout=persistence,
            health_check=HealthCheck.NONE,
            delay_loop=5,
            real_servers=(RealServer(ip("2001:db8:2::a"), 443, weight=3),),
            service="default/x:https",
        )

    assert expected_table(
        [
            vs("2001:db8::1", Protocol.SCTP, Method.TUN, 30),
            vs("2001:db8::2", Protocol.UDP, Method.DR, None),
            vs("2001:db8::3", Protocol.TCP, Method.PROXY, None),
        ]
    ) == {
        "-A --sctp-service [2001:db8::1]:443 -s wlc -p 30",
        "-a --sctp-service [2001:db8::1]:443 -r [2001:db8:2::a]:443 -i -w 3 --tun-type ipip",
        "-A -u [2001:db8::2]:443 -s wlc",
        "-a -u [2001:db8::2]:443 -r [2001:db8:2::a]:443 -g -w 3",
    }
    # glibc inet_ntop, which ipvsadm uses: embedded IPv4 forms, RFC 5952 compression
    assert ipvs_oracle.endpoint(ip("::ffff:203.0.113.1"), 80) == "[::ffff:203.0.113.1]:80"
    assert ipvs_oracle.endpoint(ip("::203.0.113.1"), 80) == "[::203.0.113.1]:80"
    assert ipvs_oracle.endpoint(ip("::1"), 80) == "[::1]:80"
    assert ipvs_oracle.endpoint(ip("2001:db8:0:0:1:0:0:1"), 80) == "[2001:db8::1:0:0:1]:80"
    assert ipvs_oracle.endpoint(ip("2001:db8:0:1:1:1:1:1"), 80) == "[2001:db8:0:1:1:1:1:1]:80"

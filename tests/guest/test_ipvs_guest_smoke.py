"""Smoke proof that keepalived programs ``virtual_server`` blocks into a real IPVS table.

Runs keepalived inside the qemu guest of ``labkit/ipvs_guest.py`` (the host kernel
has no IPVS).
Skipped unless ``scripts/build-ipvs-guest`` has built the cache. The configs have no health
checks: nothing answers inside the guest, so a checked real server would be removed.
Only documentation addresses: VIPs 192.0.2.x, real servers 203.0.113.x, a foreign
(kube-proxy-like) virtual server on 198.51.100.99.
"""

from __future__ import annotations

import pytest

from labkit.ipvs_guest import guest_available, run_guest
from tests.support.requirements import unavailable


@pytest.fixture(autouse=True)
def _guest() -> None:
    reason = guest_available()
    if reason is not None:
        unavailable(reason)


VRRP = """\
global_defs {
    router_id ipvs-guest
}
vrrp_instance VI_1 {
    state BACKUP
    interface eth0
    virtual_router_id 51
    priority 100
    advert_int 1
    virtual_ipaddress {
        192.0.2.50/32
    }
}
"""

NAT_TCP = """\
virtual_server 192.0.2.50 80 {
    lb_algo rr
    lb_kind NAT
    protocol TCP
    real_server 203.0.113.11 8080 {
        weight 1
    }
    real_server 203.0.113.12 8080 {
        weight 1
    }
}
"""

NAT_UDP = """\
virtual_server 192.0.2.53 53 {
    lb_algo wlc
    lb_kind NAT
    protocol UDP
    real_server 203.0.113.21 5353 {
        weight 2
    }
    real_server 203.0.113.22 5353 {
        weight 1
    }
}
"""

DR_PERSISTENT = """\
virtual_server 192.0.2.51 443 {
    lb_algo wrr
    lb_kind DR
    protocol TCP
    persistence_timeout 300
    real_server 203.0.113.31 443 {
        weight 3
    }
}
"""

SCTP = """\
virtual_server 192.0.2.52 3868 {
    lb_algo rr
    lb_kind NAT
    protocol SCTP
    real_server 203.0.113.41 3868 {
        weight 1
    }
}
"""

ADDRESSES = [("eth0", "192.0.2.10/24")]
FOREIGN = "-A -t 198.51.100.99:443 -s rr"
FOREIGN_RS = "-a -t 198.51.100.99:443 -r 203.0.113.99:8443 -m -w 1"


def test_virtual_servers_reach_ipvs() -> None:
    config = VRRP + NAT_TCP + NAT_UDP + DR_PERSISTENT + SCTP
    result = run_guest(config, interfaces=["eth0"], addresses=ADDRESSES)
    print(f"guest run: {result.seconds:.1f} s")
    expected = {
        "-A -t 192.0.2.50:80 -s rr",
        "-a -t 192.0.2.50:80 -r 203.0.113.11:8080 -m -w 1",
        "-a -t 192.0.2.50:80 -r 203.0.113.12:8080 -m -w 1",
        "-A -u 192.0.2.53:53 -s wlc",
        "-a -u 192.0.2.53:53 -r 203.0.113.21:5353 -m -w 2",
        "-a -u 192.0.2.53:53 -r 203.0.113.22:5353 -m -w 1",
        "-A -t 192.0.2.51:443 -s wrr -p 300",
        "-a -t 192.0.2.51:443 -r 203.0.113.31:443 -g -w 3",
        "-A --sctp-service 192.0.2.52:3868 -s rr",
        "-a --sctp-service 192.0.2.52:3868 -r 203.0.113.41:3868 -m -w 1",
    }
    assert set(result.first) == expected, result.keepalived_log


def test_reload_keeps_foreign_virtual_servers() -> None:
    pre_script = f"ipvsadm {FOREIGN}\nipvsadm {FOREIGN_RS}\n"
    reduced_tcp = NAT_TCP.replace(
        "    real_server 203.0.113.12 8080 {\n        weight 1\n    }\n", ""
    )
    assert reduced_tcp != NAT_TCP
    result = run_guest(
        VRRP + NAT_TCP + NAT_UDP,
        interfaces=["eth0"],
        addresses=ADDRESSES,
        pre_script=pre_script,
        reload_config=VRRP + reduced_tcp,
    )
    print(f"guest run: {result.seconds:.1f} s")
    assert set(result.first) == {
        FOREIGN,
        FOREIGN_RS,
        "-A -t 192.0.2.50:80 -s rr",
        "-a -t 192.0.2.50:80 -r 203.0.113.11:8080 -m -w 1",
        "-a -t 192.0.2.50:80 -r 203.0.113.12:8080 -m -w 1",
        "-A -u 192.0.2.53:53 -s wlc",
        "-a -u 192.0.2.53:53 -r 203.0.113.21:5353 -m -w 2",
        "-a -u 192.0.2.53:53 -r 203.0.113.22:5353 -m -w 1",
    }, result.keepalived_log
    assert result.after_reload is not None
    assert set(result.after_reload) == {
        FOREIGN,
        FOREIGN_RS,
        "-A -t 192.0.2.50:80 -s rr",
        "-a -t 192.0.2.50:80 -r 203.0.113.11:8080 -m -w 1",
    }, result.keepalived_log

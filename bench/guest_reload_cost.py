"""keepalived's reload cost with a real IPVS table, by size, in the qemu guest.

daemon_reload_cost.py times keepalived VRRP-only: the host kernel has no IPVS, so the
checker process, the one that programs the kernel table, never runs there.  This bench
boots the cached IPVS guest of labkit/ipvs_guest.py (Debian's 6.1 kernel under qemu TCG)
once per size and, for N Services of render_bench's cluster (one TCP port, four
endpoints, NAT; node-0 of 5 nodes, spread and unicast, no real-server checks since nothing
answers in the guest), renders the agent's own keepalived.conf and measures inside the
guest:

  * start-up: keepalived started -> /proc/net/ip_vs holds all N virtual servers and all
    their real servers;
  * R reloads (``--reloads``), alternating between two renders that differ in one endpoint
    of svc-0 (203.0.113.251 <-> .252): SIGHUP -> "Reload complete" in keepalived's log,
    and SIGHUP -> ``ipvsadm -Ln -t`` of svc-0 shows the new real server and not the old one.

keepalived 2.2 logs "Reload complete" once per reload, from the parent, when every child
(VRRP and checker here) has told it over an eventfd that it read the new configuration
(core/config_notify.c); it is not one line per child.

The guest is emulated, so absolute times are far slower than on a real node; what carries
over is the ratio of each size to the 10-Service config, printed beside the medians.

Times come from the guest's /proc/uptime (10 ms steps).  Log lines are stamped as they
arrive by a shell loop reading keepalived's console output through a FIFO.  The table is
polled every ``--poll`` seconds with one ``ipvsadm -Ln -t`` (a lookup of one virtual
server, so its cost does not grow with N; the guest prints what one run costs, about 80 ms
under TCG), which bounds the resolution of the IPVS figure.  The experiment is the guest's
``/cfg/pre.sh``, which /init runs before its own keepalived: it starts keepalived itself,
prints its figures between ``===BENCH-BEGIN===`` / ``-END===`` and powers off, so the
cached guest image needs no change.  Every wait in the guest is bounded in time
(``--start-timeout``, ``--reload-timeout``) and in polls, and qemu by their sum.

    python bench/guest_reload_cost.py [--sizes 10,1000,5000] [--reloads 5]   (root)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from render_bench import cluster  # noqa: E402

from agent.assets import template_dirs  # noqa: E402
from agent.core import render  # noqa: E402
from agent.core.model import DesiredState  # noqa: E402
from agent.core.snapshot import Snapshot  # noqa: E402
from agent.core.translate import translate  # noqa: E402
from agent.settings import RealServerCheck, Settings  # noqa: E402
from labkit.ipvs_guest import GuestError, boot, cache_dir, guest_available, section  # noqa: E402

NODE = "node-0"
# node-0 of render_bench's cluster: keepalived's unicast_src_ip must be a local address
NODE_ADDRESSES = ("198.51.100.200/24", "2001:db8:1::200/64")
CHANGED_SERVICE = "bench/svc-0:http"
# outside the 203.0.113.1-250 that render_bench hands out, so each is in exactly one render
SWAPPED = ("203.0.113.251", "203.0.113.252")

GUEST_SCRIPT = r"""
. /cfg/bench.env
mkdir -p /run/vip-agent
for a in $NODE_ADDRESSES; do ip addr add "$a" dev eth0; done

# T: seconds since boot as /proc/uptime prints it; C: the same in centiseconds
clock() {
    read -r T _ < /proc/uptime
    C="${T%.*}${T#*.}"
    while [ "${C#0}" != "$C" ]; do C="${C#0}"; done
    C=${C:-0}
}
fail() {
    echo "BENCH-FAILED $*"
    echo "===KEEPALIVED-LOG-BEGIN==="; cat /tmp/keepalived.log; echo "===KEEPALIVED-LOG-END==="
    echo "===GUEST-FAILED==="
    poweroff -f; sleep 5
}
table() {  # VS and RS: virtual and real servers in the kernel table, one read of /proc
    set -- $(awk '/^TCP/ {v++} /^  -> [0-9A-F[]/ {r++} END {print v + 0, r + 0}' /proc/net/ip_vs)
    VS=$1 RS=$2
}

echo "===BENCH-BEGIN==="
echo "kernel $(uname -r)"
echo "keepalived $(keepalived --version 2>&1 | head -n 1)"
echo "ipvsadm $(ipvsadm --version 2>&1 | head -n 1)"
echo "cpus $(grep -c '^processor' /proc/cpuinfo)"
echo "memory_kb $(awk '/^MemTotal/ {print $2}' /proc/meminfo)"

# what one poll of the changed virtual server costs (the resolution of the IPVS figure)
clock; c0=$C
for _ in 1 2 3 4 5 6 7 8 9 10; do ipvsadm -Ln -t "$VS_ADDR" > /dev/null 2>&1 || true; done
clock; echo "ipvsadm_poll_ms $((C - c0))"  # 10 runs in centiseconds: ms per run

# keepalived's console output, each line stamped on arrival.  awk, not a `read` loop: ash
# reads a pipe a byte per syscall, too slow under TCG for the ~20,000 lines 5,000 VIPs log,
# and keepalived blocks on a full pipe.  The few lines the loops below wait for also go to
# a small file, so polling them does not re-read megabytes of log.
mkfifo /tmp/klog.fifo
awk '{
    getline up < "/proc/uptime"; close("/proc/uptime"); split(up, u, " ")
    print u[1], $0 > "/tmp/keepalived.log"; fflush("/tmp/keepalived.log")
    if ($0 ~ /Reload complete|Entering MASTER STATE/) {
        print u[1], $0 > "/tmp/events.log"; fflush("/tmp/events.log")
    }
}' < /tmp/klog.fifo &
: > /tmp/events.log

cp /cfg/keepalived-0.conf /etc/keepalived/keepalived.conf
clock; t_start=$T; c_start=$C
keepalived --dont-fork --log-console --log-detail --no-syslog \
    --use-file /etc/keepalived/keepalived.conf > /tmp/klog.fifo 2>&1 &
kpid=$!
polls=0
while :; do
    table
    [ "$VS" -ge "$WANT_VS" ] && [ "$RS" -ge "$WANT_RS" ] && break
    clock
    [ $((C - c_start)) -lt "$START_CS" ] || fail "start-up: VS $VS/$WANT_VS RS $RS/$WANT_RS"
    [ "$polls" -lt "$MAX_POLLS" ] || fail "start-up: $polls polls"
    kill -0 "$kpid" 2>/dev/null || fail "keepalived exited"
    polls=$((polls + 1))
    sleep "$START_POLL"
done
clock
echo "started $t_start $T $VS $RS"
# No VRRP peer answers in the guest: every instance becomes MASTER after its advert
# timeout and announces its VIPs.  Reloads start once all have, not in that storm.
polls=0
while :; do
    m=$(grep -c 'Entering MASTER STATE' /tmp/events.log || true)
    [ "$m" -ge "$WANT_MASTERS" ] && break
    clock
    [ $((C - c_start)) -lt "$START_CS" ] || fail "start-up: $m/$WANT_MASTERS instances MASTER"
    [ "$polls" -lt "$MAX_POLLS" ] || fail "start-up: $polls polls"
    polls=$((polls + 1))
    sleep "$START_POLL"
done
clock
echo "masters $t_start $T $m"
sleep "$SETTLE"

i=1
while [ "$i" -le "$RELOADS" ]; do
    v=$((i % 2))
    if [ "$v" = 1 ]; then new=$RS1 old=$RS0; else new=$RS0 old=$RS1; fi
    cp "/cfg/keepalived-$v.conf" /etc/keepalived/keepalived.conf
    done0=$(grep -c 'Reload complete' /tmp/events.log || true)
    t_ipvs="" t_done="" polls=0
    clock; t0=$T; c0=$C
    kill -HUP "$kpid"
    while :; do
        if [ -z "$t_ipvs" ]; then
            out=$(ipvsadm -Ln -t "$VS_ADDR" 2>&1 || true)
            case "$out" in
                *"-> $new "*) case "$out" in *"-> $old "*) ;; *) clock; t_ipvs=$T ;; esac ;;
            esac
        fi
        if [ -z "$t_done" ]; then
            d=$(grep -c 'Reload complete' /tmp/events.log || true)
            if [ "$d" -gt "$done0" ]; then clock; t_done=$T; fi
        fi
        [ -n "$t_ipvs" ] && [ -n "$t_done" ] && break
        clock
        [ $((C - c0)) -lt "$RELOAD_CS" ] || fail "reload $i: ipvs ${t_ipvs:-no} done ${t_done:-no}"
        [ "$polls" -lt "$MAX_POLLS" ] || fail "reload $i: $polls polls"
        kill -0 "$kpid" 2>/dev/null || fail "keepalived exited in reload $i"
        polls=$((polls + 1))
        sleep "$POLL"
    done
    table
    echo "reload $i $t0 $t_ipvs $t_done $VS $RS"
    sleep "$SETTLE"
    i=$((i + 1))
done
for p in /proc/[0-9]*; do
    [ "$(cat "$p/comm" 2>/dev/null)" = keepalived ] || continue
    echo "rss_kb ${p#/proc/} $(awk '/^VmRSS/ {print $2}' "$p/status")"
done
echo "===BENCH-END==="
echo "===KEEPALIVED-LOG-BEGIN==="
cat /tmp/keepalived.log
echo "===KEEPALIVED-LOG-END==="
echo "===GUEST-DONE==="
poweroff -f
sleep 5
"""


@dataclass(frozen=True)
class Renders:
    """The two keepalived.conf texts of one size and what the guest should see of them."""

    configs: tuple[str, str]
    virtual_servers: int
    real_servers: int
    vrrp_instances: int
    changed: str
    """``VIP:port`` of the virtual server whose real server alternates."""
    swapped: tuple[str, str]
    """``address:port`` of that real server in render 0 and render 1, as ipvsadm -Ln prints."""


def state(n: int, variant: int) -> DesiredState:
    objects = cluster(n)["items"]
    assert isinstance(objects, list)
    for obj in objects:
        if obj["kind"] == "EndpointSlice" and obj["metadata"]["name"] == "svc-0-abcde":
            obj["endpoints"][0]["addresses"] = [SWAPPED[variant]]
    settings = Settings(
        node_name=NODE,
        interface="eth0",
        spread=True,
        unicast=True,
        real_server_check=RealServerCheck.NONE,
        vrrp_notify_fifo="/run/vip-agent/vrrp.fifo",
    )
    return translate(Snapshot.from_objects(objects), settings, node_name=NODE, interface="eth0")


def renders(n: int) -> Renders:
    states = (state(n, 0), state(n, 1))
    renderer = render.Renderer(template_dirs(None))
    configs = (
        renderer.render(states[0])["keepalived.conf"],
        renderer.render(states[1])["keepalived.conf"],
    )
    changed = [vs for vs in states[0].virtual_servers if vs.service == CHANGED_SERVICE]
    assert len(changed) == 1 and changed[0].vip.version == 4, changed
    vs = changed[0]
    ports = {rs.port for rs in vs.real_servers}
    assert len(ports) == 1, ports
    port = ports.pop()
    servers = states[0].virtual_servers
    return Renders(
        configs=configs,
        virtual_servers=len(servers),
        real_servers=sum(len(v.real_servers) for v in servers),
        vrrp_instances=configs[0].count("\nvrrp_instance "),
        changed=f"{vs.vip}:{vs.port}",
        swapped=(f"{SWAPPED[0]}:{port}", f"{SWAPPED[1]}:{port}"),
    )


@dataclass(frozen=True)
class Limits:
    reloads: int
    poll: float
    settle: float
    start_timeout: float
    reload_timeout: float
    memory_mb: int
    cpus: int

    def qemu_timeout(self) -> float:
        """Boot plus every bounded wait in the guest, with room for the settles and dumps."""
        waits = self.start_timeout + self.reloads * (self.reload_timeout + self.settle)
        return 120 + waits * 1.2


def guest_files(r: Renders, limits: Limits) -> dict[str, str]:
    env = {
        "NODE_ADDRESSES": " ".join(NODE_ADDRESSES),
        "WANT_VS": r.virtual_servers,
        "WANT_RS": r.real_servers,
        "WANT_MASTERS": r.vrrp_instances,
        "VS_ADDR": r.changed,
        "RS0": r.swapped[0],
        "RS1": r.swapped[1],
        "RELOADS": limits.reloads,
        "POLL": limits.poll,
        "START_POLL": max(limits.poll, 0.25),
        "SETTLE": limits.settle,
        "START_CS": int(limits.start_timeout * 100),
        "RELOAD_CS": int(limits.reload_timeout * 100),
        "MAX_POLLS": 100_000,
    }
    return {
        "bench.env": "".join(f"{k}='{v}'\n" for k, v in env.items()),
        "pre.sh": GUEST_SCRIPT,
        "interfaces": "eth0\n",
        # /init insists on it, though pre.sh powers off before /init would start keepalived
        "keepalived.conf": r.configs[0],
        "keepalived-0.conf": r.configs[0],
        "keepalived-1.conf": r.configs[1],
    }


def completions(log: list[str]) -> list[float]:
    """Stamps of keepalived's "Reload complete" lines (the stamp is each line's first field).

    The guest waits for each reload's line before the next SIGHUP, so the first stamp at or
    after a SIGHUP is that reload's.
    """
    return [float(line.split()[0]) for line in log if "Reload complete" in line]


def measure(n: int, limits: Limits) -> dict[str, Any]:
    r = renders(n)
    console, seconds = boot(
        guest_files(r, limits),
        timeout=limits.qemu_timeout(),
        memory_mb=limits.memory_mb,
        cpus=limits.cpus,
    )
    bench = section(console, "BENCH")
    if "===GUEST-FAILED===" in console or bench is None:
        raise GuestError(f"guest bench failed at {n} Services", console)
    done = completions(section(console, "KEEPALIVED-LOG") or [])
    facts: dict[str, str] = {}
    ipvs, complete = [], []
    for line in bench:
        key, _, rest = line.partition(" ")
        fields = rest.split()
        if key == "started":
            facts["startup_s"] = f"{float(fields[1]) - float(fields[0]):.2f}"
            facts["table"] = f"{fields[2]} virtual, {fields[3]} real servers"
        elif key == "masters":
            facts["all_master_s"] = f"{float(fields[1]) - float(fields[0]):.2f}"
        elif key == "reload":
            t0, t_ipvs = float(fields[1]), float(fields[2])
            after = [t - t0 for t in done if t >= t0]
            assert after, (line, done)
            ipvs.append(t_ipvs - t0)
            complete.append(after[0])
        elif key == "rss_kb":
            facts.setdefault("rss_kb", "")
            facts["rss_kb"] = f"{facts['rss_kb']} {fields[1]}".strip()
        else:
            facts[key] = rest
    assert len(complete) == limits.reloads, bench
    return {
        "services": n,
        "virtual_servers": r.virtual_servers,
        "real_servers": r.real_servers,
        "vrrp_instances": r.vrrp_instances,
        "config_bytes": len(r.configs[0]),
        "reload_complete": timed(complete),
        "ipvs_visible": timed(ipvs),
        "guest": facts,
        "qemu_seconds": round(seconds, 1),
    }


def timed(values: list[float]) -> dict[str, float]:
    return {"median_s": round(statistics.median(values), 3), "max_s": round(max(values), 3)}


def ratio(row: dict[str, Any], base: dict[str, Any], key: str) -> str:
    below = base[key]["median_s"]
    return f"{row[key]['median_s'] / below:.1f}x" if below > 0 else "-"


def table(rows: list[dict[str, Any]]) -> str:
    base = rows[0]
    head = (
        "| Services (VS / RS) | start-up to full table (to all MASTER) | SIGHUP -> Reload complete "
        f"(median / max, x {base['services']}) | SIGHUP -> changed RS in ipvsadm "
        f"(median / max, x {base['services']}) |"
    )
    lines = [head, "|---|---|---|---|"]
    for row in rows:
        rc, iv = row["reload_complete"], row["ipvs_visible"]
        lines.append(
            f"| {row['services']:,} ({row['virtual_servers']:,} / {row['real_servers']:,}) "
            f"| {row['guest']['startup_s']} s ({row['guest']['all_master_s']} s) "
            f"| {rc['median_s']:.2f} / {rc['max_s']:.2f} s ({ratio(row, base, 'reload_complete')}) "
            f"| {iv['median_s']:.2f} / {iv['max_s']:.2f} s ({ratio(row, base, 'ipvs_visible')}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10,1000,5000", help="the first is the ratios' base")
    parser.add_argument("--reloads", type=int, default=5)
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between table polls")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds after each reload")
    parser.add_argument("--start-timeout", type=float, default=900)
    parser.add_argument("--reload-timeout", type=float, default=300)
    parser.add_argument("--memory", type=int, default=2048, help="guest MiB")
    parser.add_argument("--cpus", type=int, default=2, help="guest vCPUs (qemu -smp)")
    args = parser.parse_args()
    reason = guest_available()
    if reason is not None:
        sys.exit(reason)
    limits = Limits(
        reloads=args.reloads,
        poll=args.poll,
        settle=args.settle,
        start_timeout=args.start_timeout,
        reload_timeout=args.reload_timeout,
        memory_mb=args.memory,
        cpus=args.cpus,
    )
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        try:
            rows.append(measure(n, limits))
        except GuestError as err:
            kept = Path(tempfile.gettempdir()) / f"guest_reload_cost-{n}.console"
            kept.write_text(err.console)
            sys.exit(f"{err}\n(whole console: {kept})")
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    guest = rows[0]["guest"]
    stamp = (cache_dir() / "stamp").read_text().splitlines()[0]
    print(
        f"host: {platform.machine()}, {os.cpu_count()} cores; guest: qemu TCG (no KVM), "
        f"{guest['cpus']} vCPUs, {args.memory} MiB, kernel {guest['kernel']} ({stamp}); "
        f"{guest['keepalived']}; reloads per size: {args.reloads}; table polled every "
        f"{args.poll} s + one ipvsadm run ({guest['ipvsadm_poll_ms']} ms in the guest)"
    )
    print(table(rows))
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

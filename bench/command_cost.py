"""What one run of a small `vip-agent` command costs, start to exit.

`vip-agent check-apiserver` may run as a keepalived ``vrrp_script`` every second or so on
every control-plane node (README: Health-driven failover), so its whole process counts:
interpreter start-up, imports, settings, the check.  Each command runs ``--runs`` times in
a fresh process (``python -m agent``, as the console script runs it); median wall time and
CPU time (user + system, the child's own).  check-apiserver asks a closed local port, so
the figure is the command's own cost, not an apiserver's answer time.

    python bench/command_cost.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import sys

from render_bench import run_once  # bench/ is where this script runs from


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def cost(argv: list[str], runs: int, *, code: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``argv`` over ``runs`` fresh processes, each of which
    must exit with ``code``."""
    measured = [run_once(argv, code=code) for _ in range(runs)]
    return statistics.median(r.wall for r in measured), statistics.median(r.cpu for r in measured)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    agent = [sys.executable, "-m", "agent"]
    url = f"https://127.0.0.1:{closed_port()}/readyz"
    # name -> (argv, the exit code that shows it ran the path meant: check-apiserver's 1 is
    # "unhealthy", where 2 would be a refused setting)
    commands = {
        "python -c pass (the interpreter alone)": ([sys.executable, "-c", "pass"], 0),
        "vip-agent --version": ([*agent, "--version"], 0),
        "vip-agent check-apiserver (a closed port)": (
            [*agent, "check-apiserver", "--url", url, "--timeout", "0.5"],
            1,
        ),
    }
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; median of {args.runs} fresh processes"
    )
    print(f"{'command':<44} {'wall ms':>8} {'CPU ms':>8}")
    for name, (argv, code) in commands.items():
        wall, cpu = cost(argv, args.runs, code=code)
        print(f"{name:<44} {wall * 1000:>8.0f} {cpu * 1000:>8.0f}")


if __name__ == "__main__":
    main()

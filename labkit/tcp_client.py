"""A client that keeps opening TCP connections to a VIP, logging who answered.

    python labkit/tcp_client.py VIP PORT --log FILE --stop-file F [--every 0.01] [--timeout 0.2]

One line per connection: ``<monotonic time it started> <1|0> <answer>``, where the answer
is the first line the server sent (labkit.bgplab's responder sends its node's name).  A
fresh connection each time, so a router hashing flows over ECMP next hops spreads them.
The clock is CLOCK_MONOTONIC, which is the same in every network namespace of the host,
so the lab can compare these times with its own.
"""

from __future__ import annotations

import argparse
import os
import socket
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("vip")
    parser.add_argument("port", type=int)
    parser.add_argument("--log", required=True)
    parser.add_argument("--stop-file", required=True)
    parser.add_argument("--every", type=float, default=0.01)
    parser.add_argument("--timeout", type=float, default=0.2)
    parser.add_argument("--max-seconds", type=float, default=7200)
    args = parser.parse_args()
    deadline = time.monotonic() + args.max_seconds
    with open(args.log, "a", buffering=1) as log:
        while not os.path.exists(args.stop_file) and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                with socket.create_connection((args.vip, args.port), timeout=args.timeout) as c:
                    c.settimeout(args.timeout)
                    answer = c.makefile().readline().strip()
                ok = bool(answer)
            except OSError as err:
                ok, answer = False, type(err).__name__
            log.write(f"{started:.4f} {int(ok)} {answer or '-'}\n")
            time.sleep(max(0.0, args.every - (time.monotonic() - started)))


if __name__ == "__main__":
    main()

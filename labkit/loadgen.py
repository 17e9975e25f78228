"""Constant TCP load: many short connections and some long-lived ones, counting failures.

    python labkit/loadgen.py HOST PORT --stop-file F [--short-workers 4] [--long-lived 8]
        [--long-lifetime 1e9] [--max-seconds 600]

Short: connect, send a line, read it back, close; any error or wrong answer is a failure.
Long-lived: one connection each that sends a line every 50 ms and reads it back; an error
is a reset (then it reconnects); after --long-lifetime seconds it closes cleanly and opens
a new one.  Runs until the stop file appears (or --max-seconds), then prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time

counts = {"short_ok": 0, "short_failed": 0, "long_lived_exchanges": 0, "long_lived_reset": 0}
errors: list[str] = []
lock = threading.Lock()


def bump(key: str, error: str | None = None) -> None:
    with lock:
        counts[key] += 1
        if error and len(errors) < 20:
            errors.append(error)


def exchange(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(payload)
    got = b""
    while not got.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed by peer")
        got += chunk
    if got != payload:
        raise ValueError(f"echo mismatch {got!r}")


def short(host: str, port: int, stop: threading.Event, worker: int) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        try:
            with socket.create_connection((host, port), timeout=5) as sock:
                exchange(sock, f"short-{worker}-{n}\n".encode())
            bump("short_ok")
        except OSError as err:
            bump("short_failed", f"short: {err!r}")
        except ValueError as err:
            bump("short_failed", f"short: {err}")


def long_lived(host: str, port: int, stop: threading.Event, lifetime: float, index: int) -> None:
    while not stop.is_set():
        opened = time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=5) as sock:
                n = 0
                while not stop.is_set() and time.monotonic() - opened < lifetime:
                    n += 1
                    exchange(sock, f"long-{index}-{n}\n".encode())
                    bump("long_lived_exchanges")
                    stop.wait(0.05)
        except (OSError, ValueError) as err:
            bump("long_lived_reset", f"long: {err!r}")
            stop.wait(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--stop-file", required=True)
    parser.add_argument("--short-workers", type=int, default=4)
    parser.add_argument("--long-lived", type=int, default=8)
    parser.add_argument("--long-lifetime", type=float, default=1e9)
    parser.add_argument("--max-seconds", type=float, default=600)
    args = parser.parse_args()
    stop = threading.Event()
    threads = [
        threading.Thread(target=short, args=(args.host, args.port, stop, i), daemon=True)
        for i in range(args.short_workers)
    ] + [
        threading.Thread(
            target=long_lived, args=(args.host, args.port, stop, args.long_lifetime, i), daemon=True
        )
        for i in range(args.long_lived)
    ]
    for thread in threads:
        thread.start()
    print("running", flush=True)
    deadline = time.monotonic() + args.max_seconds
    while not os.path.exists(args.stop_file) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
    print(json.dumps({**counts, "errors": errors}), flush=True)


if __name__ == "__main__":
    main()

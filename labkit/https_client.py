"""A client that keeps asking the apiserver VIP, logging every request's outcome.

    python labkit/https_client.py URL --log FILE --stop-file F [--every 0.02] [--timeout 0.5]

One line per request: ``<unix time the request started> <1|0> <detail>``. A request
counts as ok on HTTP 200 within the timeout; connection errors, resets, timeouts and
other statuses are failures.
"""

from __future__ import annotations

import argparse
import http.client
import os
import ssl
import time
from urllib.parse import urlsplit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--log", required=True)
    parser.add_argument("--stop-file", required=True)
    parser.add_argument("--every", type=float, default=0.02)
    parser.add_argument("--timeout", type=float, default=0.5)
    parser.add_argument("--max-seconds", type=float, default=3600)
    args = parser.parse_args()
    parts = urlsplit(args.url)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + args.max_seconds
    with open(args.log, "a", buffering=1) as log:
        while not os.path.exists(args.stop_file) and time.monotonic() < deadline:
            started = time.time()
            conn = http.client.HTTPSConnection(
                parts.hostname or "", parts.port or 443, timeout=args.timeout, context=context
            )
            try:
                conn.request("GET", parts.path or "/")
                response = conn.getresponse()
                response.read()
                ok, detail = response.status == 200, str(response.status)
            except (OSError, http.client.HTTPException) as err:
                ok, detail = False, type(err).__name__
            finally:
                conn.close()
            log.write(f"{started:.4f} {int(ok)} {detail}\n")
            time.sleep(max(0.0, args.every - (time.time() - started)))


if __name__ == "__main__":
    main()

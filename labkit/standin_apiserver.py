"""A small HTTPS stand-in for kube-apiserver's /readyz, whose answer a test controls.

    python labkit/standin_apiserver.py --bind ADDR --port PORT --cert C --key K --mode-file F

The mode file holds what /readyz does: ``200`` (default, also when the file is absent),
``401``, ``403``, ``500``, or ``hang`` (accept, never answer); every other path does the
same, so a client going through haproxy sees an unhealthy apiserver fail.  The body names
the server, so a client can tell who answered.
A stand-in, because a real apiserver whose readiness can be flipped on demand per node
cannot run in these namespaces; the real one is exercised by tests/kube.
"""

from __future__ import annotations

import argparse
import http.server
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any


def make_certificate(directory: Path, addresses: list[str]) -> tuple[Path, Path]:
    """A self-signed certificate for these IP addresses (it is its own CA)."""
    cert, key = directory / "apiserver.crt", directory / "apiserver.key"
    if not cert.exists():
        directory.mkdir(parents=True, exist_ok=True)
        san = ",".join(f"IP:{a}" for a in addresses)
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "ec"),
                *("-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650"),
                *("-subj", "/CN=kube-apiserver-standin", "-addext", f"subjectAltName={san}"),
                *("-keyout", str(key), "-out", str(cert)),
            ],
            check=True,
            capture_output=True,
        )
    return cert, key


class Handler(http.server.BaseHTTPRequestHandler):
    server: StandIn

    def do_GET(self) -> None:
        # the mode applies to every path: an unhealthy apiserver fails real requests too
        mode = self.server.mode()
        if mode == "hang":
            time.sleep(30)
            return
        status = int(mode) if mode.isdigit() else 200
        body = f"{self.server.name} {status}\n".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


class StandIn(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, bind: str, port: int, cert: Path, key: Path, mode_file: Path) -> None:
        self.address_family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        super().__init__((bind, port), Handler)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.mode_file = mode_file
        self.name = bind

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens here, in the connection's own thread: done on the
        # listening socket, one client that connects and says nothing (a TCP health
        # check, a partitioned peer) would block every other client.
        request.settimeout(5)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return
        self.RequestHandlerClass(tls, client_address, self)

    def mode(self) -> str:
        try:
            return self.mode_file.read_text().strip() or "200"
        except OSError:
            return "200"

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, daemon=True)
        thread.start()
        return thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, default=6443)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--mode-file", type=Path, required=True)
    args = parser.parse_args()
    server = StandIn(args.bind, args.port, args.cert, args.key, args.mode_file)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

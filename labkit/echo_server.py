"""A line echo server that understands the PROXY protocol header (v1), for haproxy tests.

    python labkit/echo_server.py ADDRESS PORT [ADDRESS PORT ...]

Each connection may start with a PROXY v1 line (what haproxy's send-proxy writes); it is
consumed, then every line is echoed back.  haproxy's health checks connect and close at
once, which is fine.
"""

from __future__ import annotations

import asyncio
import sys


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        first = await reader.readline()
        if first and not first.startswith(b"PROXY "):
            writer.write(first)
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main(pairs: list[tuple[str, int]]) -> None:
    servers = [await asyncio.start_server(handle, host, port, backlog=1024) for host, port in pairs]
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main([(args[i], int(args[i + 1])) for i in range(0, len(args), 2)]))

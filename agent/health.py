"""The apiserver health check that moves the control-plane VIP.

Healthy means: ``GET /readyz`` over TLS answers HTTP 200 within the timeout.  Anything
else is a failure with a reason: a refused or hanging connection, a TLS error, and
also 401, 403 and 500 (the kubeadm example script counts any HTTP answer as healthy,
so an apiserver that answers 500 kept the VIP).  When this node holds the VIP, the
same request also goes through the VIP (haproxy's frontend), as that script intends:
a node whose haproxy is broken must not keep the VIP either.

The prober runs in ``vip-agent run`` on a short interval with fall/rise hysteresis and
writes keepalived's ``track_file`` (``0`` healthy, ``1`` failing).  keepalived watches
the file with inotify, so the priority changes the moment the file is replaced: no
process is forked per check, unlike a ``vrrp_script``.  The file is replaced by
rename, so keepalived never reads a half-written value.
"""

from __future__ import annotations

import dataclasses
import http.client
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from agent.apply import replace_file
from agent.core.model import IPAddress
from agent.settings import Settings

log = logging.getLogger("vip-agent.health")


@dataclass(frozen=True)
class ProbeConfig:
    url: str
    ca_file: str | None = None
    insecure: bool = False
    client_cert: str | None = None
    client_key: str | None = None
    token_file: str | None = None
    timeout: float = 1.0


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    reason: str


def _context(config: ProbeConfig) -> ssl.SSLContext:
    if config.insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=config.ca_file)
    if config.client_cert:
        context.load_cert_chain(config.client_cert, config.client_key)
    return context


def probe(config: ProbeConfig) -> ProbeResult:
    """One GET of ``config.url``."""
    parts = urlsplit(config.url)
    if parts.scheme != "https" or not parts.hostname:
        return ProbeResult(False, f"{config.url}: only https://HOST[:PORT]/PATH is supported")
    host = parts.hostname
    port = parts.port or 443
    path = (parts.path or "/readyz") + (f"?{parts.query}" if parts.query else "")
    where = f"https://{host}:{port}{path}"
    try:
        context = _context(config)
    except (OSError, ssl.SSLError) as err:
        return ProbeResult(False, f"TLS set-up: {err}")
    headers = {"User-Agent": "vip-agent-health"}
    if config.token_file:
        try:
            token = Path(config.token_file).read_text(encoding="utf-8").strip()
        except OSError as err:
            return ProbeResult(False, f"token file: {err.strerror}")
        headers["Authorization"] = f"Bearer {token}"
    connection = http.client.HTTPSConnection(host, port, timeout=config.timeout, context=context)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read(4096)
    except ssl.SSLCertVerificationError as err:
        return ProbeResult(False, f"{where}: certificate not trusted: {err.verify_message}")
    except TimeoutError:
        return ProbeResult(False, f"{where}: no answer within {config.timeout:g}s")
    except ConnectionRefusedError:
        return ProbeResult(False, f"{where}: connection refused")
    except (OSError, http.client.HTTPException, ssl.SSLError) as err:
        return ProbeResult(False, f"{where}: {err}")
    finally:
        connection.close()
    if response.status != 200:
        return ProbeResult(False, f"{where}: HTTP {response.status} {response.reason}")
    return ProbeResult(True, f"{where}: HTTP 200")


def check(
    config: ProbeConfig, *, vip: IPAddress | None, holds_vip: Callable[[], bool], vip_port: int
) -> ProbeResult:
    """The local apiserver, and through the VIP too when this node holds it."""
    local = probe(config)
    if not local.ok or vip is None or not holds_vip():
        return local
    # kubeadm puts the control-plane endpoint (the VIP) in the apiserver certificate
    through = probe(dataclasses.replace(config, url=_via(config.url, vip=vip, port=vip_port)))
    if not through.ok:
        return ProbeResult(False, f"local apiserver healthy, but through the VIP: {through.reason}")
    return ProbeResult(True, f"{local.reason}; through the VIP: HTTP 200")


def _via(url: str, *, vip: IPAddress, port: int) -> str:
    host = f"[{vip}]" if vip.version == 6 else str(vip)
    return urlsplit(url)._replace(netloc=f"{host}:{port}").geturl()


def write_track_file(path: Path, failing: bool) -> None:
    """Replace keepalived's track file atomically: ``1`` lowers priority, ``0`` restores it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, b"1\n" if failing else b"0\n", 0o644)


class Prober:
    """Probe every ``interval``; flip to failing after ``fall`` failures, back after ``rise``."""

    def __init__(
        self,
        *,
        check: Callable[[], ProbeResult],
        track_file: Path,
        interval: float,
        fall: int,
        rise: int,
        on_change: Callable[[bool], None] = lambda healthy: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.check = check
        self.track_file = track_file
        self.interval = interval
        self.fall = fall
        self.rise = rise
        self.on_change = on_change
        self.clock = clock
        self.healthy: bool | None = None
        self.last: ProbeResult | None = None
        self._streak = 0

    def step(self) -> None:
        """One probe and its consequences (the loop calls this; tests too)."""
        result = self.check()
        self.last = result
        if self.healthy is None:
            # first answer decides at once: no VIP should wait for a rise streak at start
            self._set(result.ok, result)
            return
        if result.ok == self.healthy:
            self._streak = 0
            return
        self._streak += 1
        if self._streak >= (self.rise if result.ok else self.fall):
            self._set(result.ok, result)

    def _set(self, healthy: bool, result: ProbeResult) -> None:
        self._streak = 0
        changed = healthy != self.healthy
        self.healthy = healthy
        write_track_file(self.track_file, failing=not healthy)
        if changed:
            level = logging.INFO if healthy else logging.WARNING
            log.log(level, "apiserver %s: %s", "healthy" if healthy else "failing", result.reason)
            self.on_change(healthy)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            started = self.clock()
            try:
                self.step()
            except Exception:  # a probe bug must not stop the VIP from moving
                log.exception("apiserver probe crashed")
            stop.wait(max(0.0, self.interval - (self.clock() - started)))


def probe_config(settings: Settings, *, insecure: bool = False) -> ProbeConfig:
    """What the prober and ``check-apiserver`` ask, from the settings."""
    return ProbeConfig(
        url=settings.apiserver_url,
        ca_file=settings.apiserver_ca_file,
        # no CA configured: like haproxy's check, TLS without verification
        insecure=insecure or settings.apiserver_ca_file is None,
        client_cert=settings.apiserver_client_cert,
        client_key=settings.apiserver_client_key,
        token_file=settings.apiserver_token_file,
        timeout=settings.health_timeout,
    )


def holds(vip: IPAddress) -> Callable[[], bool]:
    """Does this node hold ``vip`` now (is it on one of its interfaces)?"""
    from agent import netlink

    return lambda: netlink.interface_for(vip) is not None

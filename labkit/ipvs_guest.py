"""Run keepalived against a real IPVS table inside a throw-away qemu guest.

The host kernel of the CI machines has no IPVS, so ``virtual_server`` blocks are proved in a
guest booting Debian's own 6.1 kernel under qemu software emulation (``-accel tcg``; KVM hangs
on these machines). ``scripts/build-ipvs-guest`` caches ``vmlinuz`` and ``base.cpio.gz`` (busybox,
IPVS modules, keepalived, ipvsadm and an ``/init``), plus ``vmlinux`` (the bzImage's ELF, booted
through PVH so the guest skips ~3 s of xz decompression) and ``base.cpio`` (uncompressed), which
are preferred when present. Each run appends a small uncompressed newc archive holding
``/cfg/...`` and boots it. The guest's ``/init``:

* creates the dummy links listed in ``/cfg/interfaces`` (multicast on, up) and the addresses
  of ``/cfg/addresses`` ("IFNAME ADDR/PREFIX" lines), runs ``/cfg/pre.sh`` if present;
* starts ``keepalived --dont-fork --log-console --log-detail --no-syslog --use-file`` with
  ``/cfg/keepalived.conf``, waits for ``ipvsadm -Sn`` to change and stay stable for 1 s, and
  prints it between ``===IPVS1-BEGIN===`` / ``===IPVS1-END===``;
* if ``/cfg/keepalived2.conf`` exists, copies it over the live config, sends SIGHUP to
  keepalived, waits again and prints ``===IPVS2-BEGIN===`` / ``===IPVS2-END===``;
* prints keepalived's own log between ``===KEEPALIVED-LOG-BEGIN===`` / ``-END===`` and powers
  off.

It lives in labkit/ because tests/guest proves the tables and bench/guest_reload_cost.py
times reloads with it; :func:`boot` is the bare boot for a caller whose ``/cfg/pre.sh`` runs
its own experiment and powers off before ``/init`` gets further.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = ROOT / "scripts" / "build-ipvs-guest"
QEMU = "qemu-system-x86_64"
KERNEL_CMDLINE = "console=ttyS0 panic=-1 quiet loglevel=3 mitigations=off tsc=reliable"


def cache_dir() -> Path:
    return Path(os.environ.get("VIP_AGENT_CACHE", "/var/cache/vip-agent")) / "ipvs-guest"


class GuestError(RuntimeError):
    """The guest did not produce the expected markers (or timed out)."""

    def __init__(self, message: str, console: str) -> None:
        tail = "\n".join(console.splitlines()[-60:])
        super().__init__(f"{message}\n--- guest console tail ---\n{tail}")
        self.console = console


@dataclass(frozen=True)
class GuestResult:
    first: list[str]
    """``ipvsadm -Sn`` lines once keepalived programmed the first config."""
    after_reload: list[str] | None
    """``ipvsadm -Sn`` lines after SIGHUP with ``reload_config`` (None without reload)."""
    console: str
    """Full serial console log (kernel, init, keepalived log section)."""
    seconds: float
    """Wall-clock time of the qemu run."""
    keepalived_log: str = ""
    """keepalived's own ``--log-console`` output from inside the guest."""


def guest_available() -> str | None:
    """Return why guest tests must be skipped, or None when the cached guest is usable."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} not installed (run scripts/build-ipvs-guest as root)"
    cache = cache_dir()
    missing = [n for n in ("vmlinuz", "base.cpio.gz", "stamp") if not (cache / n).is_file()]
    if missing:
        return f"IPVS guest not built ({', '.join(missing)} missing in {cache}); run {BUILD_SCRIPT}"
    return None


def guest_modules() -> list[str]:
    """Kernel modules the cached guest loads (``etc/guest-modules`` of its base initramfs).

    Lets a test render only what the guest kernel can do (a scheduler needs its
    ``ip_vs_<name>`` module) before it boots; an empty list when the file is absent.
    """
    cache = cache_dir()
    plain = cache / "base.cpio"
    with plain.open("rb") if plain.is_file() else gzip.open(cache / "base.cpio.gz", "rb") as f:
        while True:
            header = f.read(110)
            if len(header) < 110 or header[:6] not in (b"070701", b"070702"):
                return []
            size = int(header[54:62], 16)
            name_size = int(header[94:102], 16)
            name = f.read(name_size)[:-1].decode("utf-8", "replace")
            f.read(-(110 + name_size) % 4)
            if name == "TRAILER!!!":
                return []
            if name.lstrip("./") == "etc/guest-modules":
                return f.read(size).decode().split()
            f.seek(size + (-size % 4), os.SEEK_CUR)


def _newc_entry(ino: int, name: str, mode: int, data: bytes = b"") -> bytes:
    """One ``newc`` (SVR4, no CRC) cpio record, padded to 4 bytes."""
    encoded = name.encode() + b"\0"
    nlink = 2 if mode & 0o040000 else 1
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    header = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
    out = header + encoded
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def _cfg_archive(files: dict[str, str]) -> bytes:
    entries = [_newc_entry(1, "cfg", 0o040755)]
    for ino, (name, text) in enumerate(sorted(files.items()), start=2):
        mode = 0o100755 if name.endswith(".sh") else 0o100644
        entries.append(_newc_entry(ino, f"cfg/{name}", mode, text.encode()))
    entries.append(_newc_entry(0, "TRAILER!!!", 0))
    return b"".join(entries)


def section(console: str, name: str) -> list[str] | None:
    """The non-blank lines between ``===NAME-BEGIN===`` and ``===NAME-END===``, or None."""
    begin, end = f"==={name}-BEGIN===", f"==={name}-END==="
    lines = console.splitlines()
    try:
        start = lines.index(begin)
        stop = lines.index(end, start + 1)
    except ValueError:
        return None
    return [line for line in lines[start + 1 : stop] if line.strip()]


def run_guest(
    config: str,
    *,
    interfaces: list[str],
    reload_config: str | None = None,
    pre_script: str | None = None,
    addresses: list[tuple[str, str]] | None = None,
    timeout: float = 90,
) -> GuestResult:
    """Boot the guest with ``config`` (and optionally reload to ``reload_config``).

    ``interfaces`` become dummy links, ``addresses`` are ``(ifname, "ADDR/PREFIX")`` pairs,
    ``pre_script`` is a ``sh -e`` script run before keepalived starts (e.g. ipvsadm commands
    standing in for kube-proxy's own virtual servers).
    """
    files = {
        "keepalived.conf": config,
        "interfaces": "".join(f"{name}\n" for name in interfaces),
    }
    if reload_config is not None:
        files["keepalived2.conf"] = reload_config
    if pre_script is not None:
        files["pre.sh"] = pre_script
    if addresses:
        files["addresses"] = "".join(f"{ifname} {addr}\n" for ifname, addr in addresses)
    console, seconds = boot(files, timeout=timeout)
    if "===GUEST-FAILED===" in console:
        raise GuestError("guest init failed", console)
    first = section(console, "IPVS1")
    if first is None:
        raise GuestError("no ===IPVS1=== markers in console", console)
    after_reload: list[str] | None = None
    if reload_config is not None:
        after_reload = section(console, "IPVS2")
        if after_reload is None:
            raise GuestError("no ===IPVS2=== markers after reload", console)
    klog = section(console, "KEEPALIVED-LOG") or []
    return GuestResult(
        first=first,
        after_reload=after_reload,
        console=console,
        seconds=seconds,
        keepalived_log="\n".join(klog),
    )


def boot(
    files: dict[str, str], *, timeout: float = 90, memory_mb: int = 512, cpus: int = 1
) -> tuple[str, float]:
    """Boot the cached guest with ``files`` under ``/cfg``; its console and wall-clock seconds.

    The lower half of :func:`run_guest`, for callers that read their own markers (the
    guest reload bench drives keepalived from ``/cfg/pre.sh``). Raises :class:`GuestError`
    when the guest is not built or qemu outlives ``timeout``.
    """
    reason = guest_available()
    if reason is not None:
        raise GuestError(reason, "")
    cache = cache_dir()
    kernel = cache / "vmlinux"
    if not kernel.is_file():
        kernel = cache / "vmlinuz"
    base_cpio = cache / "base.cpio"
    if not base_cpio.is_file():
        base_cpio = cache / "base.cpio.gz"
    with tempfile.TemporaryDirectory(prefix="ipvs-guest-") as tmp:
        initrd = Path(tmp) / "initrd"
        with initrd.open("wb") as out:
            base = base_cpio.read_bytes()
            out.write(base)
            # The kernel only takes an appended uncompressed cpio at a 4-byte boundary.
            out.write(b"\0" * (-len(base) % 4))
            out.write(_cfg_archive(files))
        cmd = [
            QEMU,
            "-accel",
            "tcg",
            "-m",
            str(memory_mb),
            "-smp",
            str(cpus),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-nic",
            "none",
            "-no-reboot",
            "-kernel",
            str(kernel),
            "-initrd",
            str(initrd),
            "-append",
            KERNEL_CMDLINE,
        ]
        started = time.monotonic()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            raw, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()  # qemu itself, by pid
            raw, _ = proc.communicate()
            console = _clean(raw)
            raise GuestError(f"qemu guest timed out after {timeout:.0f} s", console) from None
        seconds = time.monotonic() - started
    return _clean(raw), seconds


def _clean(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")

"""Real keepalived and haproxy checkers, for tests and benchmarks.

``keepalived -t`` rejects a configuration whose interfaces do not exist, so
the check runs in a scratch network namespace holding veth links with the
names the configuration uses (eth0, eth1 ...).  That needs root; without it
the tests that use these fixtures skip and say so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from agent import validate
from agent.daemons.bird import check_bird
from agent.daemons.haproxy import check_haproxy
from agent.daemons.keepalived import check_keepalived


def root_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a network namespace (CI runs as root)"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    return None


def missing_binaries(*names: str) -> str | None:
    """Why the named programs cannot run here, or None."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        return f"{', '.join(missing)} not installed (make setup installs them)"
    return None


class ScratchNamespace:
    """A network namespace owned by this test session; deleted by name we created."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.links: set[str] = set()
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)

    def ensure_links(self, names: Iterable[str]) -> None:
        for ifname in sorted(set(names) - self.links):
            peer = f"p{len(self.links)}x"
            subprocess.run(
                ["ip", "-n", self.name, "link", "add", ifname, "type", "veth", "peer", peer],
                check=True,
                capture_output=True,
            )
            self.links.add(ifname)

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)


class Checkers:
    def __init__(self, netns: ScratchNamespace) -> None:
        self.netns = netns
        self.tmp = Path(tempfile.mkdtemp(prefix="vip-agent-check-"))

    def keepalived(self, text: str, interfaces: Iterable[str] = ("eth0",)) -> validate.CheckResult:
        self.netns.ensure_links(interfaces)
        path = self.tmp / "keepalived.conf"
        path.write_text(text, encoding="utf-8")
        return check_keepalived(path, netns=self.netns.name)

    def haproxy(self, text: str) -> validate.CheckResult:
        path = self.tmp / "haproxy.cfg"
        path.write_text(text, encoding="utf-8")
        return check_haproxy(path)

    def bird(self, text: str) -> validate.CheckResult:
        """``bird -p``: BIRD parses the file and exits (no interface needs to exist)."""
        path = self.tmp / "bird.conf"
        path.write_text(text, encoding="utf-8")
        return check_bird(path)

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

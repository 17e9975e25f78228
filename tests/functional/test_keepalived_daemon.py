"""agent.daemons.keepalived.Keepalived against a real keepalived (supervise mode)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.daemons.keepalived import Keepalived
from labkit.checkers import root_skip_reason
from tests.support.requirements import require_binaries, unavailable


@pytest.fixture
def idle_keepalived(tmp_path: Path) -> Iterator[Keepalived]:
    """keepalived with nothing to run (mode bgp without IPVS; a node with no VIPs yet):
    the parent alone, no VRRP or checker child."""
    reason = root_skip_reason()
    if reason:
        unavailable(reason)
    require_binaries("keepalived")
    config = tmp_path / "keepalived.conf"
    config.write_text("global_defs {\n    router_id idle\n}\n", encoding="utf-8")
    daemon = Keepalived(binary="keepalived", config=config, run_dir=tmp_path / "run", ipvs=False)
    daemon.start()
    yield daemon
    daemon.stop()


def test_reload_of_a_keepalived_without_children_is_confirmed_at_once(
    idle_keepalived: Keepalived,
) -> None:
    # no child logs "Reload complete"; waiting for one blocked the agent's loop 5 s
    # per change in mode bgp
    for _ in range(3):
        outcome = idle_keepalived.reload()
        assert outcome.ok, outcome
        assert outcome.seconds < 1.0, outcome
    assert idle_keepalived.running()

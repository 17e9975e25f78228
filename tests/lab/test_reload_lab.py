"""Hot reloads with real daemons under watch: no VIP moves, no connection fails.

The benchmarks in bench/ are the experiments; these tests run them at the size the issue
asks for and assert the outcome (the benchmark prints the timing figures).
"""

from __future__ import annotations

import pytest

from labkit import haproxy_reload, keepalived_reload

pytestmark = pytest.mark.usefixtures("lab_ready")


def test_100_keepalived_reloads_that_leave_vrrp_alone_never_move_the_vip() -> None:
    result = keepalived_reload.run(100)
    assert result["failed_reloads"] == 0, result
    assert result["polls"] > 50, result
    assert result["master_missing_vip_polls"] == 0, result
    assert result["backup_had_vip_polls"] == 0, result
    assert result["master_state_changes"] == [], result


def test_50_haproxy_reloads_under_load_fail_no_connection() -> None:
    result = haproxy_reload.run(reloads=50, long_lived=8, short_workers=4)
    assert result["failed_reloads"] == 0, result
    assert result["short_ok"] > 500, result
    assert result["short_failed"] == 0, result
    assert result["long_lived_reset"] == 0, result
    assert result["long_lived_exchanges"] > 100, result

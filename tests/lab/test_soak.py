"""A short chaos soak (labkit/soak.py): every fault kind at least once, no invariant broken.

Three nodes run the real agent with real keepalived and haproxy, clients call the
control-plane VIP and two service VIPs, and a seeded injector kills agents and daemons,
turns apiservers unhealthy, cuts cables, partitions a node and churns extra VIPs, one
fault at a time.  The long run (and its figures) is bench/soak.py; this one is short
enough for CI and uses a fixed seed, printed with the figures.
"""

from __future__ import annotations

import json

import pytest

from labkit import soak

pytestmark = [pytest.mark.soak, pytest.mark.usefixtures("lab_ready")]

SEED = 15
DURATION_S = 150.0


def test_a_short_soak_breaks_no_invariant(report: list[str]) -> None:
    results = soak.run(DURATION_S, SEED)
    figures = results.report()
    report.append(f"seed {SEED}, {results.duration_s:.0f} s of faults")
    for kind, row in figures["faults"].items():
        report.append(f"{kind}: {json.dumps(row)}")
    for key in ("clients", "split_brain", "longest_s", "no_holder_over_3s", "agent_rss"):
        report.append(f"{key}: {json.dumps(figures[key])}")
    assert results.kinds_injected() == set(soak.KINDS), f"skipped: {results.skipped}"
    assert figures["violations"] == [], json.dumps(figures, indent=2)
    # the memory check measured something (the first agents live the whole run)
    assert any(m.growth_mb is not None for m in results.memory), figures["agent_rss"]

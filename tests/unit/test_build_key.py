"""The cache key labkit reads is the one scripts/build-kube writes."""

from __future__ import annotations

import re
from pathlib import Path

from labkit.apiserver import APISERVER_VERSION, KUBE_BUILD_REVISION

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-kube"


def test_labkit_looks_where_build_kube_caches() -> None:
    text = SCRIPT.read_text(encoding="utf-8")
    assert re.search(rf"^VERSION={re.escape(APISERVER_VERSION)}$", text, re.M)
    assert re.search(rf"^REVISION={KUBE_BUILD_REVISION}$", text, re.M)

"""haproxy reloads under constant load: failed connections per reload, and apply latency.

The experiment itself lives in labkit/haproxy_reload.py (tests/lab runs it too, with
assertions); this script runs it and prints the figures.  Usage: see that module.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labkit.haproxy_reload import main

if __name__ == "__main__":
    main()

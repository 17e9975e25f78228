"""The failover lab: how fast the control-plane VIP recovers, measured end to end.

The experiment itself lives in labkit/failover_lab.py (tests/lab runs it too, with
assertions); this script runs it and prints the figures.  Usage: see that module.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labkit.failover_lab import main

if __name__ == "__main__":
    main()

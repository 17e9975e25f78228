"""The chaos soak: faults one at a time against three real agents, invariants checked.

The experiment itself lives in labkit/soak.py (tests/lab runs a short one, with
assertions); this script runs it and prints the figures.  Usage: see that module.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labkit.soak import main

if __name__ == "__main__":
    main()

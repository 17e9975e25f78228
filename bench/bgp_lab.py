"""The BGP lab: withdraw, node death and announce latency at the router.

The experiment lives in labkit/bgp_measure.py (on the lab tests/lab/test_bgp_agent_lab.py
uses); this script runs it and prints the figures.  Usage: see that module.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labkit.bgp_measure import main

if __name__ == "__main__":
    main()

"""Campaign readout: ``python scripts/evaluate_campaign.py campaign=<name> [outcomes=events|simulate|<file>]``.

The same as ``python -m serving.campaigns.evaluate`` (see that module).
"""
from __future__ import annotations

import sys

from serving.campaigns.evaluate import main, rewrite_argv

if __name__ == "__main__":
    sys.argv = [sys.argv[0], *rewrite_argv(sys.argv[1:])]
    main()

"""``python -m serving.drift``: see ``serving.drift.report``."""
import sys

from serving.drift.report import main

sys.exit(main())

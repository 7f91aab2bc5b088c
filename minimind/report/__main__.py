"""``python -m minimind.report SWEEP``: see :mod:`minimind.report.cli`."""

import sys

from minimind.report.cli import main

sys.exit(main())

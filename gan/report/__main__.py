"""`python -m gan.report`: see ``gan.report.cli``."""

import sys

from gan.report.cli import main

sys.exit(main())

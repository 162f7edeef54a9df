"""``python -m bncourse``."""

import sys

from bncourse.cli import main

sys.exit(main())

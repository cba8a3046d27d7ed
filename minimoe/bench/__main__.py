"""`python -m minimoe.bench`."""

import sys

from minimoe.bench.cli import main

sys.exit(main())

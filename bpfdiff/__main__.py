"""``python -m bpfdiff``: the same as the ``bpfdiff`` console script."""

import sys

from bpfdiff.cli import main

sys.exit(main())

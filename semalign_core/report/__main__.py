"""``python -m semalign_core.report [group ...] [--out DIR]``: see :mod:`.build`."""

import sys

from semalign_core.report.build import main

if __name__ == "__main__":  # importing the package's modules (docs, tests) must not build
    sys.exit(main())

"""``python -m UNetSegmentLib ...`` is the ``unetsegment`` command (used by the Slicer module via PythonSlicer)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

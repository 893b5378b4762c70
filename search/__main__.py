"""`python -m search` is the same as the `blocksweep` command."""

import sys

from search.cli import main

if __name__ == "__main__":
    # Named as the command it is (Python puts this file's path here): MLflow records the
    # entry point as each run's source, which its UI shows by its last path segment.
    sys.argv[0] = "blocksweep"
    raise SystemExit(main())

"""`python -m search` is the same as the `blocksweep` command."""

from search.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

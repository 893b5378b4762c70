"""The package's version, in a module of its own: the command line and the run tags read
it without importing the `search` facade (which names the commands above them)."""

__version__ = "0.1.0"

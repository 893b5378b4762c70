"""The two kinds of failure the command line tells apart.

`UsageError` is the user's input being wrong (a space file, a flag, a data directory):
one line, exit code 2, nothing run. `TrialFailed` is a training that started and broke
(NaN loss, out of memory): exit code 1 for `blocksweep train`; inside a sweep the trial
is recorded as failed with this reason and the sweep goes on.

`Interrupted` is a stop asked from outside: Ctrl-C (SIGINT) or SIGTERM (`docker stop`,
Kubernetes, systemd, the `--workers` launcher passing either on). It is a KeyboardInterrupt,
so every clean-up written for Ctrl-C runs for SIGTERM too; it says which signal it was (for
the reasons recorded) and exits 128 + the signal's number (130, 143), as a shell reports a
process that the signal ended.
"""

import signal


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""

    exit_code = 2


class TrialFailed(Exception):
    """A training run that broke; the message is the reason recorded for it."""

    exit_code = 1


class StoreBusy(Exception):
    """A shared store's lock that was not granted in time (another worker stalled while
    holding it, or the database is overloaded): one line, exit code 1."""

    exit_code = 1


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM. A sweep that stopped on it carries its partial `summary` (the
    counts so far, read from the study), which the command line prints before exiting."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signum = signum
        self.summary = None  # a SweepSummary, when a sweep was stopped

    @property
    def name(self) -> str:
        """How the stop is named in reasons and messages: "Ctrl-C" or "SIGTERM"."""
        return "Ctrl-C" if self.signum == signal.SIGINT else signal.Signals(self.signum).name

    @property
    def by(self) -> str:
        """Who or what stopped it, for a run's reason: "the user (Ctrl-C)" or "SIGTERM"."""
        return "the user (Ctrl-C)" if self.signum == signal.SIGINT else self.name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def interrupted(err: KeyboardInterrupt) -> Interrupted:
    """Python's own KeyboardInterrupt (the default SIGINT handler) as an `Interrupted`."""
    return err if isinstance(err, Interrupted) else Interrupted(signal.SIGINT)


def first_line(err: BaseException, limit: int = 300) -> str:
    """An exception as one short line for a message: its first line of text (cut to
    `limit` characters), or its class name when it has no text. Library errors (MLflow,
    SQLAlchemy, Keras) often carry pages of detail; a user needs the first line."""
    lines = str(err).strip().splitlines()
    return lines[0][:limit] if lines else err.__class__.__name__

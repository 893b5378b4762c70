"""The two kinds of failure the command line tells apart.

`UsageError` is the user's input being wrong (a space file, a flag, a data directory):
one line, exit code 2, nothing run. `TrialFailed` is a training that started and broke
(NaN loss, out of memory): exit code 1 for `blocksweep train`; inside a sweep the trial
is recorded as failed with this reason and the sweep goes on.
"""


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""

    exit_code = 2


class TrialFailed(Exception):
    """A training run that broke; the message is the reason recorded for it."""

    exit_code = 1


def first_line(err: BaseException, limit: int = 300) -> str:
    """An exception as one short line for a message: its first line of text (cut to
    `limit` characters), or its class name when it has no text. Library errors (MLflow,
    SQLAlchemy, Keras) often carry pages of detail; a user needs the first line."""
    lines = str(err).strip().splitlines()
    return lines[0][:limit] if lines else err.__class__.__name__

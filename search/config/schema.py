"""How configuration records are declared: frozen dataclasses validated by pydantic.

Unknown keys are rejected (a typo in a space file is an error, not a silently ignored
setting), and every error carries the key path that `spec.load_spec` prints.
"""

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

STRICT = ConfigDict(extra="forbid")


def record(cls):
    """Class decorator: a frozen, validated dataclass that forbids unknown keys."""
    return dataclass(frozen=True, config=STRICT)(cls)

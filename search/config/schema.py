"""How configuration records are declared: frozen dataclasses validated by pydantic.

Unknown keys are rejected (a typo in a space file is an error, not a silently ignored
setting), and every error carries the key path that `spec.load_spec` prints.

Numbers and switches are strict: `Int`, `Float` and `Bool` take only what YAML reads as
that type, so `epochs: '3'`, `epochs: true` or `flip: 1` are refused instead of coerced
(pydantic's default mode turns '3' into 3 and true into 1). A whole number is still a
valid `Float` (`learning_rate: 1`). Non-finite floats (`.inf`, `.nan`) are refused in
every record: no setting means infinity, and NaN compares false with every bound.
"""

from typing import Annotated

from pydantic import ConfigDict, Strict
from pydantic.dataclasses import dataclass

# All-CNN-C, the longest recipe here, trains 350 epochs (Springenberg et al., 2015); 1,000
# is nearly three times that, and a larger number is a typo that would never end.
MAX_EPOCHS = 1000

STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)

Int = Annotated[int, Strict()]  # an integer; not a bool, a float or a string
Float = Annotated[float, Strict()]  # a real number (an integer is one); not a bool or a string
Bool = Annotated[bool, Strict()]  # true or false; not 0/1 or 'yes'


def record(cls):
    """Class decorator: a frozen, validated dataclass that forbids unknown keys."""
    return dataclass(frozen=True, config=STRICT)(cls)

"""Hostile and broken input, as an adversary would try it: space files, data batches,
names, images and stores. Each case is refused with one line naming what and where, exit
code 2, and nothing is left behind; none takes more than a few seconds.

In-process throughout (`load_spec`, `load_batch`, the command line's `main`): the
refusals happen before anything heavy runs.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from search.config import load_spec
from search.errors import UsageError

# --------------------------------------------------------------------------- space files

BASE = """\
name: t
model: {family: vgg, blocks: 2}
params:
  train.learning_rate: {type: float, low: 0.001, high: 0.1, log: true}
"""


def refused(tmp_path, text: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        load_spec(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


# (what, text appended to BASE or replacing it, words the one line must hold)
HOSTILE_SPACES = [
    ("duplicate section", BASE + "train: {epochs: 3}\ntrain: {epochs: 50}\n",
     ["s.yaml:6:", "duplicate key 'train'", "line 5"]),
    ("duplicate parameter", BASE + "  train.learning_rate: {type: float, low: 0.01, high: 0.2}\n",
     ["s.yaml:5:", "duplicate key 'train.learning_rate'"]),
    ("string for an integer", BASE + "train: {batch_size: '64'}\n", ["train.batch_size", "valid integer"]),
    ("float for an integer", BASE + "train: {batch_size: 64.0}\n", ["train.batch_size", "valid integer"]),
    ("bool for an integer", BASE + "data: {augment: {translate: true}}\n", ["data.augment.translate", "integer"]),
    ("number for a switch", BASE + "train: {nesterov: 1}\n", ["train.nesterov", "valid boolean"]),
    ("bool for a number", BASE + "train: {learning_rate: true}\n", ["train.learning_rate", "valid number"]),
    ("string for a bound", BASE.replace("low: 0.001", "low: '0.001'"),
     ["params.train.learning_rate.low", "valid number"]),
    ("infinite setting", BASE + "train: {momentum: .inf}\n", ["train.momentum", "finite"]),
    ("NaN setting", BASE + "train: {learning_rate: .nan}\n", ["train.learning_rate", "finite"]),
    ("NaN step", BASE.replace("log: true", "step: .nan"), ["params.train.learning_rate", "finite"]),
    ("epochs that never end", BASE + "train: {epochs: 1e12}\n", ["train.epochs", "less than or equal to 1000"]),
    ("batch beyond CIFAR-10", BASE + "train: {batch_size: 1000000}\n",
     ["train.batch_size", "less than or equal to 50000"]),
    ("batch beyond the training split", BASE + "data: {train_size: 300, val_size: 100}\ntrain: {batch_size: 500}\n",
     ["train.batch_size 500 is larger than the training split", "data.train_size 300"]),
    ("batch beyond the kept classes", BASE + "data: {classes: [0, 1]}\ntrain: {batch_size: 9000}\n",
     ["train.batch_size 9000", "the 5000 training images"]),
    ("trials beyond the cap", BASE + "search: {trials: 1000000}\n", ["search.trials", "less than or equal to 10000"]),
    ("int step that does not divide", BASE + "  model.dense_units: {type: int, low: 16, high: 100, step: 16}\n",
     ["params.model.dense_units", "step 16 does not divide high - low (84)"]),
    ("5000-digit integer", BASE + "train: {seed: " + "9" * 5000 + "}\n", ["s.yaml:5:", "5000 characters", "too long"]),
    ("collections nested too deep", BASE + "description: " + "[" * 200_000 + "]" * 200_000 + "\n",
     ["s.yaml:5:", "nested over 32 deep"]),
    ("too many choices", BASE + "  train.seed: {type: categorical, choices: [" + ", ".join(map(str, range(1001)))
     + "]}\n", ["params.train.seed", "1001 choices; at most 1000"]),
]


@pytest.mark.parametrize("what,text,words", HOSTILE_SPACES, ids=[case[0] for case in HOSTILE_SPACES])
def test_hostile_space_file_is_refused_in_one_line(tmp_path, what, text, words):
    message = refused(tmp_path, text)
    for word in words:
        assert word in message, f"{what}: {word!r} not in {message!r}"


def test_batch_within_the_split_and_whole_floats_still_load(tmp_path):
    """The strict types refuse coercion, not numbers: an integer is a valid float, and a
    batch as large as the training split is fine."""
    path = tmp_path / "s.yaml"
    path.write_text(BASE + "data: {train_size: 300, val_size: 100}\ntrain: {batch_size: 300, momentum: 0}\n")
    spec = load_spec(path)
    assert spec.file.train.batch_size == 300 and spec.file.train.momentum == 0.0


def test_oversized_space_file_is_refused_before_it_is_parsed(tmp_path):
    # Invalid YAML past the limit: a parser would report that, the size check comes first.
    message = refused(tmp_path, BASE + "#" + "x" * 1_000_000 + "\n[")
    assert "a space file is at most 1,000,000 bytes" in message and "YAML" not in message


def test_too_many_parameters_are_refused_before_they_are_validated(tmp_path):
    lines = "".join(f"  train.p{i}: {{type: float, low: 0.0, high: 1.0}}\n" for i in range(1001))
    message = refused(tmp_path, BASE + lines)
    assert "params: 1,002 parameters; a space searches at most 1,000" in message


def test_a_long_chain_of_conditions_loads(tmp_path):
    """1,000 parameters, each conditioned on the one before: the dependency order is an
    iterative walk over sets (the recursive walk over a list was quadratic and hit
    Python's recursion limit), and each candidate is tried on the config sections alone."""
    chain = "".join(f"  model.p{i}: {{type: categorical, choices: [a], when: {{model.p{i - 1}: [a]}}}}\n"
                    for i in range(1, 999))
    path = tmp_path / "s.yaml"
    path.write_text(BASE + "  model.p0: {type: categorical, choices: [a]}\n" + chain)
    with pytest.raises(UsageError) as err:  # model.p* are no VGG settings: refused at the first one tried
        load_spec(path)
    assert "params.model.p0.choices[0]" in str(err.value) and "unknown key" in str(err.value)

"""Space files: validated completely before anything runs; one line per problem."""

from __future__ import annotations

import pytest

from search.config import load_spec, parse_overrides, resolve
from search.errors import UsageError
from search.config.space import DefaultSuggester

BASE = """\
name: t
model: {family: vgg, blocks: 2}
params:
  model.block: {type: categorical, choices: [conv-bn-conv-pool-drop, conv-drop-conv-drop-pool]}
  train.learning_rate: {type: float, low: 0.001, high: 0.1, log: true}
"""


def load_text(tmp_path, text, overrides=None):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return load_spec(path, parse_overrides(overrides))


def test_shipped_spaces_load():
    from pathlib import Path

    spaces = sorted((Path(__file__).parents[1] / "spaces").glob("*.yaml"))
    assert {"quickstart.yaml", "vgg_blocks.yaml", "allcnn.yaml"} <= {p.name for p in spaces}
    for path in spaces:
        spec = load_spec(path)
        resolve(spec, spec.space.sample(DefaultSuggester()))


def test_scientific_notation_is_a_float(tmp_path):
    spec = load_text(tmp_path, BASE.replace("low: 0.001", "low: 1e-3"))
    assert spec.space.params["train.learning_rate"].low == pytest.approx(1e-3)


# (what is wrong in the file, the text replaced, its replacement, words the one line must hold)
INVALID = [
    ("not YAML", "name: t", "name: [t", ["s.yaml:", "invalid YAML"]),
    ("unknown top-level key", "name: t", "name: t\nepochz: 3", ["epochz", "unknown key"]),
    ("unknown model family", "family: vgg", "family: resnet9", ["model", "resnet9"]),
    ("unknown model key", "blocks: 2", "blocks: 2, blokcs: 3", ["model.blokcs", "unknown key"]),
    ("negative block count", "blocks: 2", "blocks: -1", ["model.blocks", "greater than or equal to 1"]),
    ("unknown block composition", "conv-bn-conv-pool-drop,", "conv-bn-conv-foo,",
     ["params.model.block.choices[0]", "conv-bn-conv-foo"]),
    ("low above high", "low: 0.001, high: 0.1", "low: 0.5, high: 0.1", ["params.train.learning_rate", "low"]),
    ("log scale through zero", "low: 0.001", "low: 0.0", ["params.train.learning_rate", "log-scale"]),
    ("unknown parameter type", "type: float", "type: real", ["params.train.learning_rate", "type"]),
    ("parameter of an unknown config key", "train.learning_rate:", "train.learning_rat:",
     ["params.train.learning_rat", "unknown key"]),
    ("parameter outside the config sections", "train.learning_rate:", "objective.metric:",
     ["params.objective.metric", "model., data., train."]),
    ("default outside the range", "log: true}", "log: true, default: 5.0}", ["params.train.learning_rate", "default"]),
    ("condition on a missing parameter", "log: true}", "log: true, when: {model.head: [gap]}}",
     ["params.train.learning_rate.when", "model.head"]),
    ("condition on an impossible value", "log: true}", "log: true, when: {model.block: [conv-x]}}",
     ["params.train.learning_rate.when.model.block", "conv-x"]),
    ("empty choices", "choices: [conv-bn-conv-pool-drop, conv-drop-conv-drop-pool]", "choices: []",
     ["params.model.block", "choices is empty"]),
    ("duplicate choices", "choices: [conv-bn-conv-pool-drop, conv-drop-conv-drop-pool]",
     "choices: [conv-bn-conv-pool-drop, conv-bn-conv-pool-drop]", ["params.model.block", "duplicates"]),
    ("learning rate out of its domain", "low: 0.001, high: 0.1, log: true", "low: -1.0, high: 0.1",
     ["params.train.learning_rate.low", "greater than 0"]),
    ("per-block count that is not an integer", "log: true}", "log: true}\n  model.filters: {type: int, low: 4, high: 8, per_block: model.block}",
     ["params.model.filters.per_block", "model.block"]),
    ("per-block count that is conditional", "log: true}",
     "log: true}\n  model.blocks: {type: int, low: 1, high: 3, when: {model.block: [conv-bn-conv-pool-drop]}}"
     "\n  model.filters: {type: int, low: 4, high: 8, per_block: model.blocks}",
     ["params.model.filters.per_block", "conditional"]),
    ("infinite bound", "high: 0.1, log: true", "high: .inf, log: true", ["params.train.learning_rate", "finite"]),
    ("step that does not divide the range", "low: 0.001, high: 0.1, log: true", "low: 0.0, high: 0.1, step: 0.03",
     ["params.train.learning_rate", "does not divide"]),
    ("unknown objective metric", "name: t", "name: t\nobjective: {metric: val_auc}", ["objective.metric", "val_auc"]),
    ("bad study name", "name: t", "name: 'a b'", ["name", "pattern"]),
    ("missing model", "model: {family: vgg, blocks: 2}\n", "", ["model", "required key is missing"]),
]


@pytest.mark.parametrize("what,old,new,words", INVALID, ids=[case[0] for case in INVALID])
def test_invalid_space_gives_one_line(tmp_path, what, old, new, words):
    assert old in BASE
    with pytest.raises(UsageError) as err:
        load_text(tmp_path, BASE.replace(old, new, 1))
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message, f"{what}: {word!r} not in {message!r}"


def test_dependency_cycle_is_refused(tmp_path):
    text = BASE + """\
  model.dropout: {type: float, low: 0.0, high: 0.5, when: {model.inner_dropout: [0.1]}}
  model.inner_dropout: {type: categorical, choices: [0.1, 0.2], when: {model.dropout: [0.1]}}
"""
    with pytest.raises(UsageError, match="cycle"):
        load_text(tmp_path, text)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(UsageError, match="no such space file"):
        load_spec(tmp_path / "absent.yaml")
    with pytest.raises(UsageError, match="a space file is a mapping"):
        load_text(tmp_path, "- just\n- a list\n")


def test_set_overrides_a_fixed_value(tmp_path):
    spec = load_text(tmp_path, BASE, ["train.epochs=3", "data.augment.flip=false"])
    config = spec.base_config()
    assert config.train.epochs == 3 and config.data.augment.flip is False


def test_set_on_a_searched_parameter_fixes_it(tmp_path):
    spec = load_text(tmp_path, BASE, ["train.learning_rate=0.05"])
    assert "train.learning_rate" not in spec.space.params
    assert spec.base_config().train.learning_rate == 0.05


def test_set_on_a_condition_parent_resolves_the_condition(tmp_path):
    text = BASE + "  model.inner_dropout: {type: float, low: 0.0, high: 0.3, when: {model.block: [conv-drop-conv-drop-pool]}}\n"
    kept = load_text(tmp_path, text, ["model.block=conv-drop-conv-drop-pool"])
    assert kept.space.params["model.inner_dropout"].when == {}
    dropped = load_text(tmp_path, text, ["model.block=conv-bn-conv-pool-drop"])
    assert "model.inner_dropout" not in dropped.space.params


@pytest.mark.parametrize("flag,words", [
    ("epochs", ["--set 'epochs'", "KEY=VALUE"]),
    ("train.epochz=3", ["--set train.epochz", "unknown key"]),
    ("train.epochs=zero", ["--set train.epochs", "integer"]),
    ("bogus.key=1", ["--set bogus.key", "unknown key"]),
])
def test_bad_set_gives_one_line(tmp_path, flag, words):
    with pytest.raises(UsageError) as err:
        load_text(tmp_path, BASE, [flag])
    for word in words:
        assert word in str(err.value)


def test_impossible_combination_is_reported_at_resolve(tmp_path):
    text = BASE + "  model.filters: {type: int, low: 4, high: 8, per_block: model.blocks}\n"
    spec = load_text(tmp_path, text)
    with pytest.raises(ValueError, match="filters has 1 values for 2 blocks"):
        resolve(spec, {"model.filters": [4]})

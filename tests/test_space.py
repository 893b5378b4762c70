"""The engine-neutral space: dependency order, conditions, per-block parameters."""

from __future__ import annotations

import pytest

from search.config.space import (CategoricalParam, Condition, DefaultSuggester, FixedSuggester, FloatParam, IntParam,
                          Space, dependency_order)


class Recorder:
    """A suggester that returns scripted values and records what it was asked."""

    def __init__(self, values):
        self.values, self.asked = values, []

    def suggest(self, name, spec, conditions):
        self.asked.append((name, conditions))
        return self.values.get(name, spec.fallback())


BLOCK = CategoricalParam(choices=("conv-bn-conv-pool-drop", "conv-drop-conv-drop-pool"))
SPACE = Space(params={
    "model.inner_dropout": FloatParam(low=0.0, high=0.5, when={"model.block": ("conv-drop-conv-drop-pool",)}),
    "model.dropout": FloatParam(low=0.0, high=0.5, per_block="model.blocks"),
    "model.block": BLOCK,
    "model.blocks": IntParam(low=2, high=4),
})


def test_parameters_come_after_what_they_depend_on():
    order = dependency_order(SPACE.params)
    assert order.index("model.block") < order.index("model.inner_dropout")
    assert order.index("model.blocks") < order.index("model.dropout")


def test_inactive_conditional_parameter_is_not_sampled():
    rec = Recorder({"model.block": "conv-bn-conv-pool-drop"})
    values = SPACE.sample(rec)
    assert "model.inner_dropout" not in values
    assert "model.inner_dropout" not in [name for name, _ in rec.asked]


def test_active_conditional_parameter_carries_its_condition():
    rec = Recorder({"model.block": "conv-drop-conv-drop-pool", "model.inner_dropout": 0.3})
    values = SPACE.sample(rec)
    assert values["model.inner_dropout"] == 0.3
    asked = dict(rec.asked)
    assert asked["model.inner_dropout"] == (Condition("model.block", ("conv-drop-conv-drop-pool",)),)


def test_per_block_parameter_has_one_value_per_block():
    rec = Recorder({"model.blocks": 3, "model.dropout.0": 0.1, "model.dropout.1": 0.2, "model.dropout.2": 0.3})
    values = SPACE.sample(rec)
    assert values["model.dropout"] == [0.1, 0.2, 0.3]


def test_blocks_beyond_the_minimum_are_conditional_on_the_count():
    rec = Recorder({"model.blocks": 4})
    SPACE.sample(rec)
    asked = dict(rec.asked)
    assert asked["model.dropout.0"] == ()  # every trial has at least 2 blocks
    assert asked["model.dropout.2"] == (Condition("model.blocks", (3, 4)),)
    assert asked["model.dropout.3"] == (Condition("model.blocks", (4,)),)


def test_flat_names_round_trip():
    values = SPACE.sample(Recorder({"model.blocks": 2, "model.block": "conv-drop-conv-drop-pool"}))
    flat = SPACE.flat_names(values)
    assert "model.dropout.1" in flat and "model.dropout" not in flat
    assert SPACE.unflatten(flat) == values


def test_defaults_and_fallbacks():
    assert FloatParam(low=1e-4, high=1e-2, log=True).fallback() == pytest.approx(1e-3)
    assert FloatParam(low=0.0, high=1.0, default=0.3).fallback() == 0.3
    assert IntParam(low=2, high=4).fallback() == 2
    assert BLOCK.fallback() == "conv-bn-conv-pool-drop"
    values = SPACE.sample(DefaultSuggester())
    assert values["model.blocks"] == 2 and len(values["model.dropout"]) == 2


def test_fixed_suggester_replays_recorded_values():
    flat = {"model.blocks": 3, "model.block": "conv-bn-conv-pool-drop", "model.dropout.0": 0.1,
            "model.dropout.1": 0.1, "model.dropout.2": 0.4}
    assert SPACE.sample(FixedSuggester(flat))["model.dropout"] == [0.1, 0.1, 0.4]


def test_cycle_is_an_error():
    params = {"a.x": FloatParam(low=0, high=1, when={"a.y": (1,)}), "a.y": IntParam(low=0, high=2, when={"a.x": (1,)})}
    with pytest.raises(ValueError, match="cycle"):
        dependency_order(params)

"""The contract every engine honours, run over every engine: the same space file gives
the same MLflow layout (one parent, one child per trial, parameters and states mirrored),
and a rerun of the same command resumes under the same parent."""

from __future__ import annotations

import importlib.util

import pytest

from search.engines import ENGINES
from tests.sweeps import kept_models, sweep_runs


def available(name: str) -> bool:
    return importlib.util.find_spec(ENGINES[name].split(":")[0]) is not None


ENGINE_NAMES = [pytest.param(name, marks=pytest.mark.skipif(not available(name), reason=f"{name} engine not built"))
                for name in ENGINES]


@pytest.fixture(params=ENGINE_NAMES)
def engine(request):
    return request.param


def run_sweep(cli, space, data, engine, *extra):
    return cli("run", space, "--engine", engine, "--data-dir", data, "--quiet", "--seed", "1", *extra)


def test_four_trials_give_one_parent_and_four_children(engine, cli, write_space, tiny_cifar, tracking_uri):
    assert run_sweep(cli, write_space(), tiny_cifar, engine, "--trials", "4", "--study", "c4") == 0
    client, parents, children = sweep_runs(tracking_uri, "c4")
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.data.tags["blocksweep.engine"] == engine
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(int(c.data.tags["blocksweep.trial"]) for c in children) == [0, 1, 2, 3]
    for child in children:
        params = child.data.params
        assert params["model.block"] in ("conv-bn-conv-pool-drop", "conv-drop-conv-drop-pool")
        assert 0.01 <= float(params["train.learning_rate"]) <= 0.1
        # the conditional parameter exists exactly when its condition holds
        has_inner = "param.model.inner_dropout" in params
        assert has_inner == (params["model.block"] == "conv-drop-conv-drop-pool")
        # the tiny space prunes nothing and every learning rate in it trains
        assert child.data.tags["blocksweep.state"] == "completed" and child.info.status == "FINISHED"
        assert "test_accuracy" in child.data.metrics
    best = parent.data.tags["blocksweep.best_run_id"]
    completed = [c for c in children if c.data.tags["blocksweep.state"] == "completed"]
    # the parent names a run with the best objective (ties: any of the tied runs)
    by_id = {c.info.run_id: c for c in completed}
    assert by_id[best].data.metrics["objective"] == max(c.data.metrics["objective"] for c in completed)
    # --keep-models best: only the best trial keeps its model (ties: each tied run may)
    kept = [c for c in children if c.data.tags.get("blocksweep.model") == "kept"]
    assert best in {c.info.run_id for c in kept}
    assert {c.data.metrics["objective"] for c in kept} == {by_id[best].data.metrics["objective"]}
    for child in children:  # a dropped model is gone from MLflow (runs:/<run>/model no longer finds it)
        assert len(kept_models(client, child)) == (child in kept)


def test_rerun_adds_trials_under_the_same_parent(engine, cli, write_space, tiny_cifar, tracking_uri):
    space = write_space()
    assert run_sweep(cli, space, tiny_cifar, engine, "--trials", "2", "--study", "again") == 0
    _, parents, first = sweep_runs(tracking_uri, "again")
    assert run_sweep(cli, space, tiny_cifar, engine, "--trials", "1", "--study", "again") == 0
    _, parents_after, children = sweep_runs(tracking_uri, "again")
    assert [p.info.run_id for p in parents_after] == [p.info.run_id for p in parents]
    assert len(children) == 3
    before = {c.info.run_id: c for c in first}
    new = [c for c in children if c.info.run_id not in before]
    seen = {c.data.params["train.learning_rate"] for c in first}
    assert len(new) == 1 and new[0].data.params["train.learning_rate"] not in seen  # a new draw, not a replay
    for child in children:  # nothing recorded before was changed
        if child.info.run_id in before:
            assert child.data.metrics == before[child.info.run_id].data.metrics
            assert child.info.status == before[child.info.run_id].info.status


def test_same_space_file_runs_under_the_engine_with_the_json_summary(engine, cli, capsys, write_space,
                                                                      tiny_cifar, tracking_uri):
    import json

    assert run_sweep(cli, write_space(), tiny_cifar, engine, "--trials", "1", "--study", "js", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["engine"] == engine and summary["study"] == "js"
    assert sum(summary["ran"].values()) == 1

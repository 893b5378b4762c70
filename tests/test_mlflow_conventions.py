"""MLflow's own conventions, on runs made by real commands: the experiment kind its UI opens
training runs by, its standard tags on every run, the data split as dataset inputs, system
metrics through its monitor, a parent that carries its best trial, and Optuna studies that
name their objective."""

from __future__ import annotations

import subprocess

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO
from tests.layout import Trial, make_study
from tests.sweeps import optuna_study, sweep_runs

# MLflow 3's experiment kind; the value for model training is its UI's enum
# ExperimentKind.CUSTOM_MODEL_DEVELOPMENT = "custom_model_development" (mlflow/server/js).
KIND = ("mlflow.experimentKind", "custom_model_development")
# MLflow's standard run tags (mlflow/utils/mlflow_tags.py: MLFLOW_USER, MLFLOW_SOURCE_NAME,
# MLFLOW_SOURCE_TYPE, MLFLOW_GIT_COMMIT) and the dataset-input context tag (MLFLOW_DATASET_CONTEXT).
STANDARD = ("mlflow.user", "mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit")
CONTEXT = "mlflow.data.context"


def head_commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()


def inputs_of(run) -> dict[str, object]:
    """{context: dataset} of a run's dataset inputs."""
    found = {}
    for item in run.inputs.dataset_inputs:
        (context,) = [t.value for t in item.tags if t.key == CONTEXT]
        found[context] = item.dataset
    return found


def test_a_sweep_follows_mlflows_conventions(cli, write_space, tiny_cifar, tracking_uri, monkeypatch):
    import json

    from search.config import load_spec
    from search.data import load_cifar10, prepare
    from search.tracking.store import digest_arrays

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # seconds (MLflow's default: 10)
    space = write_space()
    assert cli("run", space, "--data-dir", tiny_cifar, "--trials", 3, "--study", "conv", "--quiet",
               "--system-metrics") == 0
    client, (parent,), children = sweep_runs(tracking_uri, "conv")
    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.tags[KIND[0]] == KIND[1]

    commit = head_commit()
    for run in (parent, *children):
        tags = run.data.tags
        assert all(tags.get(k) for k in STANDARD), run.info.run_name
        assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.git.commit"] == commit

    # The split as the trials saw it: its digests are those of the prepared arrays.
    splits = prepare(load_cifar10(tiny_cifar), load_spec(space).base_config().data)
    expected = {"train": digest_arrays([splits.x_train, splits.y_train])[:8],
                "validation": digest_arrays([splits.x_val, splits.y_val])[:8],
                "test": digest_arrays([splits.x_test, splits.y_test])[:8]}
    for run in (parent, *children):
        found = inputs_of(run)
        assert {c: d.digest for c, d in found.items()} == expected
        assert {d.name for d in found.values()} == {"CIFAR-10"}
        assert json.loads(found["train"].profile)["features_shape"] == [300, 32, 32, 3]
        assert json.loads(found["test"].source)["uri"] == (tiny_cifar / "cifar-10-batches-py").resolve().as_uri()

    for child in children:  # MLflow's monitor, asked for on this CPU
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(child.data.metrics)

    # The parent carries the best trial: its metrics under the same names, its values as tags.
    best = client.get_run(parent.data.tags["blocksweep.best_run_id"])
    for key in ("objective", "best_epoch", "test_accuracy", "val_accuracy", "train_seconds"):
        assert parent.data.metrics[key] == best.data.metrics[key], key
    searched = best.data.tags["blocksweep.searched"].split(",")
    assert {k: v for k, v in parent.data.tags.items() if k.startswith("best.")} == {
        f"best.{name}": best.data.params[f"param.{name}"] for name in searched}
    assert not any(k.startswith("system/") for k in parent.data.metrics)

    # Optuna names the objective, so optuna-dashboard and optuna.visualization label it.
    assert optuna_study("conv").metric_names == ["val_accuracy"]


def test_train_is_tagged_and_keeps_the_monitor_off_on_a_cpu_unless_asked(cli, write_space, tiny_cifar,
                                                                          tracking_uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # it would log, were it on
    assert cli("train", write_space(), "--data-dir", tiny_cifar, "--quiet") == 0
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("tiny-train")
    (run,) = client.search_runs([exp.experiment_id])
    assert exp.tags[KIND[0]] == KIND[1] and run.data.tags["blocksweep.device"] == "cpu"
    assert all(run.data.tags.get(k) for k in STANDARD)
    assert set(inputs_of(run)) == {"train", "validation", "test"}
    assert not any(k.startswith("system/") for k in run.data.metrics)


def test_an_experiment_made_before_gets_its_kind_when_a_sweep_opens_it(tracking_uri):
    from search.tracking import Tracker

    client = MlflowClient(tracking_uri)
    exp_id = client.create_experiment("older")
    assert KIND[0] not in client.get_experiment(exp_id).tags
    assert Tracker(tracking_uri).experiment("older") == (exp_id, False)
    assert client.get_experiment(exp_id).tags[KIND[0]] == KIND[1]


def test_the_parent_follows_the_best_trial_and_drops_values_the_new_best_lacks(tracking_uri):
    import yaml

    from search.config import load_spec
    from search.trials.sweep import Sweep, SweepOptions
    from search.tracking import Tracker
    from tests.conftest import TINY_SPACE

    parent, (first, second) = make_study(tracking_uri, "follow", [
        Trial(objective=0.6, params={"model.block": "a", "model.inner_dropout": 0.1}),
        Trial(objective=0.8, params={"model.block": "b"})])
    tracker = Tracker(tracking_uri)
    sweep = Sweep(spec=load_spec(yaml.safe_load(TINY_SPACE)), dataset=None, tracker=tracker,
                  options=SweepOptions(), experiment_id=tracker.get_run(parent).experiment_id,
                  parent_run_id=parent)
    sweep.record_best(0, 0.6, first)
    tags = tracker.get_run(parent).tags
    assert (tags["best.model.block"], tags["best.model.inner_dropout"]) == ("a", "0.1")
    sweep.record_best(1, 0.8, second)
    record = tracker.get_run(parent)
    assert record.tags["best.model.block"] == "b" and "best.model.inner_dropout" not in record.tags
    assert record.metrics["objective"] == pytest.approx(0.8) and record.tags["blocksweep.best_trial"] == "1"
    history = tracker.metric_history(parent, "objective")
    assert history == [(0, pytest.approx(0.6)), (1, pytest.approx(0.8))]  # step: the trial that was best

    # Another worker, holding the study's best from before trial 1 finished, writes late:
    # compare-and-set keeps the better trial (last-writer-wins showed trial 0 again).
    stale = Sweep(spec=sweep.spec, dataset=None, tracker=tracker, options=SweepOptions(),
                  experiment_id=sweep.experiment_id, parent_run_id=parent)
    stale.record_best(0, 0.6, first)
    assert tracker.get_run(parent).tags["blocksweep.best_trial"] == "1"
    # ... and one that read the study late, after writing, writes the study's best in turn.
    tracker.run(parent).set_tags({"blocksweep.best_trial": 0, "blocksweep.best_run_id": first,
                                  "blocksweep.best_value": "0.6"})  # as a worker that wrote 0.6 just now
    stale.record_best(0, 0.6, first, latest=lambda: (1, 0.8, second))
    assert tracker.get_run(parent).tags["blocksweep.best_trial"] == "1"

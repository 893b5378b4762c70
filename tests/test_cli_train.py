"""`blocksweep train`: one configuration, one MLflow run with everything in it; and the
command line's contract: one line and exit 2 for bad input, exit 1 for a failed training."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.models import get_model_info
from mlflow.tracking import MlflowClient

from tests.sweeps import kept_keras, kept_models


def only_run(tracking_uri, experiment="tiny-train"):
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_train_logs_one_complete_run(cli, capsys, write_space, tiny_cifar, tracking_uri):
    code = cli("train", write_space(), "--data-dir", tiny_cifar, "--quiet")
    out = capsys.readouterr().out
    assert code == 0
    client, run = only_run(tracking_uri)
    assert out.startswith(f"run {run.info.run_id} completed: val_accuracy")
    assert run.info.status == "FINISHED"
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    # every config value, the defaults of searched parameters included
    assert params["model.block"] == "conv-bn-conv-pool-drop" and params["train.epochs"] == "2"
    assert params["data.size.train"] == "300"
    assert tags["blocksweep.model_family"] == "vgg" and tags["blocksweep.backend"] == "tensorflow"
    assert tags["blocksweep.device"] == "cpu" and tags["blocksweep.version"]
    assert {"test_accuracy", "test_loss", "best_epoch", "objective", "train_seconds"} <= set(metrics)
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2]
    assert client.get_metric_history(run.info.run_id, "train_loss_window")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "preprocessing.json", "curves.png", "space.yaml"} <= artifacts
    # the kept model is the run's MLflow model `model` (a python_function with a signature)
    (logged,) = kept_models(client, run)
    mlflow.set_tracking_uri(tracking_uri)
    info = get_model_info(f"runs:/{run.info.run_id}/model")
    assert info.model_id == logged.model_id and "python_function" in info.flavors
    assert info.signature.inputs.to_dict()[0]["tensor-spec"] == {"dtype": "float32", "shape": (-1, -1, -1, 3)}


def test_train_json_summary(cli, capsys, write_space, tiny_cifar, tracking_uri):
    assert cli("train", write_space(), "--data-dir", tiny_cifar, "--quiet", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["state"] == "completed" and summary["epochs_run"] == 2
    assert 0 <= summary["test_accuracy"] <= 1 and summary["run_id"]


def test_logged_model_loads_safely_and_predicts(cli, capsys, write_space, tiny_cifar, tracking_uri, tmp_path):
    import keras
    import numpy as np

    assert cli("train", write_space(), "--data-dir", tiny_cifar, "--quiet") == 0
    client, run = only_run(tracking_uri)
    model = keras.models.load_model(kept_keras(client, run.info.run_id, tmp_path), safe_mode=True)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert model.predict(pixels, verbose=0).shape == (2, 10)


def test_failed_training_exits_1_with_the_reason(cli, capsys, write_space, tiny_cifar, tracking_uri):
    code = cli("train", write_space(), "--data-dir", tiny_cifar, "--quiet", "--set", "train.learning_rate=1e12",
               "--set", "train.loss_window=1")
    err = capsys.readouterr().err
    assert code == 1 and "training failed" in err and "loss became" in err
    _, run = only_run(tracking_uri)
    assert run.info.status == "FAILED" and "loss became" in run.data.tags["blocksweep.reason"]


@pytest.mark.parametrize("args,words", [
    (["train", "absent.yaml"], ["absent.yaml", "no such space file"]),
    (["train", "{space}", "--data-dir", "/nonexistent"], ["--data-dir /nonexistent", "no such directory"]),
    (["train", "{space}", "--data-dir", "{empty}"], ["no CIFAR-10 batches here"]),
    (["train", "{space}", "--set", "train.epochs=-1"], ["--set train.epochs", "greater than or equal to 1"]),
    (["train", "{space}", "--set", "nonsense"], ["--set 'nonsense'", "KEY=VALUE"]),
    (["train", "{space}", "--set", "model.family=resnet9"], ["resnet9"]),
    (["train", "{space}", "--backend", "theano"], ["--backend", "invalid choice"]),
    (["fly", "{space}"], ["invalid choice", "fly"]),
    (["run", "{space}", "--trials", "zero"], ["--trials", "not an integer"]),
    (["run", "{space}", "--sampler", "annealing"], ["--sampler", "invalid choice"]),
    (["run", "{space}", "--sampler", "grid", "--data-dir", "{data}"], ["--sampler grid", "model.inner_dropout",
                                                                      "continuous"]),
    (["train", "{space}", "--data-dir", "{data}", "--tracking-uri", "sqlite:///{space}/under-a-file/x.db"],
     ["--tracking-uri", "cannot create"]),
])
def test_bad_input_is_one_line_and_exit_2(cli, capsys, write_space, tiny_cifar, tmp_path, args, words):
    space = write_space()
    (tmp_path / "empty").mkdir()
    args = [a.format(space=space, empty=tmp_path / "empty", data=tiny_cifar) for a in args]
    code = cli(*args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("blocksweep: error:")
    for word in words:
        assert word in err


@pytest.mark.realdata
def test_quickstart_trains_on_real_cifar10(cli, capsys, real_cifar, tracking_uri):
    from pathlib import Path

    space = Path(__file__).parents[1] / "spaces" / "quickstart.yaml"
    assert cli("train", space, "--data-dir", real_cifar, "--quiet", "--json", "--set", "train.epochs=2",
               "--set", "data.train_size=2000", "--set", "data.test_size=1000",
               "--set", "train.airbench.batch_size=128") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["objective"] > 0.2  # two epochs (30 steps) on 2,000 real images: well above chance
    client, run = only_run(tracking_uri, "quickstart-train")
    assert run.data.params["data.size.train"] == "2000"
    assert "curves.png" in {a.path for a in client.list_artifacts(run.info.run_id)} and kept_models(client, run)


def test_bad_input_found_late_is_still_one_line_in_a_fresh_process(workdir, write_space, tiny_cifar, tracking_uri):
    """Found after TensorFlow is imported (which writes C++ log lines to stderr) and after
    the data loaded: still one line, exit 2, and nothing recorded in MLflow."""
    from tests.conftest import run_cli

    result = run_cli(["run", write_space(), "--data-dir", tiny_cifar, "--quiet", "--study", "late",
                      "--storage", "postgresql://nobody@127.0.0.1:1/none"], cwd=workdir)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "--storage postgresql://nobody@127.0.0.1:1/none: cannot open the study storage" in result.stderr
    assert MlflowClient(tracking_uri).get_experiment_by_name("late") is None


@pytest.mark.parametrize("flags,words", [
    (["--trials", "2", "--study-trials", "4"], ["--trials and --study-trials: give one"]),
    (["--tuner", "bayesian"], ["--tuner bayesian", "with --engine optuna"]),
    (["--engine", "kerastuner", "--sampler", "random"], ["--sampler random is Optuna's"]),
    (["--study", "../escape"], ["--study '../escape'", "letters, digits"]),
])
def test_contradicting_run_flags_are_refused(cli, capsys, write_space, tiny_cifar, flags, words):
    assert cli("run", write_space(), "--data-dir", tiny_cifar, "--quiet", *flags) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    for word in words:
        assert word in err

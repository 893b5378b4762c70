"""`blocksweep evaluate`: a saved model on the test set gives the accuracy its training
logged (same test split, raw pixels into the model), per class, with a confusion matrix
that goes back into the run; models kept before models took raw pixels still evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient


@pytest.fixture
def trained_run(cli, capsys, write_space, tiny_cifar, tracking_uri):
    """A tiny VGG trained by `blocksweep train` (test_size 100 of the 200 test images)."""
    assert cli("train", write_space(), "--data-dir", tiny_cifar, "--quiet", "--json") == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    return MlflowClient(tracking_uri).get_run(run_id)


def test_evaluating_a_run_gives_the_accuracy_its_training_logged(cli, capsys, trained_run, tiny_cifar,
                                                                tracking_uri, workdir):
    run_id = trained_run.info.run_id
    assert cli("evaluate", "--model", run_id, "--data-dir", tiny_cifar, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 100  # the run's test subset, not the whole test set
    assert summary["metric"] == "test_accuracy" and summary["tta_level"] == 0  # what the tiny space ranks by
    assert summary["accuracy"] == pytest.approx(trained_run.data.metrics["test_accuracy"], abs=1e-6)
    assert summary["recorded"] == trained_run.data.metrics["test_accuracy"]
    matrix = summary["confusion_matrix"]
    assert sum(map(sum, matrix)) == 100 and sum(matrix[i][i] for i in range(10)) == round(summary["accuracy"] * 100)
    assert summary["per_class"]["airplane"] == pytest.approx(matrix[0][0] / sum(matrix[0]))
    assert (workdir / "evaluation" / run_id / "confusion_matrix.png").stat().st_size > 0
    # ... and the run now holds the evaluation too.
    client = MlflowClient(tracking_uri)
    metrics = client.get_run(run_id).data.metrics
    assert metrics["evaluate_test_accuracy"] == summary["accuracy"]
    assert metrics["evaluate_accuracy.truck"] == summary["per_class"]["truck"]
    assert {a.path for a in client.list_artifacts(run_id, "evaluation")} == {
        "evaluation/confusion_matrix.png", "evaluation/evaluation.json"}


def test_evaluate_prints_the_accuracy_and_one_line_per_class(cli, capsys, trained_run, tiny_cifar, tmp_path):
    assert cli("evaluate", "--model", trained_run.info.run_id, "--data-dir", tiny_cifar, "--out", tmp_path) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{trained_run.info.run_id}: test_accuracy ")  # says which metric
    assert "(with one forward pass per image, recorded " in lines[0]
    assert f"confusion matrix {tmp_path / 'confusion_matrix.png'}" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                                       "frog", "horse", "ship", "truck"]


@pytest.mark.parametrize("layout", ["export", "before raw-pixel models"])
def test_an_export_folder_is_evaluated_with_the_files_beside_its_model(cli, capsys, trained_run, tiny_cifar,
                                                                      tmp_path, layout):
    """An export folder carries model.keras, classifier.json and config.yaml: the same test
    split as the run, so the same accuracy, and nothing is logged. An export written before
    models took raw pixels (the bare network, preprocessing.json, no classifier.json) is
    wrapped with its constants and gives the same."""
    run_id = trained_run.info.run_id
    folder = tmp_path / "export"
    assert cli("export", "--run", run_id, "--out", folder, "--quiet") == 0
    if layout != "export":
        from search.models import load_model
        from search.models.classifier import network

        (folder / "classifier.json").unlink()
        network(load_model(folder / "model.keras")).save(folder / "model.keras")
    capsys.readouterr()
    assert cli("evaluate", "--model", folder, "--data-dir", tiny_cifar, "--json", "--out", tmp_path / "out") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "export" and not summary["logged_to_run"] and summary["images"] == 100
    assert summary["accuracy"] == pytest.approx(trained_run.data.metrics["test_accuracy"], abs=1e-6)


@pytest.mark.parametrize("model,words", [
    ("absent.keras", ["--model absent.keras", "no such file or folder"]),
    ("0123456789abcdef0123456789abcdef", ["--model 0123456789abcdef0123456789abcdef", "no such MLflow run"]),
    ("{space}", ["expected a .keras model file"]),
])
def test_a_model_that_is_not_there_is_one_line_and_exit_2(cli, capsys, write_space, tiny_cifar, tracking_uri,
                                                          model, words):
    code = cli("evaluate", "--model", model.format(space=write_space()), "--data-dir", tiny_cifar)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("blocksweep: error:")
    for word in words:
        assert word in err


def test_a_run_kept_before_models_were_mlflow_models_evaluates_exports_and_registers(cli, capsys, trained_run,
                                                                                     tiny_cifar, tracking_uri,
                                                                                     tmp_path):
    """Runs used to keep a plain model/model.keras (the bare network) beside their
    preprocessing.json: evaluate wraps it and gives the recorded accuracy; export
    --register logs it as the run's MLflow model first, and that registers and loads."""
    import mlflow

    from search.models import load_model
    from search.models.classifier import network
    from tests.sweeps import kept_keras, kept_models

    client = MlflowClient(tracking_uri)
    source = trained_run.info.run_id
    old = client.create_run(trained_run.info.experiment_id, run_name="kept-before").info.run_id
    for artifact in ("config.yaml", "preprocessing.json"):
        client.log_artifact(old, client.download_artifacts(source, artifact, str(tmp_path)))
    network(load_model(kept_keras(client, source, tmp_path / "new"))).save(tmp_path / "model.keras")
    client.log_artifact(old, str(tmp_path / "model.keras"), "model")
    client.log_metric(old, "test_accuracy", trained_run.data.metrics["test_accuracy"])
    client.set_terminated(old)

    assert cli("evaluate", "--model", old, "--data-dir", tiny_cifar, "--json", "--out", tmp_path / "eval") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["accuracy"] == pytest.approx(trained_run.data.metrics["test_accuracy"], abs=1e-6)
    assert not kept_models(client, client.get_run(old))  # reading it changed nothing
    assert cli("export", "--run", old, "--out", tmp_path / "export", "--register", "kept-before", "--quiet") == 0
    (logged,) = kept_models(client, client.get_run(old))
    mlflow.set_tracking_uri(tracking_uri)
    assert client.get_model_version_by_alias("kept-before", "champion").source == f"models:/{logged.model_id}"
    answer = mlflow.pyfunc.load_model("models:/kept-before@champion").predict(
        np.full((2, 32, 32, 3), 100.0, np.float32))
    assert list(answer.columns[:2]) == ["label", "probability"] and len(answer) == 2

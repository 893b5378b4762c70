"""`blocksweep export` and `predict`: the exported folder, the best epoch's weights, a
round trip through a fresh process, predictions on PNG/JPEG files (raw pixels into the
model), exports written before models took raw pixels, the registry alias, the other
formats, and one clear line for what cannot be exported or read."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import cli_env
from tests.layout import Trial, make_study
from tests.sweeps import kept_keras

FILES = ["classifier.json", "config.yaml", "labels.txt", "metrics.json", "model.keras", "model.weights.h5",
         "preprocessing.json"]


@pytest.fixture(scope="module")
def exported(tiny_sweep, tmp_path_factory) -> dict:
    """The shared sweep's best trial, exported once (the summary `export` returns)."""
    from search.artifacts.export import export

    return export(study=tiny_sweep.study, out=tmp_path_factory.mktemp("export") / "best",
                  tracking_uri=tiny_sweep.tracking_uri)


def logged_model(tiny_sweep, run_id: str, where: Path):
    """The run's kept model (raw pixels in), as MLflow holds it."""
    import keras

    return keras.models.load_model(kept_keras(MlflowClient(tiny_sweep.tracking_uri), run_id, where), safe_mode=True)


def raw_pixels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("blocksweep: error:"), err
    return err


def test_export_writes_the_best_trial_with_its_config_constants_labels_and_metrics(exported, tiny_sweep,
                                                                                    tmp_path):
    client = MlflowClient(tiny_sweep.tracking_uri)
    parent = client.get_run(client.get_experiment_by_name(tiny_sweep.study).tags["blocksweep.parent_run_id"])
    run = client.get_run(exported["run_id"])
    folder = Path(exported["out"])
    assert exported["run_id"] == parent.data.tags["blocksweep.best_run_id"]  # the best completed trial
    assert sorted(p.name for p in folder.iterdir()) == FILES
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["run_id"] == run.info.run_id and metrics["objective"] == run.data.metrics["objective"]
    assert metrics["best_epoch"] == int(run.data.metrics["best_epoch"]) and metrics["metric"] == "val_accuracy"
    prep = json.loads((folder / "preprocessing.json").read_text())
    assert prep == json.loads(Path(client.download_artifacts(run.info.run_id, "preprocessing.json",
                                                             str(tmp_path))).read_text())
    assert len(prep["mean"]) == len(prep["std"]) == 3 and prep["input_shape"] == [32, 32, 3]
    assert (folder / "labels.txt").read_text().splitlines() == prep["label_names"]
    info = json.loads((folder / "classifier.json").read_text())
    assert info["label_names"] == prep["label_names"] and info["input_shape"] == [32, 32, 3]
    assert info["metric"] == "test_accuracy" and info["tta_level"] == 0  # the tiny space ranks by val_accuracy
    assert info["accuracy"] == run.data.metrics["test_accuracy"]
    assert exported["answers"] == {"metric": "test_accuracy", "accuracy": info["accuracy"], "tta_level": 0}
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert str(config["train"]["learning_rate"]) == run.data.params["train.learning_rate"]


def test_the_exported_model_round_trips_in_a_fresh_process(exported, tiny_sweep, tmp_path):
    x = raw_pixels(8, 0)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent("""
        import json, sys
        import numpy as np, yaml
        from search.config import run_config_from_dict
        from search.models import build_model, load_model
        folder, x = sys.argv[1], np.load(sys.argv[2])
        model = load_model(f"{folder}/model.keras")  # safe_mode=True, our layers registered
        np.save(sys.argv[3], model.predict(x, verbose=0))  # uint8 pixels straight in
        # the weights file and the config alone rebuild the network, which takes standardised images
        config = run_config_from_dict(yaml.safe_load(open(f"{folder}/config.yaml")))
        prep = json.load(open(f"{folder}/preprocessing.json"))
        net = build_model(config.model, tuple(prep["input_shape"]), len(prep["label_names"]))
        net.load_weights(f"{folder}/model.weights.h5")
        standardised = (x.astype("float32") - np.float32(prep["mean"])) / np.float32(prep["std"])
        np.save(sys.argv[4], net.predict(standardised, verbose=0))
        """)
    subprocess.run([sys.executable, "-c", script, exported["out"], tmp_path / "x.npy", tmp_path / "keras.npy",
                    tmp_path / "weights.npy"], env=cli_env(KERAS_BACKEND="tensorflow"), check=True, timeout=180)
    expected = logged_model(tiny_sweep, exported["run_id"], tmp_path).predict(x, verbose=0)
    np.testing.assert_allclose(np.load(tmp_path / "keras.npy"), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "weights.npy"), expected, rtol=0, atol=1e-6)


def test_the_export_holds_the_best_epochs_weights_not_the_last(cli, capsys, write_space, tiny_cifar, tracking_uri,
                                                               tmp_path):
    from dataclasses import replace

    import keras

    from search.config import run_config_from_dict
    from search.data import load_cifar10, prepare

    # The learning rate x30 from the third epoch on: the model collapses after epoch 2.
    assert cli("train", write_space(), "--data-dir", tiny_cifar, "--quiet", "--set", "train.epochs=3",
               "--set", "train.schedule={kind: step, drop_epochs: [2], drop_factor: 30}") == 0
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny-train").experiment_id])
    metrics = run.data.metrics
    last = max(client.get_metric_history(run.info.run_id, "val_accuracy"), key=lambda m: m.step).value
    assert metrics["best_epoch"] < metrics["epochs_run"] and last != metrics["objective"]  # the premise
    capsys.readouterr()
    assert cli("export", "--run", run.info.run_id, "--out", tmp_path / "out") == 0
    folder = tmp_path / "out"
    config = run_config_from_dict(yaml.safe_load((folder / "config.yaml").read_text()))
    # the run's own validation split, as pixels: the model standardises them itself
    splits = prepare(load_cifar10(tiny_cifar), replace(config.data, normalize=False))
    model = keras.models.load_model(folder / "model.keras", safe_mode=True)
    accuracy = float(np.mean(model.predict(splits.x_val, verbose=0).argmax(axis=1) == splits.y_val))
    assert accuracy == pytest.approx(metrics["objective"], abs=1e-6)


def test_predict_classifies_png_and_jpeg_files_resizing_where_needed(cli, capsys, exported, tiny_sweep, tmp_path):
    from PIL import Image

    from search.data import load_cifar10

    images = load_cifar10(tiny_sweep.data).x_test
    files = [tmp_path / "a.png", tmp_path / "b.jpg", tmp_path / "c.png"]
    Image.fromarray(images[0]).save(files[0])
    Image.fromarray(images[1]).save(files[1], quality=95)
    Image.fromarray(images[2]).resize((64, 48), Image.Resampling.NEAREST).save(files[2])  # not 32x32
    assert cli("predict", "--model", exported["out"], *files, "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(row["metric"], row["tta_level"]) for row in rows} == {("test_accuracy", 0)}  # which metric, said
    # What predict must do: RGB, Pillow resize to 32x32, the pixels into the run's model.
    names = json.loads((Path(exported["out"]) / "classifier.json").read_text())["label_names"]
    model = logged_model(tiny_sweep, exported["run_id"], tmp_path / "logged")
    for path, row in zip(files, rows):
        image = Image.open(path).convert("RGB")
        if image.size != (32, 32):
            image = image.resize((32, 32), Image.Resampling.LANCZOS)
        p = model.predict(np.asarray(image, np.float32)[None], verbose=0)[0]
        assert row["image"] == str(path) and row["label"] == names[int(p.argmax())]
        assert row["probability"] == pytest.approx(float(p.max()), abs=1e-5)
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert cli("predict", "--model", exported["out"], *files) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{exported['out']}: answers as its test_accuracy (")  # which metric, said
    assert lines[0].endswith("with one forward pass per image")
    assert [line.split(": ")[0] for line in lines[1:]] == [str(f) for f in files]
    assert lines[1].split(": ")[1].startswith(rows[0]["label"] + " (")


def bomb_png(path: Path, width: int, height: int) -> None:
    """A real PNG of width x height pixels (1-bit palette, two colours, all zeros) of a few
    hundred kB that decodes to width x height pixels: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte, then the row's bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 3, 0, 0, 0))
                     + chunk(b"PLTE", bytes([0, 0, 0, 255, 255, 255])) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def image(mode: str, size=(32, 32)):
    from PIL import Image

    return Image.new(mode, size)


@pytest.mark.parametrize("make,words", [
    (None, ["missing.png: no such image file"]),
    (lambda p: p.write_text("not an image"), ["not a readable PNG, JPEG, BMP or GIF image"]),
    (lambda p: image("RGB", (8, 8)).save(p, format="TIFF"), ["a TIFF image", "PNG, JPEG, BMP and GIF"]),
    (lambda p: p.mkdir(), ["is a folder"]),
    (lambda p: image("L").save(p), ["grayscale image (mode L)", "the model takes RGB images"]),
    (lambda p: image("RGBA").save(p), ["RGBA image (mode RGBA)", "convert it to RGB first"]),
    (lambda p: image("LA").save(p), ["grayscale with alpha"]),
    (lambda p: p.write_bytes((lambda b: b[: len(b) // 2])(_png_bytes())), ["not a readable PNG, JPEG, BMP or GIF image"]),
    # over twice Pillow's limit of 89,478,485 pixels: Pillow raises DecompressionBombError
    (lambda p: bomb_png(p, 30000, 30000), ["refused, too large to decode safely", "900000000 pixels"]),
    # between the limit and twice it: Pillow only warns (DecompressionBombWarning), and would decode
    (lambda p: bomb_png(p, 10000, 10000), ["refused, too large to decode safely", "100000000 pixels"]),
], ids=["missing", "text", "tiff", "folder", "grayscale", "rgba", "grayscale-alpha", "truncated", "bomb",
        "bomb-warning"])
def test_predict_refuses_bad_image_files_in_one_line(cli, capsys, exported, tmp_path, make, words):
    path = tmp_path / "missing.png"
    if make is not None:
        make(path)
    good = tmp_path / "good.png"
    image("RGB").save(good)
    assert cli("predict", "--model", exported["out"], good, path) == 2  # one bad file among good ones
    err = one_line_error(capsys)
    assert err.startswith(f"blocksweep: error: {path}: ")
    for word in words:
        assert word in err
    assert capsys.readouterr().out == ""  # nothing was classified


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(raw_pixels(1, 3)[0]).save(buffer, format="PNG")
    return buffer.getvalue()


def test_predict_refuses_a_folder_that_is_not_an_export(cli, capsys, tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    assert cli("predict", "--model", tmp_path, tmp_path / "x.png") == 2
    assert "not an export folder" in one_line_error(capsys)


@pytest.mark.parametrize("damage,words", [
    (lambda d: (d / "model.keras").write_bytes(b"not a zip"), ["cannot load", "model.keras"]),
    (lambda d: (d / "classifier.json").write_text("{"), ["classifier.json is not readable JSON"]),
    (lambda d: (d / "classifier.json").write_text("{}"), ["classifier.json needs label_names"]),
    # an export written before classifier.json: its preprocessing.json must be readable
    (lambda d: ((d / "classifier.json").unlink(), (d / "preprocessing.json").write_text("{")),
     ["preprocessing.json is not readable JSON"]),
    (lambda d: ((d / "classifier.json").unlink(), (d / "preprocessing.json").write_text("{}")),
     ["preprocessing.json needs mean and std"]),
    (lambda d: ((d / "classifier.json").unlink(), (d / "preprocessing.json").unlink()),
     ["neither classifier.json nor preprocessing.json"]),
    # ... and its config.yaml, which says which metric (and TTA) the answers reproduce
    (lambda d: ((d / "classifier.json").unlink(), (d / "config.yaml").write_text("train: [1, 2")),
     ["config.yaml is not readable YAML"]),
])
def test_predict_refuses_a_damaged_export_in_one_line(cli, capsys, exported, tmp_path, damage, words):
    from PIL import Image

    folder = tmp_path / "copy"
    shutil.copytree(exported["out"], folder)
    damage(folder)
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    assert cli("predict", "--model", folder, tmp_path / "x.png") == 2
    err = one_line_error(capsys)
    for word in words:
        assert word in err


def test_an_export_written_before_raw_pixel_models_still_predicts_the_same(cli, capsys, exported, tmp_path):
    """Exports used to hold the bare network (standardised images in) and no classifier.json:
    predict wraps it with its preprocessing.json and answers exactly as the new export."""
    from PIL import Image

    from search.models import load_model
    from search.models.classifier import network, takes_raw_pixels

    old = tmp_path / "old"
    shutil.copytree(exported["out"], old)
    (old / "classifier.json").unlink()
    network(load_model(old / "model.keras")).save(old / "model.keras")  # what an old export held
    assert not takes_raw_pixels(load_model(old / "model.keras"))
    files = []
    for i, pixels in enumerate(raw_pixels(3, 5)):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(pixels).save(files[-1])
    assert cli("predict", "--model", old, *files, "--json") == 0
    before = json.loads(capsys.readouterr().out)
    assert cli("predict", "--model", exported["out"], *files, "--json") == 0
    now = json.loads(capsys.readouterr().out)
    assert len(before) == len(now) == 3
    for a, b in zip(before, now):
        assert a["metric"] == b["metric"] == "test_accuracy"
        assert a["label"] == b["label"] and a["probability"] == pytest.approx(b["probability"], abs=1e-6)


def test_register_versions_the_runs_own_model_with_a_signature_and_an_alias(cli, capsys, tiny_sweep, tmp_path):
    import mlflow
    from mlflow.models import get_model_info

    assert cli("export", "--study", tiny_sweep.study, "--tracking-uri", tiny_sweep.tracking_uri, "--out",
               tmp_path / "out", "--register", "tiny-champion", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    client = MlflowClient(tiny_sweep.tracking_uri, registry_uri=tiny_sweep.tracking_uri)
    version = client.get_model_version_by_alias("tiny-champion", "champion")
    assert str(version.version) == summary["registered"]["version"] and version.run_id == summary["run_id"]
    assert summary["registered"]["model_uri"] == "models:/tiny-champion@champion"
    # the version is the run's own MLflow model (runs:/<run>/model), not a copy logged beside it
    mlflow.set_tracking_uri(tiny_sweep.tracking_uri)
    own = get_model_info(f"runs:/{summary['run_id']}/model")
    assert version.source == f"models:/{own.model_id}"
    signature = get_model_info("models:/tiny-champion@champion").signature.to_dict()
    assert json.loads(signature["inputs"])[0]["tensor-spec"] == {"dtype": "float32", "shape": [-1, -1, -1, 3]}
    outputs = [column["name"] for column in json.loads(signature["outputs"])]
    assert outputs[:2] == ["label", "probability"] and outputs[2:] == json.loads(
        (tmp_path / "out" / "classifier.json").read_text())["label_names"]
    # a second export registers version 2, under the alias asked for
    assert cli("export", "--study", tiny_sweep.study, "--tracking-uri", tiny_sweep.tracking_uri, "--out",
               tmp_path / "again", "--register", "tiny-champion", "--alias", "staging") == 0
    assert "registered tiny-champion version 2 as 'staging'" in capsys.readouterr().out
    assert str(client.get_model_version_by_alias("tiny-champion", "staging").version) == "2"
    assert str(client.get_model_version_by_alias("tiny-champion", "champion").version) == "1"


def test_savedmodel_export_serves_the_same_predictions(cli, exported, tiny_sweep, tmp_path):
    import tensorflow as tf

    assert cli("export", "--study", tiny_sweep.study, "--tracking-uri", tiny_sweep.tracking_uri, "--out",
               tmp_path / "out", "--format", "savedmodel", "--quiet") == 0
    x = raw_pixels(4, 1).astype("float32")
    loaded = tf.saved_model.load(str(tmp_path / "out" / "saved_model"))  # kept: it owns the variables
    served = loaded.serve(x).numpy()
    expected = logged_model(tiny_sweep, exported["run_id"], tmp_path).predict(x, verbose=0)
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)


def test_onnx_export_runs_in_onnxruntime_with_the_same_predictions(cli, exported, tiny_sweep, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    assert cli("export", "--study", tiny_sweep.study, "--tracking-uri", tiny_sweep.tracking_uri, "--out",
               tmp_path / "out", "--format", "onnx", "--quiet") == 0
    x = raw_pixels(4, 2).astype("float32")
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    outputs = session.run(None, {session.get_inputs()[0].name: x})[0]
    expected = logged_model(tiny_sweep, exported["run_id"], tmp_path).predict(x, verbose=0)
    np.testing.assert_allclose(outputs, expected, rtol=0, atol=1e-5)


def test_without_study_or_run_the_stores_only_study_is_exported(cli, capsys, exported, tiny_sweep, tmp_path):
    assert cli("export", "--out", tmp_path / "only", "--tracking-uri", tiny_sweep.tracking_uri, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["source"] == exported["source"] and summary["run_id"] == exported["run_id"]
    assert summary["source"].startswith(f"study {tiny_sweep.study} trial ")


@pytest.mark.parametrize("case,words", [
    ("unknown", ["--study nope: no such study"]),
    ("empty", ["--study empty: no completed trial to export (no trials)"]),
    ("pruned", ["--study pruned: no completed trial to export (1 pruned, 1 failed)"]),
    ("no-model", ["study nomodel trial 1", "has no kept model", "--run RUN_ID"]),
    ("bad-run", ["--run 0123abc: no such run"]),
    ("full-out", ["exists and is not an empty folder"]),
    ("savedmodel-jax", ["--format savedmodel: needs the TensorFlow backend"]),
    ("neither", ["export: 3 studies in sqlite:///", "(empty, nomodel, pruned): choose one with --study NAME"]),
    ("storage-without-study", ["--storage sqlite:///", "no such study database"]),
])
def test_what_cannot_be_exported_is_one_line_and_exit_2(cli, capsys, tracking_uri, tmp_path, case, words):
    from search.tracking import Tracker

    Tracker(tracking_uri).sweep_parent("empty", {"blocksweep.objective": "maximize val_accuracy"}, "name: empty\n")
    make_study(tracking_uri, "pruned", [Trial(state="pruned", objective=0.9), Trial(state="failed")])
    make_study(tracking_uri, "nomodel", [Trial(objective=0.5), Trial(objective=0.8)])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    out = tmp_path / ("full" if case == "full-out" else "out")
    which = {"unknown": ["--study", "nope"], "empty": ["--study", "empty"], "pruned": ["--study", "pruned"],
             "no-model": ["--study", "nomodel"], "bad-run": ["--run", "0123abc"], "full-out": ["--study", "nomodel"],
             "savedmodel-jax": ["--study", "nomodel", "--format", "savedmodel", "--backend", "jax"],
             "neither": [],
             "storage-without-study": ["--study", "nomodel", "--storage", f"sqlite:///{tmp_path}/none.db"]}[case]
    if case == "savedmodel-jax":
        pytest.importorskip("jax")
    assert cli("export", "--out", out, *which) == 2
    err = one_line_error(capsys)
    for word in words:
        assert word in err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine" and not (tmp_path / "out").exists()

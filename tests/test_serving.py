"""The model a sweep keeps, through MLflow's own doors: `mlflow models serve` on a loopback
port, `mlflow.pyfunc.load_model`, `mlflow.register_model(runs:/...)`. Raw test pixels in,
the recorded test accuracy out, the same answers as `blocksweep predict` (images of another
size resized as predict resizes them), 4xx with a message for bad requests; and no
Blocksweep code in the serving process (a tripwire `search` package on its path fails any
import of it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import REPO
from tests.services import free_port, kill_group

NAME = "tiny-served"
SERVE_START_SECONDS = 180  # TensorFlow's import alone takes ~10 s of the 2-core machine's CPU


def tripwire(root: Path) -> Path:
    """A folder to put first on PYTHONPATH: its `search` package raises on import, so a
    process started with it proves it ran no Blocksweep code."""
    (root / "search").mkdir(parents=True, exist_ok=True)
    (root / "search" / "__init__.py").write_text("raise ImportError('Blocksweep imported while serving')\n")
    return root


def mlflow_env(tracking_uri: str, trip: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(MLFLOW_TRACKING_URI=tracking_uri, PYTHONPATH=str(trip), KERAS_BACKEND="tensorflow")
    return env


def split_of(tiny_sweep, run_id: str):
    """(raw 0..255 pixels, labels, class names) of the test split a run was scored on."""
    from search.config import run_config_from_dict
    from search.data import load_cifar10, prepare

    with tempfile.TemporaryDirectory() as tmp:
        text = Path(MlflowClient(tiny_sweep.tracking_uri).download_artifacts(run_id, "config.yaml", tmp)).read_text()
    config = run_config_from_dict(yaml.safe_load(text))
    raw = prepare(load_cifar10(tiny_sweep.data), replace(config.data, normalize=False))
    return raw.x_test, raw.y_test, list(raw.label_names)


@pytest.fixture(scope="module")
def champion(tiny_sweep, tmp_path_factory) -> dict:
    """The shared sweep's best trial, exported and registered as NAME@champion."""
    from search.artifacts.export import export

    return export(study=tiny_sweep.study, out=tmp_path_factory.mktemp("served") / "export", register=NAME,
                  tracking_uri=tiny_sweep.tracking_uri)


@pytest.fixture(scope="module")
def server(tiny_sweep, champion, tmp_path_factory):
    """`mlflow models serve -m models:/NAME@champion --env-manager local` on a free loopback
    port, started without Blocksweep on its path; stopped (its whole process group) after
    the module's tests, and within SERVE_START_SECONDS if it never answers."""
    where = tmp_path_factory.mktemp("server")
    port = free_port()
    log = where / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion",
                                 "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=where, env=mlflow_env(tiny_sweep.tracking_uri, tripwire(where / "trip")),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVE_START_SECONDS
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow models serve did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        kill_group(proc)
    assert "Blocksweep imported while serving" not in log.read_text()


def post(url: str, body, content_type: str = "application/json") -> tuple[int, dict | str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/invocations", data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        text = err.read().decode()
        try:
            return err.code, json.loads(text)
        except ValueError:
            return err.code, text


def predicted(cli, capsys, model_dir, images, where: Path) -> list[dict]:
    """`blocksweep predict --json` on `images` (uint8 pixels) written as PNGs into `where`."""
    from PIL import Image

    files = []
    for i, pixels in enumerate(images):
        files.append(where / f"{i}.png")
        Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(files[-1])
    capsys.readouterr()
    assert cli("predict", "--model", model_dir, *files, "--json") == 0
    return json.loads(capsys.readouterr().out)


def assert_same_answers(rows, expected, names):
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected):
        assert row["label"] == want["label"]
        assert row["probability"] == pytest.approx(want["probability"], abs=1e-6)
        assert [row[n] for n in names] == pytest.approx([want["probabilities"][n] for n in names], abs=1e-6)


def test_http_answers_equal_blocksweep_predicts_on_the_same_images(cli, capsys, tiny_sweep, champion, server,
                                                                   tmp_path):
    """MLflow's documented tensor request format, `inputs`, against `blocksweep predict` on
    the same pixels as PNGs; at the model's size and at two others (resized in the server
    as predict resizes a file). `dataframe_split`'s flattened images need a fixed height
    and width, which a model taking any size has not: MLflow refuses them with a 400."""
    x, _, names = split_of(tiny_sweep, champion["run_id"])
    images = x[:8]
    expected = predicted(cli, capsys, champion["out"], images, tmp_path)
    status, answer = post(server, {"inputs": images.tolist()})
    assert status == 200, answer
    assert_same_answers(answer["predictions"], expected, names)

    from PIL import Image

    for size in ((45, 50), (20, 24)):  # (width, height): larger and smaller than 32x32
        other = np.stack([np.asarray(Image.fromarray(p.astype(np.uint8)).resize(size, Image.Resampling.BICUBIC))
                          for p in images[:3]])
        expected = predicted(cli, capsys, champion["out"], other, tmp_path)
        status, answer = post(server, {"inputs": other.tolist()})
        assert status == 200, answer
        assert_same_answers(answer["predictions"], expected, names)

    status, answer = post(server, {"dataframe_split": {"columns": ["image"],
                                                       "data": [[image.reshape(-1).tolist()] for image in images]}})
    assert status == 400 and "other dimensions must be fixed" in answer["message"]


def test_the_recorded_test_accuracy_comes_back_through_pyfunc_and_http(tiny_sweep, champion, server):
    """The run's whole test split as raw pixels: through `mlflow.pyfunc.load_model` and
    through the server, the accuracy is the test accuracy the run recorded (within 0.2
    points; here it is the same number, as the model is the one the run scored)."""
    import mlflow

    x, y, names = split_of(tiny_sweep, champion["run_id"])
    recorded = MlflowClient(tiny_sweep.tracking_uri).get_run(champion["run_id"]).data.metrics["test_accuracy"]
    mlflow.set_tracking_uri(tiny_sweep.tracking_uri)
    answer = mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict(x.astype(np.float32))
    by_pyfunc = float(np.mean([names.index(label) for label in answer["label"]] == y))
    status, served = post(server, {"inputs": x.tolist()})
    assert status == 200
    by_http = float(np.mean([names.index(row["label"]) for row in served["predictions"]] == y))
    assert abs(by_pyfunc - recorded) <= 0.002 and abs(by_http - recorded) <= 0.002
    assert by_pyfunc == by_http


@pytest.mark.parametrize("body,status,words", [
    ({"inputs": np.zeros((1, 32, 32, 4)).tolist()}, 400, ["does not match expected shape (-1, -1, -1, 3)"]),  # RGBA
    ({"inputs": np.zeros((1, 64, 48, 1)).tolist()}, 400, ["does not match expected shape (-1, -1, -1, 3)"]),  # gray
    ({"inputs": np.zeros((1, 32, 32)).tolist()}, 400, ["does not match expected shape"]),  # grayscale, no channel
    ({"inputs": np.full((1, 32, 32, 3), -1.5).tolist()}, 400, ["outside 0..255", "already standardised?"]),
    ({"inputs": np.full((1, 32, 32, 3), 0.5).tolist()}, 400, ["within 0..1", "send 0..255"]),
    ({"inputs": [[["red"] * 3] * 32] * 32}, 400, []),  # not numbers
    (b"\x89PNG\r\n\x1a\n not json", 400, ["valid JSON"]),  # an image file posted as it is
    ({"images": []}, 400, ["inputs", "dataframe_split"]),  # not MLflow's request format
], ids=["rgba", "one-channel", "grayscale", "standardised", "scaled-0-1", "strings", "png-bytes", "format"])
def test_bad_requests_get_a_4xx_with_a_message_and_the_server_carries_on(server, body, status, words):
    code, answer = post(server, body)
    assert code == status, answer
    message = answer["message"] if isinstance(answer, dict) else answer
    for word in words:
        assert word in message
    ok, _ = post(server, {"inputs": np.full((1, 32, 32, 3), 128.0).tolist()})
    assert ok == 200  # nothing crashed


def test_a_png_sent_with_an_image_content_type_is_refused_with_415(server):
    code, answer = post(server, b"\x89PNG\r\n\x1a\n", content_type="image/png")
    assert code == 415 and "content types" in answer


def test_any_kept_child_run_registers_and_loads_through_mlflow_alone(tiny_sweep, champion, tmp_path):
    """Not the best trial: another kept child run, registered with MLflow's own
    `register_model(runs:/<run>/model)` and loaded with `mlflow.pyfunc` in a process where
    importing Blocksweep fails; it answers as its Keras file does here."""
    import keras

    from search.models import load_model
    from tests.sweeps import kept_keras, sweep_runs

    _, _, children = sweep_runs(tiny_sweep.tracking_uri, tiny_sweep.study)
    other = next(c for c in children if c.info.run_id != champion["run_id"])
    x = np.random.default_rng(7).integers(0, 256, size=(5, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent("""
        import json, sys
        import mlflow, numpy as np
        run_id, x = sys.argv[1], np.load(sys.argv[2])
        version = mlflow.register_model(f"runs:/{run_id}/model", "tiny-any-child")
        mlflow.MlflowClient().set_registered_model_alias("tiny-any-child", "champion", version.version)
        answer = mlflow.pyfunc.load_model("models:/tiny-any-child@champion").predict(x)
        print(json.dumps({"labels": list(answer["label"]), "probability": list(answer["probability"]),
                          "imported": sorted(m for m in sys.modules if m.split(".")[0] == "search")}))
        """)
    done = subprocess.run([sys.executable, "-c", script, other.info.run_id, str(tmp_path / "x.npy")],
                          env=mlflow_env(tiny_sweep.tracking_uri, tripwire(tmp_path / "trip")), cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["imported"] == []
    model = load_model(kept_keras(MlflowClient(tiny_sweep.tracking_uri), other.info.run_id, tmp_path / "here"))
    p = keras.ops.convert_to_numpy(model(x))
    names = json.loads((Path(champion["out"]) / "classifier.json").read_text())["label_names"]
    assert answer["labels"] == [names[i] for i in p.argmax(axis=1)]
    assert answer["probability"] == pytest.approx(p.max(axis=1).tolist(), abs=1e-6)


FAST_SET = ["model.filters=[8, 16, 16]", "data.train_size=200", "data.val_size=100", "data.test_size=100",
            "train.epochs=2", "train.airbench.batch_size=50", "train.airbench.eval_batch_size=100",
            "model.block=conv-pool-bn-act-conv-bn-act", "train.loss_window=2"]


def test_a_tta_trial_answers_with_its_recorded_tta_accuracy_through_every_door(cli, capsys, tiny_cifar,
                                                                              tracking_uri, tmp_path):
    """The airbench recipe ranks by val_tta_accuracy: its kept model has the TTA inside, so
    raw test pixels through `mlflow.pyfunc` give the run's test_tta_accuracy (not its plain
    test_accuracy), and `blocksweep evaluate` says which metric it reports."""
    import mlflow

    from search.config import DataConfig
    from search.data import load_cifar10, prepare

    args = ["train", REPO / "spaces" / "vgg_fast.yaml", "--data-dir", tiny_cifar, "--quiet", "--json"]
    for item in FAST_SET:
        args += ["--set", item]
    assert cli(*args) == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    metrics = MlflowClient(tracking_uri).get_run(run_id).data.metrics
    raw = prepare(load_cifar10(tiny_cifar), DataConfig(train_size=200, val_size=100, test_size=100, normalize=False))
    mlflow.set_tracking_uri(tracking_uri)
    answer = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(raw.x_test)
    names = list(raw.label_names)
    accuracy = float(np.mean([names.index(label) for label in answer["label"]] == raw.y_test))
    assert accuracy == pytest.approx(metrics["test_tta_accuracy"], abs=0.002)
    assert cli("evaluate", "--model", run_id, "--data-dir", tiny_cifar, "--out", tmp_path / "eval") == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(f"{run_id}: test_tta_accuracy {metrics['test_tta_accuracy']:.4f} on 100 images "
                           "(with test-time augmentation (level 2)")


def test_a_folder_trained_model_takes_an_image_of_another_size_through_pyfunc_as_predict_does(
        cli, capsys, workdir, write_space, tracking_uri, tmp_path):
    """A model trained on a folder of 24x20 PNGs, loaded with `mlflow.pyfunc` alone, takes
    images of other sizes (the signature says (-1, -1, -1, 3); Pillow is a requirement) and
    answers as `blocksweep predict` answers on the same pixels as PNG files; a wrong channel
    count is still refused by MLflow's schema check."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from search.artifacts.export import export
    from search.data import write_image_folder
    from tests.conftest import synthetic_cifar

    x, y, _, _ = synthetic_cifar(200, 10)
    keep = y < 2  # about 40 images
    folder = write_image_folder(workdir / "shapes", x[keep], y[keep], ("circle", "square") + ("",) * 8,
                                size=(24, 20))
    space = write_space(f"""\
        name: shapes
        model: {{family: vgg, blocks: 1, filters: 4, dense_units: 8}}
        data: {{source: {{folder: {folder}}}, val_size: 10, test_fraction: 0.2, augment: {{flip: false, translate: 0}}}}
        train: {{epochs: 1, batch_size: 8}}
        """)
    assert cli("train", space, "--quiet", "--json") == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    out = export(run_id=run_id, out=tmp_path / "export", tracking_uri=tracking_uri)["out"]

    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    assert model.metadata.get_input_schema().inputs[0].shape == (-1, -1, -1, 3)
    requirements = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model/requirements.txt",
                                                            dst_path=str(tmp_path / "req"))).read_text()
    assert "pillow==" in requirements.lower()

    pixels = np.random.default_rng(3).integers(0, 256, size=(3, 37, 29, 3)).astype(np.uint8)  # not 24x20
    expected = predicted(cli, capsys, out, pixels, tmp_path)
    answer = model.predict(pixels.astype(np.float32))
    rows = answer.to_dict(orient="records")
    assert_same_answers(rows, expected, ["circle", "square"])
    assert {r["label"] for r in rows} <= {"circle", "square"}
    with pytest.raises(MlflowException, match="shape"):
        model.predict(np.zeros((1, 37, 29, 4), np.float32))

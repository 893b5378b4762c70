"""The model a sweep keeps, through MLflow's own doors: `mlflow models serve` on a loopback
port, `mlflow.pyfunc.load_model`, `mlflow.register_model(runs:/...)`. Raw test pixels in,
the recorded test accuracy out, the same answers as `blocksweep predict`, 4xx with a
message for bad requests; and no Blocksweep code in the serving process (a tripwire
`search` package on its path fails any import of it)."""

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


def test_http_answers_equal_blocksweep_predicts_on_the_same_images(cli, capsys, tiny_sweep, champion, server,
                                                                   tmp_path):
    """MLflow's documented request formats, `inputs` (a tensor) and `dataframe_split` (one
    column of flattened images), against `blocksweep predict` on the same pixels as PNGs."""
    from PIL import Image

    x, _, names = split_of(tiny_sweep, champion["run_id"])
    images = x[:8]
    files = []
    for i, pixels in enumerate(images):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(pixels.astype(np.uint8)).save(files[-1])
    assert cli("predict", "--model", champion["out"], *files, "--json") == 0
    expected = json.loads(capsys.readouterr().out)
    by_tensor = post(server, {"inputs": images.tolist()})
    by_frame = post(server, {"dataframe_split": {"columns": ["image"],
                                                 "data": [[image.reshape(-1).tolist()] for image in images]}})
    for status, answer in (by_tensor, by_frame):
        assert status == 200, answer
        rows = answer["predictions"]
        assert len(rows) == len(expected)
        for row, want in zip(rows, expected):
            assert row["label"] == want["label"]
            assert row["probability"] == pytest.approx(want["probability"], abs=1e-6)
            assert [row[n] for n in names] == pytest.approx([want["probabilities"][n] for n in names], abs=1e-6)


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
    ({"inputs": np.zeros((1, 32, 32, 4)).tolist()}, 400, ["does not match expected shape (-1, 32, 32, 3)"]),  # RGBA
    ({"inputs": np.zeros((1, 32, 32)).tolist()}, 400, ["does not match expected shape"]),  # grayscale
    ({"inputs": np.zeros((1, 64, 64, 3)).tolist()}, 400, ["does not match expected shape"]),  # another size
    ({"inputs": np.full((1, 32, 32, 3), -1.5).tolist()}, 400, ["outside 0..255", "already standardised?"]),
    ({"inputs": np.full((1, 32, 32, 3), 0.5).tolist()}, 400, ["within 0..1", "send 0..255"]),
    ({"inputs": [[["red"] * 3] * 32] * 32}, 400, []),  # not numbers
    (b"\x89PNG\r\n\x1a\n not json", 400, ["valid JSON"]),  # an image file posted as it is
    ({"images": []}, 400, ["inputs", "dataframe_split"]),  # not MLflow's request format
], ids=["rgba", "grayscale", "size", "standardised", "scaled-0-1", "strings", "png-bytes", "format"])
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

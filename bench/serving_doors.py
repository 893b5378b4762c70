"""One kept model through every door: accuracy on the raw test images, and serving latency.

    python bench/serving_doors.py --study quickstart --data-dir data [--tracking-uri URI]
                                  [--batch 100] [--requests 20] [--port 5001]

Exports the study's best trial with `--register bench-<study>` into a temporary folder,
then measures the accuracy on that run's test split (raw 0..255 pixels) through: Keras
(`search.models.load_model`), `blocksweep evaluate` (the run id), `blocksweep predict`
(the test images written as PNG files), `mlflow.pyfunc.load_model("models:/...@champion")`
and HTTP (`mlflow models serve --env-manager local` on a loopback port, batches of
`--batch` images), next to the metric the run recorded. Then it times `--requests` POSTs of
one batch of `--batch` images (after one warm-up request) in each of MLflow's two request
formats, `{"inputs": [n x 32 x 32 x 3]}` and `{"dataframe_split": ...}` (one column, one
flattened image per row), pixels as JSON integers: the latency a client sees, JSON encoding
and decoding included. The server is stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def body(images, form: str) -> bytes:
    pixels = images.astype("uint8")
    if form == "inputs":
        return json.dumps({"inputs": pixels.tolist()}).encode()
    rows = [[image.reshape(-1).tolist()] for image in pixels]
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()


def post(url: str, images, form: str = "inputs") -> list:
    request = urllib.request.Request(f"{url}/invocations", data=body(images, form),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as answer:
        return json.loads(answer.read())["predictions"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--port", type=int, default=0, help="loopback port for the server (default: a free one)")
    args = parser.parse_args()

    import numpy as np
    import yaml

    from search import backend

    backend.select(os.environ.get("KERAS_BACKEND", "tensorflow"))
    import mlflow

    from search.artifacts.evaluate import evaluate
    from search.artifacts.export import export
    from search.artifacts.predict import predict
    from search.config import run_config_from_dict
    from search.data import load_cifar10, prepare
    from search.models import load_model
    from search.tracking.tracker import Tracker

    tracker = Tracker(args.tracking_uri, create=False)
    name = f"bench-{args.study}"
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    s = export(study=args.study, out=work / "export", register=name, tracking_uri=tracker.uri)
    info = json.loads((work / "export" / "classifier.json").read_text())
    metric, recorded = info["metric"], info["accuracy"]
    config = run_config_from_dict(yaml.safe_load((work / "export" / "config.yaml").read_text()))
    raw = prepare(load_cifar10(args.data_dir), replace(config.data, normalize=False))
    x, y, names = raw.x_test, np.asarray(raw.y_test), list(raw.label_names)
    print(f"run {s['run_id']} ({s['source']}): {len(y)} test images; recorded {metric} {recorded:.4f}; "
          f"registered {name} version {s['registered']['version']}")

    def accuracy(labels) -> float:
        return float(np.mean(np.array([names.index(label) for label in labels]) == y))

    doors = {}
    model = load_model(work / "export" / "model.keras")
    doors["Keras load_model (safe_mode)"] = float(np.mean(model.predict(x, batch_size=500, verbose=0).argmax(1) == y))
    doors["blocksweep evaluate RUN_ID"] = evaluate(s["run_id"], data_dir=args.data_dir, out=str(work / "eval"),
                                                   tracking_uri=tracker.uri)["accuracy"]
    from PIL import Image

    files = []
    for i, image in enumerate(x.astype(np.uint8)):
        files.append(str(work / "png" / f"{i}.png"))
        Path(files[-1]).parent.mkdir(exist_ok=True)
        Image.fromarray(image).save(files[-1])
    doors["blocksweep predict (PNG files)"] = accuracy([r["label"] for r in predict(work / "export", files)["predictions"]])
    mlflow.set_tracking_uri(tracker.uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    doors["mlflow.pyfunc.load_model"] = accuracy(pyfunc.predict(x.astype(np.float32))["label"])

    port = args.port
    if not port:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracker.uri}
    log = open(work / "serve.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}@champion",
                               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.perf_counter()
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.perf_counter() - started > 300:
                    raise SystemExit(f"server did not start: {(work / 'serve.log').read_text()[-2000:]}")
                time.sleep(0.5)
        ready = time.perf_counter() - started
        labels = []
        for start in range(0, len(x), args.batch):
            labels += [row["label"] for row in post(url, x[start:start + args.batch])]
        doors["HTTP, mlflow models serve"] = accuracy(labels)
        batch = x[: args.batch]
        seconds = {}
        for form in ("inputs", "dataframe_split"):
            post(url, batch, form)  # warm-up
            seconds[form] = []
            for _ in range(args.requests):
                begin = time.perf_counter()
                post(url, batch, form)
                seconds[form].append(time.perf_counter() - begin)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()

    print(f"\n| door | {metric} on {len(y)} raw test images |\n| --- | --- |")
    print(f"| recorded in the run | {recorded:.4f} |")
    for door, value in doors.items():
        print(f"| {door} | {value:.4f} |")
    print(f"\nserver ready in {ready:.1f} s; one POST of {args.batch} images, {args.requests} requests each:\n")
    print("| request format | JSON | median | min | max |\n| --- | --- | --- | --- | --- |")
    for form, times in seconds.items():
        times.sort()
        print(f"| {form} | {len(body(batch, form)) / 1e6:.2f} MB | {1000 * statistics.median(times):.0f} ms | "
              f"{1000 * times[0]:.0f} ms | {1000 * times[-1]:.0f} ms |")


if __name__ == "__main__":
    main()

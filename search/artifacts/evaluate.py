"""`blocksweep evaluate`: a saved model on the CIFAR-10 test set: accuracy, per-class
accuracy, and a confusion-matrix PNG.

The images are prepared the way the model was trained on them. Where that is known from
depends on where the model comes from:

    RUN_ID      an MLflow run: its `model/model.keras`, with `preprocessing.json` (the
                per-channel mean and std the images were standardised with, the class
                names) and `config.yaml` (the data config: which classes, which test subset,
                the seed). The test split is rebuilt from that data config, so the accuracy
                is measured on the very images behind the run's `test_accuracy`. The results
                go back into the run: metrics `evaluate_*`, artifacts under `evaluation/`.
    DIR         a folder holding model.keras (an export): preprocessing.json and config.yaml
                are used as above when the folder has them. Without config.yaml the classes
                come from the class names in preprocessing.json, with their whole test set.
    FILE.keras  a bare model: the whole test set of all ten classes, standardised with the
                constants of the default data config's training split (val_size 5000, seed
                0: what `blocksweep train` uses unless told otherwise), recomputed from the
                data. A ResNet classifier (a "resnet50" base inside) takes raw 0..255 pixels:
                its preprocessing is part of the model, so none is applied then.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import yaml

from search import backend
from search.errors import UsageError
from search.tracking import RUN_ID
MODEL_FILE, PREPROCESSING_FILE, CONFIG_FILE = "model.keras", "preprocessing.json", "config.yaml"
RUN_ARTIFACTS = (f"model/{MODEL_FILE}", PREPROCESSING_FILE, CONFIG_FILE)


@dataclass(frozen=True)
class ModelSource:
    """A model to evaluate and what is known of how it was trained."""

    kind: str  # run | export | file
    name: str  # the run id, or the file or folder name: names the output folder
    model_path: Path
    preprocessing: Optional[dict] = None  # preprocessing.json
    data: Optional[dict] = None  # the `data` section of config.yaml
    run_id: Optional[str] = None


def evaluate(model: str, *, data_dir: Optional[str] = None, out: Optional[str] = None,
             tracking_uri: Optional[str] = None, backend_name: Optional[str] = None) -> dict:
    """`blocksweep evaluate`: a saved model on the test set; the confusion matrix and the
    numbers go into `out`, and into the run when the model came from one.

    Args:
        model: a .keras file, a folder holding model.keras (an export), or an MLflow run id.
        data_dir, tracking_uri, backend_name: as for `train`.
        out: the folder for confusion_matrix.png and evaluation.json (default evaluation/<name>/).

    Returns:
        The summary the command prints: accuracy, images, per_class, png, run_id,
        logged_to_run, ...
    """
    with tempfile.TemporaryDirectory() as tmp:
        tracker = None
        if not Path(model).exists() and RUN_ID.match(model):
            from search.tracking.tracker import Tracker

            tracker = Tracker(tracking_uri, create=False)
        source = locate(model, tmp, tracker)
        chosen = backend.select(backend_name)
        from search.data import load_cifar10

        dataset = load_cifar10(data_dir)
        net = _load(source)
        x, y, names = test_split(source, dataset, _takes_raw_pixels(net))
        if net.output_shape[-1] != len(names):
            raise UsageError(f"--model {model}: the model predicts {net.output_shape[-1]} classes, the test "
                             f"split has {len(names)} ({', '.join(names)})")
        scores = score(net, x, y, len(names))

    folder = Path(out) if out else Path("evaluation") / source.name
    folder.mkdir(parents=True, exist_ok=True)
    from search import plots

    png = plots.confusion_matrix(scores["confusion"], names, folder / "confusion_matrix.png",
                                 title=f"{source.name}: test accuracy {scores['accuracy']:.4f}")
    summary = {"model": model, "kind": source.kind, "run_id": source.run_id, "backend": chosen,
               "images": int(len(y)), "accuracy": scores["accuracy"],
               "per_class": dict(zip(names, scores["per_class"])),
               "confusion_matrix": [list(map(int, row)) for row in scores["confusion"]],
               "png": str(png), "logged_to_run": tracker is not None}
    (folder / "evaluation.json").write_text(json.dumps(summary, indent=2))
    if tracker is not None:
        _log(tracker.run(source.run_id), summary, png, folder / "evaluation.json")
    return summary


# --------------------------------------------------------------------------- the model


def locate(model: str, tmp: str, tracker=None) -> ModelSource:
    """Find the model file and what was recorded beside it; UsageError if there is none."""
    path = Path(model)
    if path.is_dir():
        if not (path / MODEL_FILE).is_file():
            raise UsageError(f"--model {model}: the folder holds no {MODEL_FILE}")
        return ModelSource("export", path.resolve().name, path / MODEL_FILE,
                           _read_json(path / PREPROCESSING_FILE), _read_data_config(path / CONFIG_FILE))
    if path.is_file():
        if path.suffix != ".keras":
            raise UsageError(f"--model {model}: expected a .keras model file, an export folder or an MLflow run id")
        return ModelSource("file", path.stem, path)
    if tracker is None:
        raise UsageError(f"--model {model}: no such file or folder, and not an MLflow run id")
    from search.tracking.tracker import fetch_run_files

    found = fetch_run_files(model, RUN_ARTIFACTS, tmp, tracker.uri, what="--model")
    if found[RUN_ARTIFACTS[0]] is None:
        raise UsageError(f"--model {model}: the run kept no {RUN_ARTIFACTS[0]} (a sweep keeps the best "
                         "trials' models; see --keep-models)")
    return ModelSource("run", model, found[RUN_ARTIFACTS[0]], _read_json(found[PREPROCESSING_FILE]),
                       _read_data_config(found[CONFIG_FILE]), run_id=model)


def _read_json(path: Optional[Path]) -> Optional[dict]:
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise UsageError(f"{path}: not readable JSON ({err})") from None


def _read_data_config(path: Optional[Path]) -> Optional[dict]:
    if path is None or not path.is_file():
        return None
    tree = yaml.safe_load(path.read_text())
    return tree.get("data") if isinstance(tree, dict) else None


def _load(source: ModelSource):
    from search.models import open_model

    return open_model(source.model_path, f"--model {source.name}", compile=False)


def _takes_raw_pixels(net) -> bool:
    """A ResNet classifier preprocesses inside the model (search/models/resnet50.py)."""
    from search.models.resnet50 import BASE

    return any(layer.name == BASE for layer in net.layers)


# --------------------------------------------------------------------------- the test split


def test_split(source: ModelSource, dataset, raw_pixels: bool):
    """(images as the model expects them, integer labels, class names) of the test split
    the model's training used (see the module docstring)."""
    import numpy as np
    from pydantic import TypeAdapter, ValidationError

    from search.config import DataConfig
    from search.data import prepare

    recorded = source.preprocessing or {}
    if source.data is not None:
        try:
            data = TypeAdapter(DataConfig).validate_python(source.data)
        except ValidationError as err:
            raise UsageError(f"--model {source.name}: its {CONFIG_FILE} has an unreadable data section "
                             f"({err.errors()[0]['msg']})") from None
    elif recorded.get("label_names"):
        names = list(dataset.label_names)
        unknown = [n for n in recorded["label_names"] if n not in names]
        if unknown:
            raise UsageError(f"--model {source.name}: its {PREPROCESSING_FILE} names classes that CIFAR-10 "
                             f"does not have: {', '.join(unknown)}")
        classes = tuple(names.index(n) for n in recorded["label_names"])
        data = DataConfig(classes=None if classes == tuple(range(10)) else classes)
    else:
        data = DataConfig()
    # Pixels 0..255 of exactly the test images of that data config (the subset does not
    # depend on normalisation), then the recorded (or recomputed) standardisation. Without
    # a recorded data config the test set is whole and the validation split does not matter.
    split = data if source.data is not None else replace(data, val_size=10)
    raw = prepare(dataset, replace(split, normalize=False, labels="sparse"))
    if "mean" in recorded and "std" in recorded:
        mean, std = np.asarray(recorded["mean"]), np.asarray(recorded["std"])
    elif raw_pixels or not data.normalize:
        mean, std = np.zeros(3), np.ones(3)
    else:
        fitted = prepare(dataset, data)
        mean, std = np.asarray(fitted.mean), np.asarray(fitted.std)
    x = (raw.x_test - mean.astype(np.float32)) / std.astype(np.float32)
    return x, np.asarray(raw.y_test), list(raw.label_names)


def score(net, x, y, classes: int) -> dict:
    """Accuracy, per-class accuracy (recall) and the confusion matrix (rows: true class)."""
    import numpy as np

    predicted = np.argmax(net.predict(x, batch_size=512, verbose=0), axis=-1)
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (y, predicted), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    return {"accuracy": float(np.mean(predicted == y)), "per_class": [float(a) for a in per_class],
            "confusion": confusion}


def _log(run, summary: dict, png: Path, json_path: Path) -> None:
    metrics = {"evaluate_test_accuracy": summary["accuracy"]}
    for name, accuracy in summary["per_class"].items():
        metrics[f"evaluate_accuracy.{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}"] = accuracy
    run.log_metrics(metrics)
    run.log_file(png, "evaluation")
    run.log_file(json_path, "evaluation")

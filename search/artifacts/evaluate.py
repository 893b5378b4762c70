"""`blocksweep evaluate`: a saved model on the CIFAR-10 test set: accuracy, per-class
accuracy, and a confusion-matrix PNG.

The model takes raw pixels (search/models/classifier.py), so the test images go in as the
dataset holds them (0..255); what the model answers with is the metric the sweep ranked by
(test_tta_accuracy, with test-time augmentation inside the model, where the objective was
TTA accuracy; else test_accuracy), and the output says which. Which test images depends
on where the model comes from:

    RUN_ID      an MLflow run: its kept model (search/artifacts/kept.py) and the data config
                of its `config.yaml` (which classes, which test subset, the seed), so the
                accuracy is measured on the very images behind the run's recorded metric.
                The results go back into the run: metrics `evaluate_<metric>` and
                `evaluate_accuracy.<class>`, artifacts under `evaluation/`.
    DIR         a folder holding model.keras (an export): config.yaml's data config when the
                folder has one, else the classes named in classifier.json (or
                preprocessing.json), with their whole test set.
    FILE.keras  a bare model: the whole test set of all ten classes. A model kept before
                models took raw pixels is standardised with the constants of the default
                data config's training split (val_size 5000, seed 0: what `blocksweep train`
                uses unless told otherwise), recomputed from the data; a ResNet classifier
                takes raw pixels already (its preprocessing is inside it).
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from search import backend
from search.artifacts.kept import CONFIG_FILE, INFO_FILE, MODEL_FILE, PREPROCESSING_FILE, Kept
from search.errors import UsageError
from search.tracking import RUN_ID


@dataclass(frozen=True)
class Source:
    """A model to evaluate and what is known of the data it was trained on."""

    kind: str  # run | export | file
    name: str  # the run id, or the file or folder name: names the output folder
    kept: Kept
    data: Optional[dict] = None  # the `data` section of config.yaml
    run_id: Optional[str] = None
    recorded: Optional[float] = None  # the model's metric as its run recorded it


def evaluate(model: str, *, data_dir: Optional[str] = None, out: Optional[str] = None,
             tracking_uri: Optional[str] = None, backend_name: Optional[str] = None) -> dict:
    """`blocksweep evaluate`: a saved model on the test set; the confusion matrix and the
    numbers go into `out`, and into the run when the model came from one.

    Args:
        model: a .keras file, a folder holding model.keras (an export), or an MLflow run id.
        data_dir, tracking_uri, backend_name: as for `train`.
        out: the folder for confusion_matrix.png and evaluation.json (default evaluation/<name>/).

    Returns:
        The summary the command prints: metric (test_accuracy, or test_tta_accuracy),
        accuracy, recorded (the run's value of that metric), how, images, per_class, png,
        run_id, logged_to_run, ...
    """
    with tempfile.TemporaryDirectory() as tmp:
        tracker = None
        if not Path(model).exists():
            if not RUN_ID.match(model):
                raise UsageError(f"--model {model}: no such file or folder, and not an MLflow run id")
            from search.tracking.tracker import Tracker, fetch_run_files

            tracker = Tracker(tracking_uri, create=False)
            fetch_run_files(model, [], tmp, tracker.uri, what="--model")  # the run exists, before the data loads
        chosen = backend.select(backend_name)
        import functools

        from search.data import load_cifar10, load_dataset

        # CIFAR-10 for a model that records no data config; else the data its run trained on.
        cifar10 = functools.cache(lambda: load_cifar10(data_dir))
        source = locate(model, Path(tmp), cifar10, tracker)
        x, y, names = test_split(source, cifar10, lambda data: load_dataset(data, data_dir))
        classes = source.kept.model.output_shape[-1]
        if classes != len(names):
            raise UsageError(f"--model {model}: the model predicts {classes} classes, the test "
                             f"split has {len(names)} ({', '.join(names)})")
        scores = score(source.kept.model, x, y, len(names))

    info = source.kept.info
    folder = Path(out) if out else Path("evaluation") / source.name
    folder.mkdir(parents=True, exist_ok=True)
    from search import plots

    png = plots.confusion_matrix(scores["confusion"], names, folder / "confusion_matrix.png",
                                 title=f"{source.name}: {info['metric']} {scores['accuracy']:.4f}")
    summary = {"model": model, "kind": source.kind, "run_id": source.run_id, "backend": chosen,
               "metric": info["metric"], "tta_level": info.get("tta_level", 0), "how": source.kept.how(),
               "images": int(len(y)), "accuracy": scores["accuracy"], "recorded": source.recorded,
               "per_class": dict(zip(names, scores["per_class"])),
               "confusion_matrix": [list(map(int, row)) for row in scores["confusion"]],
               "png": str(png), "logged_to_run": tracker is not None}
    (folder / "evaluation.json").write_text(json.dumps(summary, indent=2))
    if tracker is not None:
        _log(tracker.run(source.run_id), summary, png, folder / "evaluation.json")
    return summary


# --------------------------------------------------------------------------- the model


def locate(model: str, tmp: Path, cifar10, tracker=None) -> Source:
    """The model and what was recorded beside it; UsageError if there is none."""
    from search.artifacts import kept

    flag = f"--model {model}"
    path = Path(model)
    if path.is_dir():
        if not (path / MODEL_FILE).is_file():
            raise UsageError(f"{flag}: the folder holds no {MODEL_FILE}")
        if not ((path / INFO_FILE).is_file() or (path / PREPROCESSING_FILE).is_file()):
            return replace(_bare_file(path / MODEL_FILE, cifar10, flag), kind="export", name=path.resolve().name)
        found = kept.read_folder(path, flag)
        config = kept.read_config(path / CONFIG_FILE, flag) or {}
        return Source("export", path.resolve().name, found, config.get("data"), recorded=found.info.get("accuracy"))
    if path.is_file():
        if path.suffix != ".keras":
            raise UsageError(f"{flag}: expected a .keras model file, an export folder or an MLflow run id")
        return _bare_file(path, cifar10, flag)
    from search.tracking.tracker import fetch_run_files

    found = fetch_run_files(model, [CONFIG_FILE], tmp, tracker.uri, what="--model")  # also: the run exists
    run = tracker.get_run(model)
    read = kept.read_run(tracker, run, tmp / "model", flag="--model")
    config = kept.read_config(found[CONFIG_FILE], flag) if found[CONFIG_FILE] else {}
    return Source("run", model, read, (config or {}).get("data"), run_id=model,
                  recorded=run.metrics.get(read.info["metric"]))


def _bare_file(path: Path, cifar10, flag: str) -> Source:
    """A .keras file with nothing beside it: a model of raw pixels as it is; a bare network
    (kept before) wrapped with the default data config's constants, recomputed."""
    import numpy as np

    from search.config import DataConfig
    from search.data import prepare
    from search.models import open_model
    from search.models.classifier import takes_raw_pixels, tta_level, wrap
    from search.models.resnet50 import BASE

    model = open_model(path, flag, compile=False)
    level = tta_level(model)
    info = {"label_names": list(cifar10().label_names), "input_shape": list(model.input_shape[1:]),
            "metric": "test_tta_accuracy" if level else "test_accuracy", "tta_level": level, "accuracy": None}
    if takes_raw_pixels(model):
        return Source("file", path.stem, Kept(model, info, path))
    if any(layer.name == BASE for layer in model.layers):  # a ResNet classifier preprocesses inside
        mean, std = np.zeros(3), np.ones(3)
    else:
        fitted = prepare(cifar10(), DataConfig())
        mean, std = np.asarray(fitted.mean), np.asarray(fitted.std)
    return Source("file", path.stem, Kept(wrap(model, mean, std), info))


# --------------------------------------------------------------------------- the test split


def test_split(source: Source, cifar10, load):
    """(raw 0..255 pixels, integer labels, class names) of the test split the model's
    training used (see the module docstring): `load(data_config)` reads the data a recorded
    data config names (CIFAR-10, CIFAR-100 or a folder); `cifar10()` is CIFAR-10 for a model
    that records none."""
    import numpy as np
    from pydantic import TypeAdapter, ValidationError

    from search.config import DataConfig
    from search.data import prepare

    if source.data is not None:
        try:
            data = TypeAdapter(DataConfig).validate_python(source.data)
        except ValidationError as err:
            raise UsageError(f"--model {source.name}: its {CONFIG_FILE} has an unreadable data section "
                             f"({err.errors()[0]['msg']})") from None
        dataset = load(data)
    else:
        dataset = cifar10()
        names = list(dataset.label_names)
        wanted = source.kept.info["label_names"]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise UsageError(f"--model {source.name}: it names classes that CIFAR-10 does not have: "
                             f"{', '.join(unknown)}")
        classes = tuple(names.index(n) for n in wanted)
        # Without a recorded data config the test set is whole and the validation split does not matter.
        data = DataConfig(classes=None if classes == tuple(range(10)) else classes, val_size=10)
    # Exactly the test images of that data config (the subset does not depend on
    # normalisation), as pixels: the model standardises them itself.
    raw = prepare(dataset, replace(data, normalize=False, labels="sparse"))
    return raw.x_test, np.asarray(raw.y_test), list(raw.label_names)


def score(net, x, y, classes: int) -> dict:
    """Accuracy, per-class accuracy (recall) and the confusion matrix (rows: true class)."""
    import numpy as np

    if isinstance(x, np.ndarray):
        predicted = np.argmax(net.predict(x, batch_size=512, verbose=0), axis=-1)
    else:  # a folder too large for memory: its test files decoded batch by batch
        from search.training.streaming import Batches

        predicted = np.argmax(net.predict(Batches(x, None, 512), verbose=0), axis=-1)
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (y, predicted), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    return {"accuracy": float(np.mean(predicted == y)), "per_class": [float(a) for a in per_class],
            "confusion": confusion}


def _log(run, summary: dict, png: Path, json_path: Path) -> None:
    metrics = {f"evaluate_{summary['metric']}": summary["accuracy"]}
    for name, accuracy in summary["per_class"].items():
        metrics[f"evaluate_accuracy.{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}"] = accuracy
    run.log_metrics(metrics)
    run.log_file(png, "evaluation")
    run.log_file(json_path, "evaluation")

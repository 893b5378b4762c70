"""`blocksweep export` and `blocksweep predict`: one clear artifact for the best model, and
proof that it is usable on new images.

Which weights: the best epoch's. The trainer restores the best epoch's weights before the
test evaluation and `runs.train_tracked` logs that model as `model/model.keras`, so the
logged model *is* the best epoch (a test checks it against the run's logged best
validation metric); export copies it, it never retrains (keras-tuner#277, #687).

The export folder:

    model.keras          the model (load with search.models.load_model(path): keras's
                         load_model with safe_mode=True, our custom layers registered)
    model.weights.h5     the same weights alone (for the same architecture built in code)
    config.yaml          the resolved configuration the run trained
    preprocessing.json   x = (pixels - mean) / std per RGB channel, pixels in 0..255;
                         input_shape; label_names
    labels.txt           the class names, one per line, in output order
    metrics.json         where it came from (run, study, trial) and its logged results
    saved_model/         with --format savedmodel (TensorFlow backend)
    model.onnx           with --format onnx (tf2onnx, TensorFlow backend)

`predict` reads exactly this folder: it loads model.keras with safe_mode=True, turns each
PNG/JPEG into RGB, resizes it to the model's input size when needed (Pillow, Lanczos:
antialiased down-sampling), normalises it with preprocessing.json and prints the class.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from search import backend
from search.errors import UsageError

FORMATS = ("keras", "savedmodel", "onnx")
MODEL_ARTIFACT = "model/model.keras"
# The per-run results (`runs.log_results`); other metrics are per-epoch, kept as last values.
RESULT_METRICS = ("objective", "best_epoch", "epochs_run", "train_seconds", "mean_images_per_second",
                  "test_accuracy", "test_loss")


# --------------------------------------------------------------------------- which run


def only_study(tracker) -> str:
    """The study to export when neither --study nor --run is given: the store's only
    sweep. Several: UsageError naming them (their objectives may not even compare)."""
    names = sorted({found.study for found in tracker.studies()})
    if len(names) > 1:
        raise UsageError(f"export: {len(names)} studies in {tracker.uri} ({', '.join(names)}): "
                         "choose one with --study NAME, or a run with --run RUN_ID")
    return names[0]


def choose_run(tracker, study: Optional[str], run_id: Optional[str]):
    """(run record, where it came from): the study's best completed trial by the ranking
    rules of `compare` (ties: the earlier run), or the run asked for. Raises UsageError
    for an unknown or empty study and for a run that kept no model."""
    if (study is None) == (run_id is None):
        raise UsageError("export: give exactly one of --study NAME or --run RUN_ID")
    if run_id is not None:
        run = tracker.get_run(run_id)
        source = f"run {run_id}"
    else:
        from search.compare import best, read

        comparison = read(tracker, [study])
        top = best(comparison)
        if top is None:
            states = comparison.runs["state"].value_counts()
            seen = ", ".join(f"{states[s]} {s}" for s in ("completed", "pruned", "failed", "running")
                             if s in states) or "no trials"
            raise UsageError(f"--study {study}: no completed trial to export ({seen})")
        run = tracker.get_run(top["run_id"])
        source = f"study {study} trial {top['trial']}"
    if MODEL_ARTIFACT not in tracker.artifact_paths(run.run_id, "model"):
        why = ("its sweep kept only the models of trials that were best when they finished "
               "(--keep-models best)" if run.role == "trial" else "it logged no model")
        raise UsageError(f"{source} (run {run.run_id}) has no kept model ({MODEL_ARTIFACT}): {why}; "
                         "export another run with --run RUN_ID, or rerun the sweep with --keep-models all")
    return run, source


# --------------------------------------------------------------------------- export


def export(*, study: Optional[str] = None, run_id: Optional[str] = None, out: str | Path, fmt: str = "keras",
           register: Optional[str] = None, tracking_uri: Optional[str] = None,
           backend_name: Optional[str] = None, storage: Optional[str] = None) -> dict:
    """Write the export folder `out` (see the module docstring); returns the summary.
    The best trial is chosen from MLflow; `storage`, when given with `study`, must hold
    that Optuna study (a check that the two stores describe the same sweep)."""
    out = Path(out)
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out}: exists and is not an empty folder")
    chosen = backend.resolve(backend_name)
    if fmt in ("savedmodel", "onnx") and chosen != "tensorflow":
        raise UsageError(f"--format {fmt}: needs the TensorFlow backend (--backend tensorflow), not {chosen}")
    if fmt == "onnx":
        missing = [m for m in ("tf2onnx", "onnx") if importlib.util.find_spec(m) is None]
        if missing:
            raise UsageError(f"--format onnx: needs {' and '.join(missing)} (pip install 'blocksweep[onnx]')")

    from search.tracking import Tracker

    tracker = Tracker(tracking_uri, create=False)
    if study is None and run_id is None:
        study = only_study(tracker)
    if storage is not None and study is not None:
        from search.engines.optuna_storage import check_study

        check_study(storage, study)
    run, source = choose_run(tracker, study, run_id)
    backend.select(chosen)
    from search.models import load_model

    with tempfile.TemporaryDirectory() as tmp:  # nothing lands in `out` unless all of it does
        stage = Path(tmp) / "export"
        stage.mkdir()
        for artifact in ("config.yaml", "preprocessing.json"):
            shutil.copy(tracker.download(run.run_id, artifact, Path(tmp) / "download"), stage)
        # The logged model carries its training state (a compiled loss, an optimizer slot):
        # saved again without it, the export is for inference and loads without warnings.
        logged = tracker.download(run.run_id, MODEL_ARTIFACT, Path(tmp) / "download")
        model = load_model(logged, compile=False)
        model.save(stage / "model.keras")
        model.save_weights(stage / "model.weights.h5")
        prep = json.loads((stage / "preprocessing.json").read_text())
        (stage / "labels.txt").write_text("\n".join(prep["label_names"]) + "\n")
        info = _metrics(run, source, (stage / "config.yaml").read_text())
        (stage / "metrics.json").write_text(json.dumps(info, indent=2))
        if fmt == "savedmodel":
            model.export(str(stage / "saved_model"), format="tf_saved_model", verbose=False)
        elif fmt == "onnx":
            # Keras's ONNX exporter refuses a model that was never called (a freshly loaded one).
            model(np.zeros((1, *prep["input_shape"]), dtype="float32"))
            model.export(str(stage / "model.onnx"), format="onnx", verbose=False)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        shutil.move(str(stage), str(out))
    registered = None
    if register:
        example = np.zeros((1, *prep["input_shape"]), dtype="float32")
        registered = tracker.register_keras_model(run.run_id, model, register, example)
    return {"source": source, "run_id": run.run_id, "metric": info["metric"], "objective": info["objective"],
            "best_epoch": info["best_epoch"], "out": str(out), "format": fmt,
            "files": sorted(p.name for p in out.iterdir()), "registered": registered}


def _metrics(run, source: str, config_text: str) -> dict:
    import yaml

    objective = (yaml.safe_load(config_text) or {}).get("objective", {})
    metric = objective.get("metric", "val_accuracy")
    goal = objective.get("direction") or ("minimize" if metric.endswith("loss") else "maximize")
    m = run.metrics
    return {"source": source, "run_id": run.run_id, "study": run.tags.get("blocksweep.study"),
            "trial": run.tags.get("blocksweep.trial"), "engine": run.tags.get("blocksweep.engine"),
            "metric": metric, "goal": goal, "objective": m.get("objective"),
            "best_epoch": int(m["best_epoch"]) if "best_epoch" in m else None,
            "results": {k: m[k] for k in RESULT_METRICS if k in m},
            "last_epoch": {k: v for k, v in m.items() if k not in RESULT_METRICS and not k.startswith("best_")}}


# --------------------------------------------------------------------------- predict


def load_images(paths: list[str], size: tuple[int, int]) -> np.ndarray:
    """PNG/JPEG files as an (n, height, width, 3) float32 array of 0..255 RGB pixels,
    resized to `size` (height, width) where they differ. UsageError names a bad file."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in paths:
        try:
            with Image.open(path) as img:
                if img.format not in ("PNG", "JPEG"):
                    raise UsageError(f"{path}: a {img.format} image; predict reads PNG and JPEG files")
                rgb = img.convert("RGB")
        except FileNotFoundError:
            raise UsageError(f"{path}: no such image file") from None
        except IsADirectoryError:
            raise UsageError(f"{path}: is a folder, not an image file") from None
        except (UnidentifiedImageError, OSError) as err:
            raise UsageError(f"{path}: not a readable PNG or JPEG image ({err.__class__.__name__})") from None
        if rgb.size != (size[1], size[0]):
            rgb = rgb.resize((size[1], size[0]), Image.Resampling.LANCZOS)
        images.append(np.asarray(rgb, dtype=np.float32))
    return np.stack(images)


def read_preprocessing(path: Path, flag: str) -> dict:
    """An export's preprocessing.json, checked: mean and std (3 values each), the input
    shape and the label names."""
    try:
        prep = json.loads(path.read_text())
    except ValueError as err:
        raise UsageError(f"{flag}: {path.name} is not readable JSON ({err})") from None
    ok = (isinstance(prep, dict) and all(k in prep for k in ("mean", "std", "input_shape", "label_names"))
          and len(prep["mean"]) == 3 and len(prep["std"]) == 3 and len(prep["input_shape"]) == 3)
    if not ok:
        raise UsageError(f"{flag}: {path.name} needs mean and std (3 values each), input_shape and label_names")
    return prep


def predict(model_dir: str | Path, images: list[str], backend_name: Optional[str] = None) -> list[dict]:
    """Classify image files with an export folder; one dict per image: label, class
    index, probability, and every class's probability."""
    folder = Path(model_dir)
    needed = [folder / "model.keras", folder / "preprocessing.json"]
    if not folder.is_dir() or not all(p.exists() for p in needed):
        raise UsageError(f"--model {model_dir}: not an export folder (needs model.keras and preprocessing.json; "
                         "write one with `blocksweep export`)")
    prep = read_preprocessing(folder / "preprocessing.json", f"--model {model_dir}")
    height, width = prep["input_shape"][:2]
    pixels = load_images(images, (height, width))  # every file checked before the model loads
    x = (pixels - np.asarray(prep["mean"], np.float32)) / np.asarray(prep["std"], np.float32)
    backend.select(backend_name)
    from search.models import open_model

    model = open_model(folder / "model.keras", f"--model {model_dir}")
    probabilities = np.asarray(model.predict(x, verbose=0), dtype=float)
    names = prep["label_names"]
    return [{"image": str(path), "label": names[int(p.argmax())], "class_index": int(p.argmax()),
             "probability": float(p.max()), "probabilities": dict(zip(names, map(float, p)))}
            for path, p in zip(images, probabilities)]

"""`blocksweep export`: one clear artifact for the best model of a sweep (or of a run).

Which weights: the best epoch's. The trainer restores the best epoch's weights before the
test evaluation and `search.trials.tracked.train_tracked` logs that model as the run's
MLflow model `model`, so the logged model *is* the best epoch (a test checks it against the
run's logged best validation metric); export copies it and never retrains (a retrained
model would not be the one whose numbers the sweep reported).

The export folder:

    model.keras          the model: raw RGB pixels 0..255 in (uint8 or float, n x height x width x 3:
                         32 x 32 for CIFAR, a folder's data.image_size),
                         class probabilities out, standardisation and (where the sweep ranked
                         by it) test-time augmentation inside; the very file of the run's MLflow
                         model. Load with search.models.load_model(path): keras's load_model
                         with safe_mode=True, our custom layers registered
    model.weights.h5     the trained network's weights alone (standardised images in), for
                         search.models.build_model(config.model, ...) built in code
    classifier.json      label_names, input_shape, and the test metric the model's answers
                         reproduce (test_accuracy, or test_tta_accuracy with tta_level) with its value;
                         resize (how predict brings another size to input_shape, as the loader
                         did), dataset, converts_to_rgb (a folder's model: non-RGB images converted)
    config.yaml          the resolved configuration the run trained
    preprocessing.json   the constants inside the model: x = (pixels - mean) / std per RGB channel
    labels.txt           the class names, one per line, in output order
    metrics.json         where it came from (run, study, trial) and its logged results
    saved_model/         with --format savedmodel (TensorFlow backend)
    model.onnx           with --format onnx (tf2onnx, TensorFlow backend)

`blocksweep predict` (predict.py) reads exactly this folder. `--register NAME` registers the
run's MLflow model itself (`runs:/<run id>/model`) as a new version of NAME and points an
alias (default `champion`) at it; a run kept before models were MLflow models gets its model
logged as one first.
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
# The per-run results (`search.trials.tracked.log_results`); other metrics are per-epoch, kept as last values.
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
        from search.analysis.compare import best, read

        comparison = read(tracker, [study])
        top = best(comparison)
        if top is None:
            states = comparison.runs["state"].value_counts()
            seen = ", ".join(f"{states[s]} {s}" for s in ("completed", "pruned", "failed", "running")
                             if s in states) or "no trials"
            raise UsageError(f"--study {study}: no completed trial to export ({seen})")
        run = tracker.get_run(top["run_id"])
        source = f"study {study} trial {top['trial']}"
    if tracker.kept_model(run) is None:
        why = ("its sweep kept only the models of trials that were best when they finished "
               "(--keep-models best)" if run.role == "trial" else "it logged no model")
        raise UsageError(f"{source} (run {run.run_id}) has no kept model: {why}; "
                         "export another run with --run RUN_ID, or rerun the sweep with --keep-models all")
    return run, source


# --------------------------------------------------------------------------- export


def export(*, study: Optional[str] = None, run_id: Optional[str] = None, out: str | Path, fmt: str = "keras",
           register: Optional[str] = None, alias: str = "champion", tracking_uri: Optional[str] = None,
           backend_name: Optional[str] = None, storage: Optional[str] = None) -> dict:
    """`blocksweep export`: write the export folder `out` (see the module docstring).

    Args:
        study: export this study's best completed trial (default: the store's only study).
        run_id: instead, this run's model.
        out: the folder to write (created; must be empty).
        fmt: ``keras``; ``savedmodel`` or ``onnx`` add a TF SavedModel or an ONNX file.
        register: also register the run's MLflow model as a new version of this name...
        alias: ...and point this alias at it (default ``champion``).
        tracking_uri, backend_name: the MLflow store and the Keras backend.
        storage: an Optuna storage that must hold `study` (a check that the two stores
            describe the same sweep; the best trial is chosen from MLflow).

    Returns:
        The summary the command prints: source, run_id, metric, objective, best_epoch,
        out, files (the names written), registered (with `register`), answers (the test
        metric the model's answers reproduce, its recorded value, the TTA level).
    """
    out = Path(out)
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out}: exists and is not an empty folder")
    from search.tracking.store import cannot_create

    why = cannot_create(out)  # checked now: the folder is created only once the export is complete
    if why:
        raise UsageError(f"--out {out}: cannot create it ({why})")
    if register is not None and not alias:
        raise UsageError("--alias: give the alias a name")
    chosen = backend.resolve(backend_name)
    if fmt in ("savedmodel", "onnx") and chosen != "tensorflow":
        raise UsageError(f"--format {fmt}: needs the TensorFlow backend (--backend tensorflow), not {chosen}")
    if fmt == "onnx":
        missing = [m for m in ("tf2onnx", "onnx") if importlib.util.find_spec(m) is None]
        if missing:
            raise UsageError(f"--format onnx: needs {' and '.join(missing)} (pip install 'blocksweep[onnx]')")

    from search.tracking.tracker import Tracker

    tracker = Tracker(tracking_uri, create=False)
    if study is None and run_id is None:
        study = only_study(tracker)
    if storage is not None and study is not None:
        from search.engines.optuna_storage import check_study

        check_study(storage, study)
    run, source = choose_run(tracker, study, run_id)
    backend.select(chosen)
    from search.artifacts.kept import INFO_FILE, read_run
    from search.models.classifier import network

    with tempfile.TemporaryDirectory() as tmp:  # nothing lands in `out` unless all of it does
        stage = Path(tmp) / "export"
        stage.mkdir()
        for artifact in ("config.yaml", "preprocessing.json"):
            shutil.copy(tracker.download(run.run_id, artifact, Path(tmp) / "download"), stage)
        kept = read_run(tracker, run, Path(tmp) / "model")
        if kept.wrapped_here:
            kept.model.save(stage / "model.keras")
        else:
            shutil.copy(kept.file, stage / "model.keras")
        network(kept.model).save_weights(stage / "model.weights.h5")
        info = {k: v for k, v in kept.info.items() if k not in ("mean", "std")}  # those are in the model now
        (stage / INFO_FILE).write_text(json.dumps(info, indent=2))
        (stage / "labels.txt").write_text("\n".join(info["label_names"]) + "\n")
        results = _metrics(run, source, (stage / "config.yaml").read_text())
        (stage / "metrics.json").write_text(json.dumps(results, indent=2))
        if fmt == "savedmodel":
            kept.model.export(str(stage / "saved_model"), format="tf_saved_model", verbose=False)
        elif fmt == "onnx":
            # Keras's ONNX exporter refuses a model that was never called (a freshly loaded one).
            kept.model(np.zeros((1, *info["input_shape"]), dtype="float32"))
            kept.model.export(str(stage / "model.onnx"), format="onnx", verbose=False)
        if register and kept.wrapped_here:  # kept before models were MLflow models: log it as one
            from search.models import layers

            tracker.run(run.run_id).log_classifier(kept.model, info, layers.__file__)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        shutil.move(str(stage), str(out))
    registered = tracker.register(run.run_id, register, alias) if register else None
    return {"source": source, "run_id": run.run_id, "metric": results["metric"], "objective": results["objective"],
            "best_epoch": results["best_epoch"], "out": str(out), "format": fmt,
            "files": sorted(p.name for p in out.iterdir()), "registered": registered,
            "answers": {k: info.get(k) for k in ("metric", "accuracy", "tta_level")}}


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

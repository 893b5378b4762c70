"""A kept model, read back: the model of raw pixels and what it says of itself.

Where it comes from:

    a run        its MLflow model `model` (data/classifier/: model.keras, classifier.json)
    a folder     an export (model.keras, classifier.json, and beside them config.yaml and
                 preprocessing.json), or the data/classifier folder of an MLflow model

Models kept before raw-pixel models existed are bare networks (standardised images in, TTA
outside): a run's plain `model/model.keras`, an export's model.keras without
classifier.json. They are wrapped here exactly as a trial wraps its network now
(search/models/classifier.py), with the constants recorded beside them
(preprocessing.json) and the TTA their config asks for (config.yaml), so every command
answers the same way for old and new models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from search.errors import UsageError, first_line

MODEL_FILE, INFO_FILE = "model.keras", "classifier.json"
PREPROCESSING_FILE, CONFIG_FILE = "preprocessing.json", "config.yaml"
LEGACY_FILES = ("model/model.keras", PREPROCESSING_FILE, CONFIG_FILE)  # what a run kept before


@dataclass(frozen=True)
class Kept:
    """A model of raw pixels and its classifier.json: label_names, input_shape, the test
    `metric` its answers reproduce (test_accuracy, or test_tta_accuracy with `tta_level`),
    and that metric's recorded value (`accuracy`, None where unknown)."""

    model: Any
    info: dict
    file: Optional[Path] = None  # the .keras file the model is; None when wrapped here

    @property
    def wrapped_here(self) -> bool:
        """A bare network kept before raw-pixel models, wrapped on reading."""
        return self.file is None

    def how(self) -> str:
        """How the model answers, in words, for the commands' output."""
        return (f"with test-time augmentation (level {self.info['tta_level']})" if self.info.get("tta_level")
                else "with one forward pass per image")

    def describe(self) -> str:
        """Which recorded metric the model's answers reproduce, and how, in words."""
        value = self.info.get("accuracy")
        recorded = f" ({value:.4f})" if value is not None else ""
        return f"answers as its {self.info['metric']}{recorded} was measured: {self.how()}"


# --------------------------------------------------------------------------- what it says of itself


def folder_info(folder: Path, flag: str) -> dict:
    """classifier.json of a folder; for a folder written before it existed, the same facts
    from preprocessing.json and config.yaml. UsageError when neither is there or readable."""
    if (folder / INFO_FILE).is_file():
        info = read_json(folder / INFO_FILE, flag)
        if not (isinstance(info, dict) and {"label_names", "input_shape", "metric"} <= set(info)):
            raise UsageError(f"{flag}: {INFO_FILE} needs label_names, input_shape and metric")
        return info
    if not (folder / PREPROCESSING_FILE).is_file():
        raise UsageError(f"{flag}: the folder has neither {INFO_FILE} nor {PREPROCESSING_FILE} "
                         "(write one with `blocksweep export`)")
    return legacy_info(read_preprocessing(folder / PREPROCESSING_FILE, flag), read_config(folder / CONFIG_FILE, flag),
                       flag)


def read_json(path: Path, flag: str):
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise UsageError(f"{flag}: {path.name} is not readable JSON ({err})") from None


def read_preprocessing(path: Path, flag: str) -> dict:
    """preprocessing.json, checked: mean and std (3 values each), input_shape, label_names."""
    prep = read_json(path, flag)
    ok = (isinstance(prep, dict) and all(k in prep for k in ("mean", "std", "input_shape", "label_names"))
          and len(prep["mean"]) == 3 and len(prep["std"]) == 3 and len(prep["input_shape"]) == 3)
    if not ok:
        raise UsageError(f"{flag}: {path.name} needs mean and std (3 values each), input_shape and label_names")
    return prep


def read_config(path: Path, flag: str) -> Optional[dict]:
    """config.yaml as a mapping, or None when there is none."""
    if not path.is_file():
        return None
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UsageError(f"{flag}: {path.name} is not readable YAML ({first_line(err, 120)})") from None
    if not isinstance(tree, dict):
        raise UsageError(f"{flag}: {path.name} is not a configuration")
    return tree


def legacy_info(prep: dict, config: Optional[dict], flag: str) -> dict:
    """classifier.json of a model kept before raw-pixel models: the test metric and TTA its
    trial's config implies (`training.results.served`), or a plain pass without a config."""
    metric, tta_level = "test_accuracy", 0
    if config is not None:
        from pydantic import ValidationError

        from search.config import run_config_from_dict
        from search.training.results import served

        try:
            metric, tta_level = served(run_config_from_dict(config))
        except ValidationError as err:
            raise UsageError(f"{flag}: its {CONFIG_FILE} does not validate ({err.errors()[0]['msg']})") from None
    return {"label_names": list(prep["label_names"]), "input_shape": list(prep["input_shape"]),
            "pixel_range": [0, 255], "metric": metric, "tta_level": tta_level, "accuracy": None,
            "mean": list(prep["mean"]), "std": list(prep["std"])}


# --------------------------------------------------------------------------- the model


def open_folder(folder: Path, info: dict, flag: str) -> Kept:
    """The model of a folder whose `info` was read with `folder_info` (backend selected)."""
    from search.models import open_model
    from search.models.classifier import takes_raw_pixels, wrap

    model = open_model(folder / MODEL_FILE, flag, compile=False)
    if takes_raw_pixels(model):
        return Kept(model, info, folder / MODEL_FILE)
    if "mean" not in info:  # classifier.json beside a bare network: not something we write
        raise UsageError(f"{flag}: its {MODEL_FILE} takes standardised images, but {INFO_FILE} has no constants; "
                         "export it again with `blocksweep export`")
    return Kept(wrap(model, info["mean"], info["std"], info["tta_level"]), info)


def read_folder(folder: Path, flag: str) -> Kept:
    return open_folder(folder, folder_info(folder, flag), flag)


def read_run(tracker, run, dst: Path, flag: str = "--run") -> Kept:
    """The kept model of `run` (a RunRecord), downloaded into `dst`; UsageError if it kept none."""
    kind = tracker.kept_model(run)
    if kind is None:
        raise UsageError(f"{flag} {run.run_id}: the run kept no model (a sweep keeps the best trials' models; "
                         "see --keep-models)")
    if kind == "mlflow":
        return read_folder(tracker.download_kept(run, dst), flag)
    folder = dst / "kept"
    for artifact in LEGACY_FILES:
        path = tracker.download(run.run_id, artifact, dst / "download")
        folder.mkdir(parents=True, exist_ok=True)
        path.replace(folder / path.name)
    kept = read_folder(folder, flag)
    kept.info["accuracy"] = run.metrics.get(kept.info["metric"])  # what the run recorded for it
    return kept

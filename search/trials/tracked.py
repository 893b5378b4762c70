"""One tracked training run: the trainer, with everything it produces logged into an
MLflow run. `blocksweep train`, every sweep trial and every `compare --repeat` seed go
through `train_tracked`, so a single run and a trial look the same in MLflow.

Logged: all config values as parameters (dotted names), the data split as dataset inputs
(CIFAR-10, train/validation/test, with digests), the resolved config as `config.yaml`, the
preprocessing constants as `preprocessing.json`, system metrics when asked, per-epoch metrics
(one batched call per epoch), the results (best objective and epoch, test accuracy and
loss, train time, images/s), the curves PNG, and the best epoch's model as the run's MLflow
model `model` (search/tracking/pyfunc_model.py).

The model kept is not the bare network the trainer returns (it takes standardised images,
and airbench's TTA is computed outside it) but that network wrapped into the model of raw
pixels (`training.components.classifier`, search/models/classifier.py). Its answers are the
ones behind the test metric the run records, by construction: its standardisation is the
data's own arithmetic, bit for bit (search/models/layers.py: `Standardize`), and its TTA
layers run the recipe's own TTA functions; tests/test_serving.py checks the accuracy
through MLflow against the recorded one.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Callable, Optional

import yaml

from search import plots
from search.config import config_dict, flatten
from search.errors import first_line, interrupted
from search.tracking.tracker import RunLog
from search.training import train_and_evaluate
from search.training.results import TrialResult, TrialState


def classifier_info(config, splits, result: TrialResult) -> dict:
    """What the kept model says of itself (classifier.json): its classes in output order,
    the images it takes, and the test metric its answers reproduce (with its value)."""
    from search.training.results import served

    metric, tta_level = served(config)
    # `resize`: how an image of another size is brought to input_shape, the call the data
    # loader made on the training images (search/data/folders.py) and `predict` makes.
    return {"label_names": list(splits.label_names), "input_shape": list(splits.input_shape),
            "pixel_range": [0, 255], "resize": "Pillow RGB, Image.Resampling.LANCZOS",
            "dataset": getattr(splits, "name", "CIFAR-10"), "metric": metric, "tta_level": tta_level,
            "accuracy": result.test.get(metric),
            # A folder's grayscale, palette and RGBA images were converted to RGB on loading:
            # `predict` converts a new one the same way rather than refusing it.
            "converts_to_rgb": not isinstance(config.data.source, str)}


def preprocessing(splits) -> dict:
    """What a user needs to feed new images to the model: x = (pixels - mean) / std."""
    return {"mean": list(splits.mean), "std": list(splits.std), "pixel_range": [0, 255],
            "input_shape": list(splits.input_shape), "label_names": list(splits.label_names)}


def log_inputs(run: RunLog, config, splits, extra_params: Optional[dict] = None) -> None:
    tree = config_dict(config)
    params = flatten(tree)
    params.update({f"data.size.{k}": v for k, v in splits.sizes().items()})
    params.update(extra_params or {})
    run.log_params(params)
    run.log_splits(splits)
    run.log_text(yaml.safe_dump(tree, sort_keys=False), "config.yaml")
    run.log_text(json.dumps(preprocessing(splits), indent=2), "preprocessing.json")


def log_results(run: RunLog, config, result: TrialResult, title: str = "") -> None:
    """Final scalars (step 0) and the curves figure."""
    metric = config.objective.metric
    final = {"epochs_run": result.epochs_run, "train_seconds": result.train_seconds,
             "mean_images_per_second": result.images_per_second}
    if result.objective is not None:
        final[f"best_{metric}"] = result.objective
        final["objective"] = result.objective
        final["best_epoch"] = result.best_epoch
    final.update(result.test)
    run.log_metrics(final)
    # What the trainer chose to record besides (transfer learning: source, cache, split).
    if result.params:
        run.log_params(result.params)
    if result.tags:
        run.set_tags(result.tags)
    for name, text in result.artifacts.items():
        run.log_text(text, name)
    if result.history:
        with tempfile.TemporaryDirectory() as tmp:
            run.log_file(plots.curves(result.history, Path(tmp) / "curves.png", title=title))


def train_tracked(config, splits, run: RunLog, *, report=None, progress=None,
                  keep_model: Callable[[TrialResult], bool] = lambda result: True,
                  title: str = "", extra_params: Optional[dict] = None, system_metrics: bool = False) -> TrialResult:
    """Train `config` into `run` and finish the run with the mirrored state; with
    `system_metrics`, MLflow's monitor logs CPU, memory and GPU use into the run meanwhile.

    Exceptions from training (out of memory, an impossible architecture) become a FAILED
    result with the reason, recorded in the run; Ctrl-C marks the run failed and re-raises.
    """
    log_inputs(run, config, splits, extra_params)
    try:
        with run.system_metrics(system_metrics):
            result = train_and_evaluate(config, splits, report=report, on_epoch=run.log_epoch, progress=progress)
    except KeyboardInterrupt as err:
        stop = interrupted(err)
        run.finish("failed", f"interrupted by {stop.by}")
        raise stop from None
    except Exception as err:  # noqa: BLE001 - any training error is the trial's failure
        result = TrialResult.failed(f"{err.__class__.__name__}: {first_line(err, 1900)}")
    log_results(run, config, result, title)
    if result.state is TrialState.COMPLETE and result.model is not None and keep_model(result):
        from search.models import layers
        from search.training.components import classifier

        run.log_classifier(classifier(config, splits, result.model), classifier_info(config, splits, result),
                           layers.__file__)
        run.set_tags({"blocksweep.model": "kept"})
    run.finish(result.state.value, result.reason)
    return result

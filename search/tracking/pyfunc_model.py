"""The MLflow model of a kept trial: MLflow's `python_function` over the raw-pixel Keras model.

Why not MLflow's Keras flavour: it loads the `.keras` file with Keras alone, so a process
that has not imported our custom layers (`mlflow models serve`, a notebook) cannot load
it; the flavour's only remedy for custom layers is `custom_objects`, which it stores as a
cloudpickle (an unrestricted pickle: loading it can run any code). And it answers with a
bare array: no class names. So a kept model is a pyfunc whose `loader_module` is this file:

    MLmodel                      python_function, loader_module blocksweep_pyfunc, signature
    code/blocksweep_pyfunc.py    this module, as it is
    code/blocksweep_layers.py    search/models/layers.py, as it is (the custom layers)
    data/classifier/model.keras  the model: raw pixels in, probabilities out
    data/classifier/classifier.json   label names, input shape, the metric it answers with
    requirements.txt, python_env.yaml, conda.yaml   the versions that trained it

MLflow puts `code/` on `sys.path`, imports this module and calls `_load_pyfunc`; nothing is
unpickled, and the Keras file loads with `safe_mode=True`. Nothing here imports Blocksweep,
so the model serves where Blocksweep is not installed.

Input (the signature): images (n, height, width, 3), float32 RGB pixels 0..255, e.g.
`{"inputs": [...]}` over HTTP. A model whose classifier.json records `resize` (every model
kept since models took raw images of any size) takes any height and width: an image of
another size than `input_shape` is resized exactly as the data loader and `blocksweep
predict` resized theirs (Pillow, the RGB image as uint8, `Image.Resampling.LANCZOS`), so
its signature is (-1, -1, -1, 3) and Pillow is among its requirements. MLflow cannot
reshape a flattened `dataframe_split` column into a shape of unknown height and width, so
such a model takes tensors (`inputs`, `instances`); an older model takes its one size only.
Output: a DataFrame, one row per image: `label` (the class name), `probability` (its
probability), then one column per class, named after it, in the model's output order.
Images that are not that are refused with one sentence (MLflow's scoring server answers
400 with it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

MODEL_FILE = "model.keras"
INFO_FILE = "classifier.json"
BATCH = 256  # images per forward pass (x 6 views with TTA level 2)


def _load_pyfunc(data_path: str) -> "Classifier":
    """MLflow's entry point for a `loader_module`: the model in `data_path` (data/classifier)."""
    return Classifier(Path(data_path))


class Classifier:
    """A kept trial's model as MLflow calls it: `predict(images) -> DataFrame`."""

    def __init__(self, folder: Path):
        import keras

        # The custom layers: Blocksweep's own module where this process has imported it
        # (one class per registered name in the process), else the copy shipped beside this file.
        if "search.models.layers" not in sys.modules:
            import blocksweep_layers  # noqa: F401 - registers the layers with Keras

        self.info = json.loads((folder / INFO_FILE).read_text())
        self.labels = list(self.info["label_names"])
        self.shape = tuple(self.info["input_shape"])
        self.resize = bool(self.info.get("resize"))
        self.model = keras.saving.load_model(folder / MODEL_FILE, safe_mode=True, compile=False)

    def predict(self, data, params=None):
        import pandas as pd

        x = pixels(data, self.shape, self.resize)
        p = np.asarray(self.model.predict(x, batch_size=min(BATCH, max(len(x), 1)), verbose=0), dtype=np.float64)
        best = p.argmax(axis=1)
        table = pd.DataFrame(p, columns=self.labels)
        table.insert(0, "probability", p[np.arange(len(p)), best])
        table.insert(0, "label", [self.labels[i] for i in best])
        return table


def pixels(data, shape: tuple, resize: bool = False) -> np.ndarray:
    """`data` as float32 images of `shape`, or an MLflow error (HTTP 400) saying what is
    wrong. `resize`: images of any height and width are taken and brought to `shape`."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    expected = f"(n, height, width, {shape[-1]})" if resize else f"(n, {', '.join(map(str, shape))})"

    def refuse(why: str):
        raise MlflowException(f"{why}; expected images {expected}: RGB pixels 0..255",
                              error_code=INVALID_PARAMETER_VALUE)

    try:
        x = np.asarray(data.values.tolist() if hasattr(data, "values") else data, dtype=np.float32)
    except (TypeError, ValueError):
        refuse("the input is not an array of numbers")
    if x.ndim != 4 or (x.shape[1:] != shape if not resize else (x.shape[-1] != shape[-1] or 0 in x.shape[1:3])):
        refuse(f"got an array of shape {x.shape}")
    if x.size and not np.isfinite(x).all():
        refuse("the input holds NaN or infinite values")
    if x.size and (x.min() < 0 or x.max() > 255):
        refuse(f"pixel values run from {x.min():g} to {x.max():g}, outside 0..255 (already standardised?)")
    if x.size and x.max() <= 1 and not np.array_equal(x, np.round(x)):
        refuse("every pixel value lies within 0..1 (scaled to 0..1? send 0..255)")
    if x.shape[1:] != shape:
        x = resized(x, shape[:2])
    return x


def resized(x: np.ndarray, size: tuple) -> np.ndarray:
    """(n, h, w, 3) pixels 0..255 at `size` (height, width): the call the data loader and
    `blocksweep predict` make on an image file (Pillow's Lanczos on the uint8 RGB image).
    Pixels are rounded to whole values first, as a decoded image file's are."""
    from PIL import Image

    whole = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(image, "RGB").resize((size[1], size[0]), Image.Resampling.LANCZOS),
                                dtype=np.float32) for image in whole])

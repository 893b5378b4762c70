"""`blocksweep predict`: classify image files with an export folder (export.py).

It loads model.keras with safe_mode=True, turns each PNG/JPEG into RGB, resizes it to the
model's input size when needed (Pillow, Lanczos: antialiased down-sampling), normalises
it with preprocessing.json and reports the class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from search import backend
from search.errors import UsageError


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
    """`blocksweep predict`: classify PNG/JPEG files with an export folder.

    Args:
        model_dir: a folder written by `export` (model.keras, preprocessing.json).
        images: the image files' paths.
        backend_name: the Keras backend (default: as for `train`).

    Returns:
        One dict per image: image, label, class index, probability, and every class's
        probability.
    """
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

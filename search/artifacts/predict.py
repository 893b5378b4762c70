"""`blocksweep predict`: classify image files with an export folder (export.py).

It turns each PNG/JPEG/BMP/GIF into RGB pixels, resizes it to the model's input size when
needed (Pillow, Lanczos: antialiased down-sampling; the same call that loaded a folder's
training images, search/data/folders.py, so an image of any size is seen as they were) and hands the raw pixels to model.keras
(loaded with safe_mode=True), which standardises them and, where the sweep ranked by it,
applies test-time augmentation itself. An export written before models took raw pixels
(no classifier.json) is wrapped on reading with its preprocessing.json (search/artifacts/kept.py).

Image files are checked before the model loads; what cannot be read as a colour image is
one line naming the file: a missing or non-image file, a format other than PNG, JPEG, BMP
and GIF, a
grayscale or RGBA image (the model takes RGB; converting for the user would hide that
transparency or a missing colour was dropped; a model trained on a folder, whose loader
converted such images, converts them too: classifier.json's `converts_to_rgb`), and an image so large that decoding it could
exhaust memory (Pillow's decompression-bomb limit, 89 million pixels, warned about and
refused rather than decoded).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from search import backend
from search.data.folders import FORMATS
from search.errors import UsageError, first_line

# Pillow's modes that are not one RGB colour per pixel, in words.
NOT_RGB = {"1": "black-and-white", "L": "grayscale", "I": "grayscale", "I;16": "grayscale", "F": "grayscale",
           "LA": "grayscale with alpha", "RGBA": "RGBA", "RGBa": "RGBA", "PA": "palette with alpha",
           "La": "grayscale with alpha", "CMYK": "CMYK", "YCbCr": "YCbCr", "LAB": "LAB", "HSV": "HSV"}


def load_images(paths: list[str], size: tuple[int, int], convert: bool = False) -> np.ndarray:
    """PNG/JPEG/BMP/GIF files as an (n, height, width, 3) float32 array of 0..255 RGB pixels,
    resized to `size` (height, width) where they differ. UsageError names a bad file.
    `convert`: grayscale, palette and RGBA images become RGB (alpha dropped) instead of being
    refused, as a model trained on a folder saw its own such images (search/data/folders.py)."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in paths:
        try:
            with warnings.catch_warnings():
                # Between Pillow's limit and twice it, Pillow only warns and decodes anyway.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    if img.format not in FORMATS:
                        raise UsageError(f"{path}: a {img.format} image; predict reads PNG, JPEG, BMP and GIF files")
                    mode = _colour_mode(img)
                    if mode in NOT_RGB and not convert:
                        raise UsageError(f"{path}: {NOT_RGB[mode]} image (mode {mode}); the model takes RGB "
                                         "images: convert it to RGB first")
                    rgb = img.convert("RGB")
        except FileNotFoundError:
            raise UsageError(f"{path}: no such image file") from None
        except IsADirectoryError:
            raise UsageError(f"{path}: is a folder, not an image file") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            # Pillow's message gives both sizes: "Image size (N pixels) exceeds limit of M pixels, ..."
            raise UsageError(f"{path}: refused, too large to decode safely ({first_line(err, 120)})") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise UsageError(f"{path}: not a readable PNG, JPEG, BMP or GIF image ({err.__class__.__name__})") from None
        if rgb.size != (size[1], size[0]):
            rgb = rgb.resize((size[1], size[0]), Image.Resampling.LANCZOS)
        images.append(np.asarray(rgb, dtype=np.float32))
    return np.stack(images)


def _colour_mode(img) -> str:
    """The image's mode, with a palette image reported by what its palette holds."""
    if img.mode == "P":
        return "PA" if "transparency" in img.info else (img.palette.mode if img.palette else "RGB")
    return img.mode


def predict(model_dir: str | Path, images: list[str], backend_name: Optional[str] = None) -> list[dict]:
    """`blocksweep predict`: classify PNG/JPEG/BMP/GIF files with an export folder.

    Args:
        model_dir: a folder written by `export` (model.keras, classifier.json; or, written
            before models took raw pixels, model.keras and preprocessing.json).
        images: the image files' paths.
        backend_name: the Keras backend (default: as for `train`).

    Returns:
        One dict per image: image, label, class index, probability, every class's
        probability, and the recorded test metric the model's answers reproduce (`metric`:
        test_accuracy, or test_tta_accuracy with `tta_level` > 0; `answers` says it in words).
    """
    from search.artifacts.kept import folder_info, open_folder

    folder, flag = _export_folder(model_dir)
    info = folder_info(folder, flag)
    height, width = info["input_shape"][:2]
    # every file checked before the model loads
    pixels = load_images(images, (height, width), convert=info.get("converts_to_rgb", False))
    backend.select(backend_name)
    kept = open_folder(folder, info, flag)
    probabilities = np.asarray(kept.model.predict(pixels, verbose=0), dtype=float)
    names = info["label_names"]
    return [{"image": str(path), "label": names[int(p.argmax())], "class_index": int(p.argmax()),
             "probability": float(p.max()), "probabilities": dict(zip(names, map(float, p))),
             "metric": info["metric"], "tta_level": info.get("tta_level", 0), "answers": kept.describe()}
            for path, p in zip(images, probabilities)]


def _export_folder(model_dir) -> tuple[Path, str]:
    from search.artifacts.kept import MODEL_FILE

    folder = Path(model_dir)
    flag = f"--model {model_dir}"
    if not folder.is_dir() or not (folder / MODEL_FILE).is_file():
        raise UsageError(f"{flag}: not an export folder (needs {MODEL_FILE}; write one with `blocksweep export`)")
    return folder, flag

"""CIFAR-100: Keras's "python version" layout, read with the restricted unpickler.

    cifar-100-python/train   50,000 images: data (N, 3072) uint8, fine_labels, coarse_labels
    cifar-100-python/test    10,000 images, the same keys
    cifar-100-python/meta    fine_label_names (100), coarse_label_names (20)

Sources, in order, as for CIFAR-10: `--data-dir` / $BLOCKSWEEP_DATA_DIR (a folder holding
`cifar-100-python/`, or that folder itself); else Keras's cache; else Keras's download.
`data.label_mode` picks the 100 fine or the 20 coarse classes.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from search.data.cifar10 import Cifar10, given_folder, images_and_labels, keras_datasets, label_names, read_pickled
from search.errors import UsageError

FOLDER = "cifar-100-python"
CLASSES = {"fine": 100, "coarse": 20}
URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"


def _read(path: Path) -> dict:
    return read_pickled(path, "CIFAR-100 file")


def load_part(path: Path, label_mode: str) -> tuple[np.ndarray, np.ndarray]:
    """`train` or `test` -> (images NHWC uint8, labels int64), checked."""
    return images_and_labels(path, _read(path), f"{label_mode}_labels", CLASSES[label_mode], "CIFAR-100 file")


def _label_names(folder: Path, label_mode: str) -> tuple[str, ...]:
    return label_names(folder / "meta", f"{label_mode}_label_names", CLASSES[label_mode], "CIFAR-100 meta file")


def _folder_in(path: Path) -> Path | None:
    for candidate in (path / FOLDER, path):
        if (candidate / "train").exists() or (candidate / "test").exists():
            return candidate
    return None


def find_folder(data_dir) -> Path:
    """Where `train`, `test` and `meta` are, by the documented order of sources."""
    folder = given_folder(data_dir, _folder_in, f"no CIFAR-100 here (expected {FOLDER}/ with train, test and meta)")
    if folder is not None:
        return folder
    # Where Keras's own CIFAR-100 loader, and the download below, unpack the archive.
    cached = _folder_in(keras_datasets() / f"{FOLDER}-target")
    if cached is not None and (cached / "test").exists():
        return cached
    from keras.utils import get_file

    try:
        path = get_file(fname=f"{FOLDER}-target", origin=URL, extract=True)
    except Exception as err:
        raise UsageError(f"CIFAR-100 is not here and cannot be downloaded ({err.__class__.__name__}); pass "
                         f"--data-dir DIR with the {FOLDER}/ layout") from None
    folder = _folder_in(Path(path))
    if folder is None:
        raise UsageError(f"{path}: the download holds no {FOLDER}/")
    return folder


def load_cifar100(data_dir=None, label_mode: str = "fine") -> Cifar10:
    """Train and test images with the fine (100) or coarse (20) labels (the same record as
    CIFAR-10's: `prepare` takes either)."""
    folder = find_folder(data_dir)
    x_train, y_train = load_part(folder / "train", label_mode)
    x_test, y_test = load_part(folder / "test", label_mode)
    return Cifar10(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   label_names=_label_names(folder, label_mode), source=str(folder),
                   name=f"CIFAR-100 ({label_mode})")


def write_cifar100(folder: Path, x, fine, coarse, test_x, test_fine, test_coarse) -> Path:
    """Arrays in Keras's layout into `folder/cifar-100-python` (tests make small datasets)."""
    out = Path(folder) / FOLDER
    out.mkdir(parents=True, exist_ok=True)

    def dump(name, images, f, c):
        data = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))
        batch = {b"data": data, b"fine_labels": [int(v) for v in f], b"coarse_labels": [int(v) for v in c]}
        (out / name).write_bytes(pickle.dumps(batch, protocol=2))

    dump("train", x, fine, coarse)
    dump("test", test_x, test_fine, test_coarse)
    meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}
    (out / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return out

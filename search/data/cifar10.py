"""CIFAR-10: find it, load it safely, check it.

Sources, in order: `--data-dir` / $BLOCKSWEEP_DATA_DIR (the official "python version"
layout: a folder holding `cifar-10-batches-py/`, or that folder itself); else Keras's
cache; else Keras's download. The batch files are pickles, read with the restricted
unpickler of `pickles.py`: a pickle asking for anything but a batch's contents is refused
before any of it runs.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search.data.pickles import UnsafePickle, restricted_load
from search.errors import UsageError

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


# --------------------------------------------------------------------------- the dataset


@dataclass(frozen=True)
class Cifar10:
    """The raw dataset: NHWC uint8 images and int labels, in the official order."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    label_names: tuple[str, ...]
    source: str
    name: str = "CIFAR-10"  # the MLflow dataset's name


def _key(batch: dict, name: str):
    for key in (name.encode(), name):
        if key in batch:
            return batch[key]
    raise KeyError(name)


def read_pickled(path: Path, what: str) -> dict:
    """A pickled dict of CIFAR's python layout (`what`: "CIFAR-10 batch", "CIFAR-100 file"),
    read through the restricted unpickler; anything else is one line naming the file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: missing {what} file") from None
    except OSError as err:
        raise UsageError(f"{path}: cannot read ({err.strerror})") from None
    try:
        content = restricted_load(raw)
    except UnsafePickle as err:
        raise UsageError(f"{path}: {err}") from None
    except Exception as err:  # truncated or not a pickle at all
        raise UsageError(f"{path}: not a readable {what} ({err.__class__.__name__}: {err})") from None
    if not isinstance(content, dict):
        raise UsageError(f"{path}: not a {what} (a {type(content).__name__}, expected a dict)")
    return content


def images_and_labels(path: Path, content: dict, labels_key: str, classes: int,
                      what: str) -> tuple[np.ndarray, np.ndarray]:
    """The checked (images NHWC uint8, labels int64) of one read file: `data` rows of 3,072
    bytes, and `labels_key` holding an integer 0..classes-1 per image."""
    try:
        data, labels = _key(content, "data"), _key(content, labels_key)
    except KeyError as err:
        raise UsageError(f"{path}: not a {what} (no {err.args[0]!r} entry)") from None
    try:
        data, labels = np.asarray(data), np.asarray(labels)
    except ValueError:  # ragged lists: no array shape at all
        raise UsageError(f"{path}: not a {what} (ragged data or labels)") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UsageError(f"{path}: images have shape {data.shape} and dtype {data.dtype}, "
                         "expected (N, 3072) uint8")
    _check_labels(path, labels, data.shape[0], classes)
    # Stored channel-first (3 planes of 32x32); Keras wants NHWC.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (images NHWC uint8, labels int64), checked."""
    what = "CIFAR-10 batch"
    return images_and_labels(path, read_pickled(path, what), "labels", NUM_CLASSES, what)


def _check_labels(path: Path, labels: np.ndarray, images: int, classes: int) -> None:
    """Labels are integers 0..classes-1, one per image. Anything else is refused here, naming
    the file: cast to int64 on the way to the model, a NaN or 3.7 would silently become some
    class (NumPy only warns), and byte strings would fail deep inside training."""
    top = classes - 1
    if labels.shape != (images,):
        raise UsageError(f"{path}: {labels.size} labels for {images} images")
    if not labels.size:
        return
    if labels.dtype == object or not (np.issubdtype(labels.dtype, np.integer) or
                                      np.issubdtype(labels.dtype, np.floating)):
        sample = labels.ravel()[0]
        sample = sample.item() if isinstance(sample, np.generic) else sample  # b'cat', not np.bytes_(b'cat')
        raise UsageError(f"{path}: labels must be integers 0..{top}, found {type(sample).__name__} values "
                         f"(e.g. {sample!r:.40})")
    if np.issubdtype(labels.dtype, np.floating):
        bad = labels[~np.isfinite(labels) | (labels != np.round(labels))]
        if bad.size:
            raise UsageError(f"{path}: labels must be integers 0..{top}, found {bad.size} that are not "
                             f"(e.g. {bad[0].item()!r})")
    low, high = labels.min(), labels.max()
    if low < 0 or high > top:
        raise UsageError(f"{path}: labels outside 0..{top} (found {low:g}..{high:g})")


def _read_label_names(folder: Path) -> tuple[str, ...]:
    path = folder / META
    if not path.exists():
        return LABEL_NAMES
    return label_names(path, "label_names", NUM_CLASSES, "CIFAR-10 meta file")


def label_names(path: Path, key: str, count: int, what: str) -> tuple[str, ...]:
    """The `count` class names stored under `key` in the pickled meta file `path`; anything
    unreadable is one line naming the file."""
    try:
        meta = restricted_load(path.read_bytes())
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in _key(meta, key))
    except Exception as err:  # missing, not a pickle, a refused global, no such key, not a list
        raise UsageError(f"{path}: not a readable {what} ({err.__class__.__name__}: {str(err)[:120]})") from None
    if len(names) != count:
        raise UsageError(f"{path}: {len(names)} {key.replace('_', ' ')}, expected {count}")
    return names


def _batches_folder(path: Path) -> Path | None:
    for candidate in (path / FOLDER, path):
        if (candidate / TEST_BATCH).exists() or (candidate / TRAIN_BATCHES[0]).exists():
            return candidate
    return None


def keras_datasets() -> Path:
    """Where Keras's `get_file` keeps datasets ($KERAS_HOME, by default ~/.keras)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"


def keras_cache_folder() -> Path:
    """Where Keras's own CIFAR-10 loader (and `_download`) unpack the batches."""
    return keras_datasets() / "cifar-10-batches-py-target" / FOLDER


def given_folder(data_dir, find, expected: str) -> Path | None:
    """The data folder that --data-dir (or $BLOCKSWEEP_DATA_DIR) names, as `find(path)` locates
    it there; None when neither is given. A folder that is not there is one line."""
    given = data_dir or os.environ.get("BLOCKSWEEP_DATA_DIR")
    if not given:
        return None
    path = Path(given)
    flag = "--data-dir" if data_dir else "$BLOCKSWEEP_DATA_DIR"
    if not path.is_dir():
        raise UsageError(f"{flag} {path}: no such directory")
    folder = find(path)
    if folder is None:
        raise UsageError(f"{flag} {path}: {expected}")
    return folder


def find_folder(data_dir: str | os.PathLike | None) -> Path:
    """Where the batch files are, by the documented order of sources."""
    folder = given_folder(data_dir, _batches_folder,
                          f"no CIFAR-10 batches here (expected {FOLDER}/ with data_batch_1..5 and test_batch)")
    if folder is not None:
        return folder
    cached = keras_cache_folder()
    if (cached / TEST_BATCH).exists():
        return cached
    return _download()


def _download() -> Path:
    """Keras's download into its cache (then read with our own loader, not Keras's
    unrestricted one). Without a network this fails with the way out."""
    from keras.utils import get_file

    try:
        path = get_file(fname="cifar-10-batches-py-target", origin=URL, extract=True)
    except Exception as err:
        raise UsageError(
            f"CIFAR-10 is not here and cannot be downloaded ({err.__class__.__name__}); "
            "pass --data-dir DIR with the cifar-10-batches-py/ layout (unpack "
            f"{URL.rsplit('/', 1)[-1]}, fetched where there is a network, into DIR)"
        ) from None
    folder = _batches_folder(Path(path))
    if folder is None:
        raise UsageError(f"{path}: the download holds no {FOLDER}/")
    return folder


def load_cifar10(data_dir: str | os.PathLike | None = None) -> Cifar10:
    """Load and check all six batches."""
    folder = find_folder(data_dir)
    train = [load_batch(folder / name) for name in TRAIN_BATCHES]
    x_test, y_test = load_batch(folder / TEST_BATCH)
    return Cifar10(
        x_train=np.concatenate([x for x, _ in train]),
        y_train=np.concatenate([y for _, y in train]),
        x_test=x_test,
        y_test=y_test,
        label_names=_read_label_names(folder),
        source=str(folder),
    )


def write_batches(folder: Path, x: np.ndarray, y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                  label_names: tuple[str, ...] | None = None) -> Path:
    """Write arrays in the official layout (five training batches, a test batch, the meta
    file) into `folder/cifar-10-batches-py`. Used by tests and benchmarks to make small,
    real-shaped datasets."""
    out = Path(folder) / FOLDER
    out.mkdir(parents=True, exist_ok=True)

    def dump(name, images, labels):
        data = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels], b"data": data,
                 b"filenames": [f"{i:05d}.png".encode() for i in range(len(images))]}
        (out / name).write_bytes(pickle.dumps(batch, protocol=2))

    for i, (xs, ys) in enumerate(zip(np.array_split(x, 5), np.array_split(y, 5)), start=1):
        dump(f"data_batch_{i}", xs, ys)
    dump(TEST_BATCH, test_x, test_y)
    names = label_names or LABEL_NAMES
    meta = {b"num_cases_per_batch": len(x) // 5, b"label_names": [n.encode() for n in names], b"num_vis": 3072}
    (out / META).write_bytes(pickle.dumps(meta, protocol=2))
    return out

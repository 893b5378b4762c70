"""The local store: one folder, `mlruns/` under the working directory, for everything
Blocksweep records on this machine when no server is named.

    mlruns/mlflow.db        MLflow's tracking database (search/tracking/tracker.py)
    mlruns/artifacts/       run artifacts (search/tracking/tracker.py)
    mlruns/optuna.db        Optuna's studies (search/engines/optuna_engine.py)
    mlruns/kerastuner/      Keras Tuner projects, one folder per study (search/engines/kerastuner_engine.py)
    mlruns/xla_cache/       XLA's compiled programs for the fused JAX trainer (search/training/airbench/fused.py)
    mlruns/embeddings/      cached ResNet embeddings, one .npz per key (search/training/transfer.py)
    mlruns/images/          folders of images decoded once, and their recorded test splits (search/data/folders.py)
    mlruns/pretrained/      source-task models pre-trained for transfer, one folder per key
                            (search/training/weights.py)

Caches are plain files named by a hash of everything that determines their contents, so a
stale entry is never read (a changed input gives a new key) and deleting any of them is safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

STORE = Path("mlruns")
MLFLOW_DB = "mlflow.db"
OPTUNA_DB = "optuna.db"
ARTIFACTS = "artifacts"


def mlflow_url() -> str:
    """The embedded MLflow store: sqlite:///<abs>/mlruns/mlflow.db."""
    return f"sqlite:///{(STORE / MLFLOW_DB).resolve()}"


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI when set, else the embedded store (sqlite:///<abs>/mlruns/mlflow.db)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or mlflow_url()


def optuna_url() -> str:
    """The embedded study storage: sqlite:///<abs>/mlruns/optuna.db. Naming it creates
    nothing: the folder is made when the storage is first opened (under its schema lock,
    `urls.exclusive`), so a command refused before that leaves no mlruns/ behind."""
    return f"sqlite:///{(STORE / OPTUNA_DB).resolve()}"


def artifacts_dir() -> Path:
    """Where artifacts of the embedded store live: mlruns/artifacts/<experiment>/."""
    return (STORE / ARTIFACTS).resolve()


def cache_dir(name: str) -> Path:
    """`mlruns/<name>/`, created on first use."""
    path = STORE / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def cannot_create(path: Path) -> str | None:
    """Why the folder `path` cannot be created (or used), or None when it can: checked
    before anything is written, so that a command refused for it leaves nothing behind.
    The nearest existing ancestor must be a writable folder, not a file."""
    path = Path(path).absolute()
    for ancestor in (path, *path.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                return f"{ancestor} is a file, not a folder"
            if ancestor != path and not os.access(ancestor, os.W_OK | os.X_OK):
                return f"{ancestor} is not writable"
            return None
    return None


@contextlib.contextmanager
def locked(path: Path):
    """Hold an exclusive lock on `<path>.lock` while one process fills a cache entry, so
    parallel workers wait for it instead of computing the same thing twice."""
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def replace_atomically(tmp: Path, final: Path) -> None:
    """Publish a finished cache file in one step: readers see all of it or none of it."""
    os.replace(tmp, final)


# --------------------------------------------------------------------------- cache keys


def key_of(fields: dict) -> str:
    """A cache key: the hash of everything that determines a cache entry's contents."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:24]


def digest_arrays(arrays) -> str:
    """SHA-256 of arrays' shapes, dtypes and bytes: the identity of weights or of a data
    split. Hashes ~0.5-1 GB/s on the 2-core CPU (ResNet50's 94 MB of weights: ~0.15 s)."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        if a.size:  # memoryview cannot cast an empty array's view (its shape holds a zero)
            h.update(memoryview(a).cast("B"))
    return h.hexdigest()


_SPLITS_DIGESTS: dict[int, tuple] = {}


def splits_digest(splits) -> str:
    """The identity of a data split (every image and label of train, val and test),
    remembered per Splits object: a sweep hands the same object to every trial."""
    import hashlib
    import weakref

    entry = _SPLITS_DIGESTS.get(id(splits))
    if entry is not None and entry[0]() is splits:
        return entry[1]
    if getattr(splits, "streamed", False):  # file lists (search/data/splits.py: StreamedImages)
        parts = [splits.x_train.digest(), splits.x_val.digest(), splits.x_test.digest(),
                 digest_arrays([splits.y_train, splits.y_val, splits.y_test])]
        digest = hashlib.sha256("".join(parts).encode()).hexdigest()
    else:
        digest = digest_arrays([splits.x_train, splits.y_train, splits.x_val, splits.y_val,
                                splits.x_test, splits.y_test])
    _SPLITS_DIGESTS.clear()  # one split at a time is what sweeps use; keep memory flat
    _SPLITS_DIGESTS[id(splits)] = (weakref.ref(splits), digest)
    return digest

"""Choose the Keras backend before Keras is first imported.

Measured on the 2-core development CPU, a small VGG trains at 800-1,000 img/s on
TensorFlow, 330-390 on JAX and 500-560 on torch; on an H100, ~195-250k img/s on JAX and
~19k on Keras's torch backend, and the GPU image has no TensorFlow. Hence `auto`: JAX when
JAX sees a GPU, else TensorFlow, else whatever is installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

from search.errors import UsageError

BACKENDS = ("tensorflow", "jax", "torch")
CHOICES = ("auto",) + BACKENDS

# Quiet TensorFlow's C++ start-up logs (oneDNN banner, 'failed call to cuInit' on CPU-only
# machines) unless the user asked; real failures still raise Python exceptions.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _jax_has_gpu() -> bool:
    if not _installed("jax"):
        return False
    import jax

    try:
        return any(d.platform == "gpu" for d in jax.devices())
    except RuntimeError:
        return False


def resolve(requested: str | None) -> str:
    """Turn `auto` (or None: $KERAS_BACKEND, then auto) into an installed backend name."""
    requested = requested or os.environ.get("KERAS_BACKEND") or "auto"
    if requested not in CHOICES:
        raise UsageError(f"--backend: unknown backend {requested!r}; choose one of {', '.join(CHOICES)}")
    if requested != "auto":
        if not _installed(requested):
            raise UsageError(f"--backend {requested}: the package {requested!r} is not installed")
        return requested
    if _jax_has_gpu():
        return "jax"
    for name in BACKENDS:
        if _installed(name):
            return name
    raise UsageError("no Keras backend is installed: pip install 'blocksweep[tensorflow]' or '[jax]'")


def select(requested: str | None) -> str:
    """Resolve and set the backend for this process; fails if Keras already runs another."""
    name = resolve(requested)
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != name:
            raise UsageError(
                f"Keras was already imported with the {keras.backend.backend()!r} backend; "
                f"cannot switch to {name!r} in the same process"
            )
    os.environ["KERAS_BACKEND"] = name
    if name == "tensorflow":
        with _native_stderr_silenced():
            import keras  # noqa: F401 - imports TensorFlow, whose C++ start-up lines go nowhere
    else:
        _hide_tensorflow_from_keras()
    return name


@contextlib.contextmanager
def _native_stderr_silenced():
    """TensorFlow 2.21 writes six C++ log lines to file descriptor 2 while it is imported
    (oneDNN, 'Could not find cuda drivers'), before absl reads TF_CPP_MIN_LOG_LEVEL, so
    bad input found after the import would print seven lines instead of one. Point fd 2 at
    /dev/null for the import only; Python exceptions still propagate normally."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _hide_tensorflow_from_keras() -> None:
    """Keras imports TensorFlow whenever it is installed, whatever the backend: to seed
    tf.data in `set_random_seed` and to recognise tf.TensorShape when saving a model. On
    the JAX and torch backends that import costs seconds and memory, and the GPU image has
    no TensorFlow, so tell Keras's lazy `tf` handle that it is absent (private attribute;
    tests/test_backend_jax.py catches any import attempt if Keras changes)."""
    import keras  # noqa: F401 - the backend is set above, before this first import
    from keras.src.utils import module_utils

    module_utils.tensorflow._available = False

def device_kind() -> str:
    """'gpu' or 'cpu' for the current backend (used for tags and mixed precision)."""
    import keras

    name = keras.backend.backend()
    if name == "jax":
        import jax

        return "gpu" if any(d.platform == "gpu" for d in jax.devices()) else "cpu"
    if name == "tensorflow":
        import tensorflow as tf

        return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
    if name == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    return "cpu"

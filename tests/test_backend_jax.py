"""The JAX backend never touches TensorFlow: the GPU image has no TensorFlow at all."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import run_cli

BLOCK_TENSORFLOW = '''\
import sys

class BlockTensorFlow:
    """Make `import tensorflow` fail, as on a machine without it."""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError(f"blocked for this test: {name}")
        return None

sys.meta_path.insert(0, BlockTensorFlow())
'''


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_train_runs_under_jax_with_tensorflow_unimportable(workdir, write_space, tiny_cifar, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_TENSORFLOW)
    space = write_space()
    result = run_cli(["train", space, "--backend", "jax", "--data-dir", tiny_cifar, "--quiet", "--json",
                      "--set", "train.epochs=1"], cwd=workdir, timeout=400,
                     PYTHONPATH_EXTRA=blocker, KERAS_BACKEND="jax")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["backend"] == "jax" and summary["state"] == "completed"
    # The blocker really was active in that process:
    check = run_cli(["train", space, "--backend", "tensorflow", "--data-dir", tiny_cifar, "--quiet"],
                    cwd=workdir, PYTHONPATH_EXTRA=blocker, KERAS_BACKEND="tensorflow")
    assert check.returncode != 0 and "blocked for this test" in check.stderr

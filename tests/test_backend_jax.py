"""Backends other than TensorFlow never import it: the GPU image has no TensorFlow at all,
and on machines that have it, a JAX or torch run must not pay for (or depend on) it."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import run_cli

# sitecustomize for the child process: every attempt to import tensorflow is written to a
# file, then refused, as on a machine without it.
TRIPWIRE = '''\
import builtins, importlib, os, sys

LOG = os.environ["TF_TRIPWIRE_LOG"]


def _attempt(name):
    if name.split(".")[0] == "tensorflow":
        with open(LOG, "a") as f:
            f.write(name + "\\n")
        raise ImportError(f"blocked for this test: {name}")


_import = builtins.__import__
def _guarded_import(name, *args, **kwargs):
    _attempt(name)
    return _import(name, *args, **kwargs)
builtins.__import__ = _guarded_import

_import_module = importlib.import_module
def _guarded_import_module(name, package=None):
    _attempt(name)
    return _import_module(name, package)
importlib.import_module = _guarded_import_module
'''


def tripwire(tmp_path):
    folder = tmp_path / "tripwire"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(TRIPWIRE)
    return folder, tmp_path / "tensorflow-imports.log"


def train(backend_name, workdir, space, data, tmp_path):
    folder, log = tripwire(tmp_path)
    result = run_cli(["train", space, "--backend", backend_name, "--data-dir", data, "--quiet", "--json",
                      "--set", "train.epochs=1"], cwd=workdir, timeout=400,
                     PYTHONPATH_EXTRA=folder, KERAS_BACKEND=backend_name, TF_TRIPWIRE_LOG=log)
    attempts = log.read_text().split() if log.exists() else []
    return result, attempts


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_train_under_jax_never_imports_tensorflow(workdir, write_space, tiny_cifar, tmp_path):
    result, attempts = train("jax", workdir, write_space(), tiny_cifar, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert attempts == []
    summary = json.loads(result.stdout)
    assert summary["backend"] == "jax" and summary["state"] == "completed"


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_train_under_torch_never_imports_tensorflow(workdir, write_space, tiny_cifar, tmp_path):
    result, attempts = train("torch", workdir, write_space(), tiny_cifar, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert attempts == []
    assert json.loads(result.stdout)["backend"] == "torch"


def test_the_tripwire_catches_a_tensorflow_run(workdir, write_space, tiny_cifar, tmp_path):
    result, attempts = train("tensorflow", workdir, write_space(), tiny_cifar, tmp_path)
    assert result.returncode != 0 and "blocked for this test" in result.stderr
    assert attempts and attempts[0].startswith("tensorflow")

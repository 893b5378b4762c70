"""Shared fixtures: tiny real-shaped datasets, a fresh embedded store per test, space files,
and a way to run the real command line in a fresh process.

The test process trains with the TensorFlow backend (fastest on CPU) unless
$KERAS_BACKEND says otherwise; JAX runs in its own subprocess test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from search import backend  # noqa: E402

backend.select(os.environ["KERAS_BACKEND"])

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "datasets" / "cifar10"


def synthetic_cifar(n_train: int, n_test: int, seed: int = 0):
    """Real-shaped CIFAR-10 stand-in that a tiny network learns in an epoch or two: each
    class is a fixed low-resolution colour pattern plus pixel noise."""
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, size=(10, 4, 4, 3)).astype(np.float32)
    templates = templates.repeat(8, axis=1).repeat(8, axis=2)  # 4x4 -> 32x32 blocks

    def draw(n):
        labels = rng.permutation(np.arange(n) % 10)
        noise = rng.normal(0, 40, size=(n, 32, 32, 3))
        images = np.clip(templates[labels] * 0.7 + 40 + noise, 0, 255).astype(np.uint8)
        return images, labels

    (x, y), (tx, ty) = draw(n_train), draw(n_test)
    return x, y, tx, ty


# Under CI a skip is a failure, except the deliberate ones (tests/require_all.py).
from tests.require_all import pytest_runtest_makereport  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state."""
    import random

    random.seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory) -> Path:
    """A data dir in the official layout: 1,000 training and 200 test images."""
    from search.data import write_batches

    root = tmp_path_factory.mktemp("tiny_cifar")
    write_batches(root, *synthetic_cifar(1000, 200))
    return root


@pytest.fixture(scope="session")
def real_cifar(tmp_path_factory) -> Path:
    """The real CIFAR-10, materialised from ../shared (skipped when it is absent)."""
    tool = SHARED_CIFAR / "materialize"
    if not tool.exists():
        pytest.skip(f"real CIFAR-10 not available ({SHARED_CIFAR} is absent)")
    root = tmp_path_factory.mktemp("cifar")
    subprocess.run([sys.executable, str(tool), str(root)], check=True, capture_output=True)
    return root


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory) -> Path:
    """One migrated MLflow SQLite database, copied into each test's store: creating a
    fresh one runs every schema migration (seconds)."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def workdir(tmp_path, monkeypatch, _mlflow_template) -> Path:
    """A fresh project directory as cwd, with an empty embedded store in mlruns/."""
    (tmp_path / "mlruns").mkdir()
    shutil.copy(_mlflow_template, tmp_path / "mlruns" / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("BLOCKSWEEP_DATA_DIR", raising=False)
    return tmp_path


@pytest.fixture
def tracking_uri(workdir) -> str:
    return f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"


TINY_SPACE = """\
name: tiny
model:
  family: vgg
  blocks: 1
  filters: 4
  dense_units: 16
  dropout: 0.0
  head_dropout: 0.0
data:
  train_size: 300
  val_size: 100
  test_size: 100
  augment: {flip: false, translate: 0}
train:
  epochs: 2
  batch_size: 50
  learning_rate: 0.05
  loss_window: 2
search:
  trials: 4
  sampler: random
  pruner: none
params:
  model.block:
    type: categorical
    choices: [conv-bn-conv-pool-drop, conv-drop-conv-drop-pool]
  model.inner_dropout: {type: float, low: 0.0, high: 0.2, when: {model.block: [conv-drop-conv-drop-pool]}}
  train.learning_rate: {type: float, low: 0.01, high: 0.1, log: true}
"""


@pytest.fixture
def write_space(workdir):
    """write_space(text=TINY_SPACE, name='tiny.yaml') -> path of a space file in workdir."""

    def write(text: str = TINY_SPACE, name: str = "tiny.yaml") -> Path:
        path = workdir / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


def cli_env(**extra) -> dict:
    """Environment for a fresh `python -m search` process that runs this checkout."""
    env = dict(os.environ)
    first = [str(extra.pop("PYTHONPATH_EXTRA"))] if "PYTHONPATH_EXTRA" in extra else []
    env["PYTHONPATH"] = os.pathsep.join(first + [str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_cli(args: list[str], cwd: Path, timeout: float = 240, **env) -> subprocess.CompletedProcess:
    """Run `blocksweep ARGS` in a fresh process (python -m search) and wait for it."""
    return subprocess.run([sys.executable, "-m", "search", *map(str, args)], cwd=cwd, env=cli_env(**env),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli(workdir):
    """Run the command line in-process (fast: Keras is already imported); returns the
    exit code (read the output with pytest's capsys)."""

    def call(*args):
        from search.cli import main

        return main([str(a) for a in args])

    return call


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory, tiny_cifar, _mlflow_template):
    """A finished Optuna sweep of TINY_SPACE (4 trials, every model kept) in a store of its
    own, shared by the compare and export tests (they add runs and artifacts beside the
    trials, never change them). Namespace: root, tracking_uri, storage, study, data."""
    from types import SimpleNamespace

    from search.cli import main

    root = tmp_path_factory.mktemp("tiny_sweep")
    (root / "mlruns").mkdir()
    shutil.copy(_mlflow_template, root / "mlruns" / "mlflow.db")
    (root / "tiny.yaml").write_text(TINY_SPACE)
    sweep = SimpleNamespace(root=root, tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
                            storage=f"sqlite:///{root / 'mlruns' / 'optuna.db'}", study="shared", data=tiny_cifar)
    code = main(["run", str(root / "tiny.yaml"), "--data-dir", str(tiny_cifar), "--trials", "4", "--study", sweep.study,
                 "--seed", "1", "--keep-models", "all", "--tracking-uri", sweep.tracking_uri,
                 "--storage", sweep.storage, "--quiet"])
    assert code == 0
    return sweep

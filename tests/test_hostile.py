"""Hostile and broken input, as an adversary would try it: space files, data batches,
names, images and stores. Each case is refused with one line naming what and where, exit
code 2, and nothing is left behind; none takes more than a few seconds.

In-process throughout (`load_spec`, `load_batch`, the command line's `main`): the
refusals happen before anything heavy runs.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from search.config import load_spec
from search.errors import UsageError

# --------------------------------------------------------------------------- space files

BASE = """\
name: t
model: {family: vgg, blocks: 2}
params:
  train.learning_rate: {type: float, low: 0.001, high: 0.1, log: true}
"""


def refused(tmp_path, text: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        load_spec(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


# (what, text appended to BASE or replacing it, words the one line must hold)
HOSTILE_SPACES = [
    ("duplicate section", BASE + "train: {epochs: 3}\ntrain: {epochs: 50}\n",
     ["s.yaml:6:", "duplicate key 'train'", "line 5"]),
    ("duplicate parameter", BASE + "  train.learning_rate: {type: float, low: 0.01, high: 0.2}\n",
     ["s.yaml:5:", "duplicate key 'train.learning_rate'"]),
    ("string for an integer", BASE + "train: {batch_size: '64'}\n", ["train.batch_size", "valid integer"]),
    ("float for an integer", BASE + "train: {batch_size: 64.0}\n", ["train.batch_size", "valid integer"]),
    ("bool for an integer", BASE + "data: {augment: {translate: true}}\n", ["data.augment.translate", "integer"]),
    ("number for a switch", BASE + "train: {nesterov: 1}\n", ["train.nesterov", "valid boolean"]),
    ("bool for an image side", BASE + "data: {source: {folder: imgs}, image_size: [true, 64]}\n",
     ["data.image_size", "valid integer"]),
    ("string for a fraction", BASE + "data: {source: {folder: imgs}, test_fraction: '0.3'}\n",
     ["data.test_fraction", "valid number"]),
    ("bool for a number", BASE + "train: {learning_rate: true}\n", ["train.learning_rate", "valid number"]),
    ("string for a bound", BASE.replace("low: 0.001", "low: '0.001'"),
     ["params.train.learning_rate.low", "valid number"]),
    ("infinite setting", BASE + "train: {momentum: .inf}\n", ["train.momentum", "finite"]),
    ("NaN setting", BASE + "train: {learning_rate: .nan}\n", ["train.learning_rate", "finite"]),
    ("NaN step", BASE.replace("log: true", "step: .nan"), ["params.train.learning_rate", "finite"]),
    ("epochs that never end", BASE + "train: {epochs: 1e12}\n", ["train.epochs", "less than or equal to 1000"]),
    ("batch beyond CIFAR-10", BASE + "train: {batch_size: 1000000}\n",
     ["train.batch_size", "less than or equal to 50000"]),
    ("batch beyond the training split", BASE + "data: {train_size: 300, val_size: 100}\ntrain: {batch_size: 500}\n",
     ["train.batch_size 500 is larger than the training split", "data.train_size 300"]),
    ("batch beyond the kept classes", BASE + "data: {classes: [0, 1]}\ntrain: {batch_size: 9000}\n",
     ["train.batch_size 9000", "the 5000 training images"]),
    ("trials beyond the cap", BASE + "search: {trials: 1000000}\n", ["search.trials", "less than or equal to 10000"]),
    ("int step that does not divide", BASE + "  model.dense_units: {type: int, low: 16, high: 100, step: 16}\n",
     ["params.model.dense_units", "step 16 does not divide high - low (84)"]),
    ("5000-digit integer", BASE + "train: {seed: " + "9" * 5000 + "}\n", ["s.yaml:5:", "5000 characters", "too long"]),
    ("collections nested too deep", BASE + "description: " + "[" * 200_000 + "]" * 200_000 + "\n",
     ["s.yaml:5:", "nested over 32 deep"]),
    ("too many choices", BASE + "  train.seed: {type: categorical, choices: [" + ", ".join(map(str, range(1001)))
     + "]}\n", ["params.train.seed", "1001 choices; at most 1000"]),
]


@pytest.mark.parametrize("what,text,words", HOSTILE_SPACES, ids=[case[0] for case in HOSTILE_SPACES])
def test_hostile_space_file_is_refused_in_one_line(tmp_path, what, text, words):
    message = refused(tmp_path, text)
    for word in words:
        assert word in message, f"{what}: {word!r} not in {message!r}"


def test_batch_within_the_split_and_whole_floats_still_load(tmp_path):
    """The strict types refuse coercion, not numbers: an integer is a valid float, and a
    batch as large as the training split is fine."""
    path = tmp_path / "s.yaml"
    path.write_text(BASE + "data: {train_size: 300, val_size: 100}\ntrain: {batch_size: 300, momentum: 0}\n")
    spec = load_spec(path)
    assert spec.file.train.batch_size == 300 and spec.file.train.momentum == 0.0


def test_a_folders_batch_is_not_measured_against_cifar10s_split(tmp_path):
    """Only CIFAR-10's split size is known before the data is read: two of its classes less
    9,000 validation images would leave 1,000, but a folder may hold far more."""
    path = tmp_path / "s.yaml"
    path.write_text(BASE + "data: {source: {folder: imgs}, classes: [0, 1], val_size: 9000}\n"
                    "train: {batch_size: 1024}\n")
    assert load_spec(path).file.train.batch_size == 1024


def test_oversized_space_file_is_refused_before_it_is_parsed(tmp_path):
    # Invalid YAML past the limit: a parser would report that, the size check comes first.
    message = refused(tmp_path, BASE + "#" + "x" * 1_000_000 + "\n[")
    assert "a space file is at most 1,000,000 bytes" in message and "YAML" not in message


def test_too_many_parameters_are_refused_before_they_are_validated(tmp_path):
    lines = "".join(f"  train.p{i}: {{type: float, low: 0.0, high: 1.0}}\n" for i in range(1001))
    message = refused(tmp_path, BASE + lines)
    assert "params: 1,002 parameters; a space searches at most 1,000" in message


def test_a_long_chain_of_conditions_loads(tmp_path):
    """1,000 parameters, each conditioned on the one before: the dependency order is an
    iterative walk over sets (the recursive walk over a list was quadratic and hit
    Python's recursion limit), and each candidate is tried on the config sections alone."""
    chain = "".join(f"  model.p{i}: {{type: categorical, choices: [a], when: {{model.p{i - 1}: [a]}}}}\n"
                    for i in range(1, 999))
    path = tmp_path / "s.yaml"
    path.write_text(BASE + "  model.p0: {type: categorical, choices: [a]}\n" + chain)
    with pytest.raises(UsageError) as err:  # model.p* are no VGG settings: refused at the first one tried
        load_spec(path)
    assert "params.model.p0.choices[0]" in str(err.value) and "unknown key" in str(err.value)


# --------------------------------------------------------------------------- data batches


def write_bad_batch(root, batch: str, **entries):
    """A copy of a valid dataset with one batch file's entries replaced."""
    from search.data import write_batches
    from tests.conftest import synthetic_cifar

    folder = write_batches(root, *synthetic_cifar(100, 20))
    good = pickle.loads((folder / batch).read_bytes())
    good.update({k.encode(): v for k, v in entries.items()})
    (folder / batch).write_bytes(pickle.dumps(good, protocol=2))
    return folder


LABELS = [  # (what, the labels of a 20-image batch, words)
    ("NaN", [0.0] * 19 + [float("nan")], ["labels must be integers 0..9", "1 that are not", "nan"]),
    ("fraction", [0.0] * 19 + [3.7], ["labels must be integers 0..9", "3.7"]),
    ("byte strings", [b"cat"] * 20, ["labels must be integers 0..9", "bytes values", "b'cat'"]),
    ("text", ["3"] * 20, ["labels must be integers 0..9", "str values"]),
    ("booleans", [True] * 20, ["labels must be integers 0..9", "bool"]),
    ("out of range", [0] * 19 + [10], ["labels outside 0..9", "0..10"]),
    ("negative", [-1] + [0] * 19, ["labels outside 0..9", "-1..0"]),
    ("ragged", [[1, 2]] + [0] * 19, ["ragged"]),
]


@pytest.mark.parametrize("what,labels,words", LABELS, ids=[case[0] for case in LABELS])
def test_corrupt_labels_are_refused_naming_the_batch_file(tmp_path, what, labels, words):
    from search.data import load_cifar10

    write_bad_batch(tmp_path, "test_batch", labels=labels)
    with pytest.raises(UsageError) as err:
        load_cifar10(tmp_path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "cifar-10-batches-py" / "test_batch"))
    for word in words:
        assert word in message, f"{what}: {word!r} not in {message!r}"


@pytest.mark.parametrize("data,words", [
    (np.zeros((20, 3072), dtype=np.float32), ["dtype float32", "expected (N, 3072) uint8"]),
    (np.zeros((20, 32, 32, 3), dtype=np.uint8), ["shape (20, 32, 32, 3)"]),
    (np.zeros((20, 3071), dtype=np.uint8), ["shape (20, 3071)"]),
], ids=["float-images", "nhwc-images", "short-rows"])
def test_images_of_the_wrong_kind_are_refused_naming_the_batch_file(tmp_path, data, words):
    from search.data import load_cifar10

    write_bad_batch(tmp_path, "data_batch_3", data=data)
    with pytest.raises(UsageError) as err:
        load_cifar10(tmp_path)
    assert str(err.value).startswith(str(tmp_path / "cifar-10-batches-py" / "data_batch_3"))
    for word in words:
        assert word in str(err.value)


def test_whole_float_labels_are_read_as_integers(tmp_path):
    from search.data import load_cifar10

    write_bad_batch(tmp_path, "test_batch", labels=[float(i % 10) for i in range(20)])
    assert load_cifar10(tmp_path).y_test.tolist() == [i % 10 for i in range(20)]


# --------------------------------------------------------------------------- nothing left behind


def listing(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def bare(tmp_path, monkeypatch):
    """An empty working directory (no store in it) with a space file: what a user has
    before their first run."""
    from tests.conftest import TINY_SPACE

    cwd = tmp_path / "project"
    cwd.mkdir()
    (cwd / "tiny.yaml").write_text(TINY_SPACE)
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("BLOCKSWEEP_DATA_DIR", raising=False)
    return cwd


def closed_port() -> int:
    from tests.services import free_port

    return free_port()  # bound and released: nothing listens there


EXIT_2 = [  # (what, command line with {data} and {port}, words of the one line)
    ("no data dir", ["run", "tiny.yaml", "--data-dir", "nowhere"], ["--data-dir nowhere: no such directory"]),
    ("corrupt data", ["run", "tiny.yaml", "--data-dir", "{bad}"], ["test_batch: labels must be integers"]),
    ("corrupt data (train)", ["train", "tiny.yaml", "--data-dir", "{bad}"], ["test_batch: labels must be integers"]),
    ("split larger than the data", ["run", "tiny.yaml", "--data-dir", "{data}", "--set", "data.train_size=1000"],
     ["exceed the 1000 training images"]),
    ("long study name", ["run", "tiny.yaml", "--data-dir", "{data}", "--study", "s" * 300],
     ["--study " + "s" * 20 + "...: 300 characters; at most 200", "255 bytes"]),
    ("long space name", ["run", "tiny.yaml", "--data-dir", "{data}", "--set", "name=" + "s" * 300],
     ["name", "at most 200 characters"]),
    ("too many trials", ["run", "tiny.yaml", "--data-dir", "{data}", "--trials", "100000"],
     ["--trials 100000: must be 1 to 10,000"]),
    ("unreachable tracking server", ["run", "tiny.yaml", "--data-dir", "{data}", "--tracking-uri",
                                     "http://127.0.0.1:{port}"],
     ["--tracking-uri http://127.0.0.1:", "no MLflow server"]),
    ("unreachable tracking server (train)", ["train", "tiny.yaml", "--data-dir", "{data}", "--tracking-uri",
                                             "http://127.0.0.1:{port}"], ["no MLflow server answers"]),
    ("unreachable study storage", ["run", "tiny.yaml", "--data-dir", "{data}", "--storage",
                                   "postgresql://nobody@127.0.0.1:{port}/none"],
     ["--storage postgresql://nobody@127.0.0.1:", "cannot open the study storage"]),
    ("tracking store under a file", ["run", "tiny.yaml", "--data-dir", "{data}", "--tracking-uri",
                                     "sqlite:///{cwd}/tiny.yaml/mlflow.db"], ["tiny.yaml is a file, not a folder"]),
    ("grid over a continuous range", ["run", "tiny.yaml", "--data-dir", "{data}", "--sampler", "grid"],
     ["grid"]),
    ("Keras Tuner's hyperband searching epochs", ["run", "tiny.yaml", "--data-dir", "{data}", "--engine",
                                                  "kerastuner", "--tuner", "hyperband", "--set", "search.trials=2"],
     ["hyperband"]),
]


@pytest.mark.parametrize("what,argv,words", EXIT_2, ids=[case[0] for case in EXIT_2])
def test_exit_2_leaves_nothing_behind(bare, capsys, tiny_cifar, tmp_path_factory, what, argv, words):
    """Each exit-2 path of `run` and `train`, in a fresh project directory: one line, and
    the directory's listing is what it was (no mlruns/, no mlflow.db, no optuna.db)."""
    from search.cli import main

    if what.startswith("Keras Tuner"):  # searching epochs is what its hyperband refuses
        space = bare / "tiny.yaml"
        space.write_text(space.read_text() + "  train.epochs: {type: int, low: 1, high: 2}\n")
    bad = tmp_path_factory.mktemp("bad_data")
    write_bad_batch(bad, "test_batch", labels=[0.5] * 20)
    before = listing(bare)
    argv = [a.format(data=tiny_cifar, bad=bad, port=closed_port(), cwd=bare) for a in argv]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("blocksweep: error: "), err
    for word in words:
        assert word in err, f"{what}: {word!r} not in {err!r}"
    assert listing(bare) == before


def test_ui_refuses_a_database_that_does_not_answer_in_seconds(bare, capsys):
    """MLflow's server would retry a dead database for minutes before exiting."""
    from search.cli import main

    url = f"postgresql://nobody@127.0.0.1:{closed_port()}/none"
    assert main(["ui", "--backend-store-uri", url, "--port", str(closed_port())]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot open the MLflow store" in err and "Connection refused" in err
    assert listing(bare) == {"tiny.yaml"}


@pytest.mark.postgres
def test_ui_refuses_a_database_that_does_not_exist(bare, capsys):
    from search.cli import main
    from tests.services import PG, postgres_or_skip

    postgres_or_skip()
    assert main(["ui", "--backend-store-uri", f"{PG}/no_such_database_here", "--port", str(closed_port())]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'database "no_such_database_here" does not exist' in err


def test_a_server_that_is_not_mlflow_is_refused(bare, capsys):
    """Something answers, but not MLflow's health check (404): refused, not retried."""
    import http.server
    import threading

    from search.cli import main

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):  # the test reads stderr: keep the server's log off it
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert main(["train", "tiny.yaml", "--tracking-uri", url, "--data-dir", "nowhere"]) == 2
    finally:
        server.shutdown()
    err = capsys.readouterr().err.strip()
    assert f"GET {url}/health answered HTTP 404" in err and len(err.splitlines()) == 1


# --------------------------------------------------------------------------- export


def test_export_under_a_file_is_one_line_before_anything_is_read(tiny_sweep, tmp_path, capsys):
    from search.cli import main

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["export", "--study", tiny_sweep.study, "--tracking-uri", tiny_sweep.tracking_uri,
                 "--out", str(blocker / "export")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"blocksweep: error: --out {blocker / 'export'}: cannot create it ({blocker} is a file, not a folder)"


# --------------------------------------------------------------------------- CI: no silent skips


def test_under_ci_a_skip_fails_unless_it_is_deliberate(tmp_path):
    """A pytest run with BLOCKSWEEP_REQUIRE_ALL=1 and this suite's conftest hook: a skip for
    a missing tool fails; the deliberate kinds (docker inputs unchanged) still skip."""
    import subprocess
    import sys

    from tests.conftest import cli_env

    (tmp_path / "conftest.py").write_text("from tests.require_all import pytest_runtest_makereport  # noqa: F401\n")
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n\n"
        "def test_missing_tool():\n    pytest.skip('chromium is not installed')\n\n"
        "@pytest.mark.skipif(True, reason='jax is not installed')\ndef test_missing_package():\n    pass\n\n"
        "def test_unchanged():\n    pytest.skip('unchanged: docker is as when this test last passed')\n\n"
        "@pytest.mark.xfail(reason='known')\ndef test_known():\n    assert False\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q", "-rfs",
                          str(tmp_path)], cwd=tmp_path, env=cli_env(BLOCKSWEEP_REQUIRE_ALL="1"),
                         capture_output=True, text=True, timeout=120)
    # A skip in the call fails the test; one in its setup (skipif, a fixture) is an error.
    assert "1 failed, 1 skipped, 1 xfailed, 1 error" in run.stdout and run.returncode == 1, run.stdout[-2000:]
    assert "would have skipped (chromium is not installed)" in run.stdout
    assert "would have skipped (jax is not installed)" in run.stdout

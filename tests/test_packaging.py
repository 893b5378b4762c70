"""Packaging: what a wheel ships and declares (py.typed, the license, the extras), that
every library the package imports is declared, that a missing extra is one line naming it,
and that the space files' JSON Schema is the records' and checks the shipped spaces."""

from __future__ import annotations

import ast
import configparser
import json
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO

SETUP = configparser.ConfigParser()
SETUP.read(REPO / "setup.cfg")
# Libraries imported from an extra: only inside functions, or in a module that only that
# extra's path loads, so the core install imports every other module.
EXTRA_MODULES = {"tensorflow", "jax", "torch", "psycopg", "psycopg2", "cmaes", "tf2onnx", "onnx", "onnxruntime",
                 "optuna_dashboard", "pynvml"}
LOADED_ONLY_UNDER_THEIR_BACKEND = {"search/training/airbench/fused.py",  # the fused trainer: the JAX backend's own path
                                    "search/training/airbench/tensorflow_path.py"}  # TensorFlow's compiled step
# Imported directly but declared by the library that needs it: Keras Tuner's distributed
# mode runs on grpcio, which keras-tuner itself requires.
BROUGHT_BY = {"grpcio": "keras-tuner"}
PG = "postgresql://postgres@127.0.0.1:5432/no_such_database"


def requirement_names(lines: str) -> set[str]:
    import re

    return {re.split(r"[<>=\[ ;]", line.strip(), maxsplit=1)[0].lower()
            for line in lines.splitlines() if line.strip() and not line.strip().startswith("#")}


def declared() -> tuple[set[str], dict[str, set[str]]]:
    extras = {name: requirement_names(value) for name, value in SETUP["options.extras_require"].items()}
    return requirement_names(SETUP["options"]["install_requires"]), extras


def test_the_core_install_leaves_postgres_and_cmaes_to_extras_and_declares_plotly_and_psutil():
    core, extras = declared()
    assert {"plotly", "psutil"} <= core  # compare's figures; MLflow's system-metrics monitor needs psutil
    assert not core & {"psycopg", "psycopg2-binary", "cmaes"}
    assert extras["postgres"] == {"psycopg", "psycopg2-binary"} and extras["cmaes"] == {"cmaes"}
    assert "blocksweep" in extras["test"] and "postgres" in SETUP["options.extras_require"]["test"]
    assert "nvidia-ml-py" in extras["jax-cuda"]  # GPU metrics on the GPU workers


# Modules a kept MLflow model carries in its own code/ folder (search/tracking/pyfunc_model.py),
# imported by the model's loader, not installed from any distribution.
SHIPPED_IN_THE_MODEL = ("blocksweep_layers",)


def test_every_library_the_package_imports_is_declared():
    core, extras = declared()
    everything = core | set().union(*extras.values())
    distributions = packages_distributions()
    undeclared, top_level = {}, []
    for path in sorted((REPO / "search").rglob("*.py")):
        tree = ast.parse(path.read_text())
        module_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("search", *SHIPPED_IN_THE_MODEL):
                    continue
                dists = {d.lower() for d in distributions.get(top, [top])}
                if not dists & everything and not any(BROUGHT_BY.get(d) in everything for d in dists):
                    undeclared.setdefault(top, path.relative_to(REPO))
                relative = str(path.relative_to(REPO))
                own_path = relative in LOADED_ONLY_UNDER_THEIR_BACKEND
                if top in EXTRA_MODULES and id(node) in module_level and not own_path:
                    top_level.append(f"{relative}: {name}")
    assert not undeclared, f"imported but in no requirement of setup.cfg: {undeclared}"
    assert not top_level, f"an extra's library imported at module level: {top_level}"


def test_the_wheel_ships_py_typed_and_the_license(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(REPO / "search", source / "search", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=240)
    (wheel,) = (tmp_path / "dist").glob("blocksweep-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        text = archive.read(license_file).decode()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "search/py.typed" in names and "search/version.py" in names
    assert text.startswith("MIT License") and "Copyright (c) 2026 Blocksweep contributors" in text
    assert "License: MIT" in metadata and "Provides-Extra: postgres" in metadata
    assert 'Requires-Dist: psycopg[binary]>=3.1; extra == "postgres"' in metadata
    assert not [line for line in metadata.splitlines() if line.startswith("Requires-Dist: psycopg") and
                "extra ==" not in line]


# --------------------------------------------------------------------------- missing extras


@pytest.fixture
def without_postgres_drivers(monkeypatch):
    """The core install: neither PostgreSQL driver can be imported (None in sys.modules
    makes `import psycopg` fail as an absent package does)."""
    for module in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, module, None)


@pytest.mark.parametrize("command", [
    ["run", "{space}", "--storage", PG],
    ["run", "{space}", "--tracking-uri", PG],
    ["train", "{space}", "--tracking-uri", PG],
    ["compare", "--storage", PG],
    ["ui", "--backend-store-uri", PG],
    ["ui", "--dashboard", "--storage", PG],
], ids=["run-storage", "run-tracking", "train-tracking", "compare-storage", "ui-store", "ui-dashboard"])
def test_a_postgresql_url_without_its_driver_is_one_line_naming_the_extra(
        command, cli, capsys, workdir, write_space, tiny_cifar, tracking_uri, without_postgres_drivers):
    space = write_space()
    args = [a.format(space=space) for a in command]
    if args[0] in ("run", "train"):
        args += ["--data-dir", str(tiny_cifar), "--quiet"]
    before = [e.name for e in MlflowClient(tracking_uri).search_experiments()]
    assert cli(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    flag = args[args.index(PG) - 1]
    assert err == [f"blocksweep: error: {flag} {PG}: the postgresql driver 'psycopg' is not installed; "
                   "pip install 'blocksweep[postgres]'"]
    assert [e.name for e in MlflowClient(tracking_uri).search_experiments()] == before  # nothing created
    assert not (workdir / "mlruns" / "optuna.db").exists()


def test_the_cmaes_sampler_without_cmaes_is_one_line_naming_the_extra(cli, capsys, workdir, write_space,
                                                                       tiny_cifar, tracking_uri, monkeypatch):
    monkeypatch.setitem(sys.modules, "cmaes", None)
    assert cli("run", write_space(), "--data-dir", tiny_cifar, "--sampler", "cmaes", "--quiet") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["blocksweep: error: --sampler cmaes needs the 'cmaes' package: pip install 'blocksweep[cmaes]'"]
    assert MlflowClient(tracking_uri).get_experiment_by_name("tiny") is None


# --------------------------------------------------------------------------- the space files' schema


def test_the_shipped_schema_is_the_records_and_every_shipped_space_names_it(cli, capsys):
    from search.config.spec import space_schema

    shipped = (REPO / "spaces" / "space.schema.json").read_text()
    assert shipped == json.dumps(space_schema(), indent=2) + "\n", "rerun: blocksweep schema --out spaces/space.schema.json"
    assert cli("schema") == 0 and capsys.readouterr().out == shipped
    for space in sorted((REPO / "spaces").glob("*.yaml")):
        assert space.read_text().splitlines()[0] == "# yaml-language-server: $schema=space.schema.json", space.name


def test_the_schema_accepts_the_shipped_spaces_and_refuses_what_the_loader_refuses():
    import jsonschema

    from search.config.spec import load_spec, parse_yaml, space_schema

    validator = jsonschema.Draft202012Validator(space_schema())
    for space in sorted((REPO / "spaces").glob("*.yaml")):
        raw = parse_yaml(space.read_text(), str(space))
        assert not list(validator.iter_errors(raw)), space.name
        load_spec(space)  # and the loader agrees
    raw = parse_yaml((REPO / "spaces" / "quickstart.yaml").read_text(), "quickstart")
    for key, value, why in [("train", {**raw["train"], "epoch": 3}, "'epoch' was unexpected"),
                            ("model", {**raw["model"], "family": "vgg16"}, "'vgg16'"),
                            ("search", {**raw["search"], "sampler": "annealing"}, "'annealing' is not one of"),
                            ("data", {**raw["data"], "val_size": -1}, "-1 is less than the minimum of 0")]:
        errors = [e.message for e in validator.iter_errors({**raw, key: value})]
        assert any(why in m for m in errors), (key, errors)

"""Blocksweep: hyperparameter search for CIFAR-10 image classifiers, tracked in MLflow.

The Python API is the command line as functions; each takes the flags as keyword
arguments and returns what the command prints, as data:

    load_space(path_or_dict, overrides=None) -> Spec   a space, validated (no training)
    train(space, ...) -> dict                           `blocksweep train`: one run
    sweep(space, trials=..., ...) -> SweepSummary       `blocksweep run`: a sweep
    compare(studies=None, ...) -> Report                `blocksweep compare`: the ranking
                                                        (`.runs`, a DataFrame) and figures
    export(study=None, out=...) -> dict                 `blocksweep export`: the best model
    predict(model_dir, images) -> list[dict]            `blocksweep predict`
    evaluate(model, ...) -> dict                        `blocksweep evaluate`
    space_schema() -> dict                              `blocksweep schema`: JSON Schema of a space

A space is a file's path or the same content as a dict. Bad input raises `UsageError`
(the message is the command's one line; nothing ran), a training that broke
`TrialFailed`. For example (README.md, "From Python"):

    import search
    result = search.sweep("spaces/quickstart.yaml", trials=2, data_dir="data")
    report = search.compare(result.study)
    report.runs.head()

Data flows through the package in this order:
space file -> config/space -> engine -> trainer -> tracking -> compare/export.
Importing `search` is light: the functions above are loaded on first use (PEP 562), and
heavy libraries (keras, mlflow, optuna) only inside the functions that need them, so
`blocksweep --help` is instant and a JAX run never imports TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from search.errors import TrialFailed, UsageError
from search.version import __version__

# public name -> (module, attribute)
_API = {
    "load_space": ("search.config.spec", "load_spec"),
    "train": ("search.commands", "train"),
    "sweep": ("search.commands", "sweep"),
    "compare": ("search.analysis.compare", "compare"),
    "export": ("search.artifacts.export", "export"),
    "predict": ("search.artifacts.predict", "predict"),
    "evaluate": ("search.artifacts.evaluate", "evaluate"),
    "space_schema": ("search.config.spec", "space_schema"),
}
__all__ = [*_API, "TrialFailed", "UsageError", "__version__"]

if TYPE_CHECKING:  # for type checkers and editors; at run time `__getattr__` loads them
    from search.analysis.compare import compare
    from search.artifacts.evaluate import evaluate
    from search.artifacts.export import export
    from search.artifacts.predict import predict
    from search.commands import sweep, train
    from search.config.spec import load_spec as load_space
    from search.config.spec import space_schema


def __getattr__(name: str):
    if name in _API:
        module, attribute = _API[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'search' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

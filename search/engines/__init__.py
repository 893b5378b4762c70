"""Search engines: thin adapters from the engine-neutral space to Optuna or Keras Tuner.

Only modules in this package import optuna or keras_tuner. Each engine module is named so
it never shadows its library (`optuna_engine.py`), and is loaded by name on demand.
"""

from __future__ import annotations

import importlib

from search.engines.base import Engine

ENGINES = {
    "optuna": "search.engines.optuna_engine:OptunaEngine",
    "kerastuner": "search.engines.kerastuner_engine:KerasTunerEngine",
}


def get_engine(name: str) -> Engine:
    module, _, cls = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)()

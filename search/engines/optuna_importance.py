"""Parameter importances of an Optuna study, by Optuna's own evaluators (for `compare`).

Only `search/engines/*` imports optuna, so `compare` asks here. The study is loaded from
its storage (the same `--storage` as `blocksweep run`), and the importances are those of
Optuna's fANOVA evaluator (a random forest over the completed trials' parameters, the
variance of the objective each parameter explains; seeded, so reruns agree). Parameters
that only some trials have (conditional, or per-block beyond the smallest block count)
are left out, as Optuna does by default.
"""

from __future__ import annotations

from typing import Optional

import optuna

from search.engines.optuna_storage import load
from search.errors import first_line

optuna.logging.set_verbosity(optuna.logging.WARNING)

METHOD = "Optuna fANOVA (seed 0)"


def evaluator() -> optuna.importance.FanovaImportanceEvaluator:
    """The importance evaluator of `compare` (its PNG and its interactive figure agree)."""
    return optuna.importance.FanovaImportanceEvaluator(seed=0)


def param_importances(study: str, storage: Optional[str] = None) -> dict[str, float]:
    """{parameter name: importance}, summing to 1, for the completed trials of `study`.

    Raises LookupError when the storage has no such study and ValueError when its trials
    cannot give importances (fewer than two completed trials, or no parameter they share).
    """
    loaded = load(study, storage)
    completed = loaded.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(completed) < 2:
        raise ValueError(f"{len(completed)} completed trial(s); importances need at least 2")
    try:
        return dict(optuna.importance.get_param_importances(loaded, evaluator=evaluator(), normalize=True))
    except (ValueError, RuntimeError) as err:  # e.g. no parameter common to all trials
        raise ValueError(first_line(err)) from None

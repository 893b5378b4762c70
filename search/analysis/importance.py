"""Parameter importances for `compare`: which searched parameters moved the objective.

Optuna studies use Optuna's fANOVA evaluator on the study itself (see
`search/engines/optuna_importance.py`). Keras Tuner runs, and Optuna studies whose storage
is not at hand, use the run table instead, by a method that needs no engine:

    random-forest permutation importance: a scikit-learn RandomForestRegressor (100 trees,
    seed 0) is fitted to the completed runs (a seeded sample of 1,000 when there are more:
    measured, 413 runs take 3 s and the fit grows faster than linearly), parameters ->
    objective (categorical values
    as ordinal codes, a parameter a run does not have as -1); each parameter's importance
    is the mean drop in the forest's R^2 when that parameter's column is shuffled
    (`sklearn.inspection.permutation_importance`, 10 repeats, seed 0), negatives clipped
    to 0 and normalised to sum to 1.

It is measured on the runs the forest was fitted to: a sweep has too few trials to hold
some out, so it says how much the fit relies on each parameter, not a tested prediction.
Both methods need a few completed runs; with fewer, `compare` says so instead of drawing.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

PERMUTATION_METHOD = "random-forest permutation importance (run table)"
MIN_RUNS = 4  # completed runs the run-table method needs (the forest fits anything below)
MAX_RUNS = 1000  # larger sweeps are sampled (seeded): the shares are stable well before that


def permutation_importances(params: pd.DataFrame, objective: pd.Series) -> dict[str, float]:
    """{parameter: importance} from the run table (one row per completed run).

    Raises ValueError with the reason when there are too few runs or no parameter varies."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.inspection import permutation_importance

    if len(params) < MIN_RUNS:
        raise ValueError(f"{len(params)} completed run(s); the run-table method needs at least {MIN_RUNS}")
    if len(params) > MAX_RUNS:
        keep = params.sample(MAX_RUNS, random_state=0).index
        params, objective = params.loc[keep], objective.loc[keep]
    varying = [c for c in params.columns if params[c].astype(str).nunique(dropna=False) > 1]
    if not varying:
        raise ValueError("no searched parameter varies across the completed runs")
    x = np.column_stack([_encode(params[c]) for c in varying])
    y = objective.to_numpy(dtype=float)
    forest = RandomForestRegressor(n_estimators=100, random_state=0, n_jobs=1).fit(x, y)
    result = permutation_importance(forest, x, y, n_repeats=10, random_state=0, n_jobs=1)
    drops = np.clip(result.importances_mean, 0, None)
    total = drops.sum()
    shares = drops / total if total > 0 else drops
    return dict(sorted(zip(varying, map(float, shares)), key=lambda kv: -kv[1]))


def _encode(column: pd.Series) -> np.ndarray:
    """Numbers stay numbers; anything else becomes an ordinal code by sorted value; a
    missing value (a conditional parameter the run did not have) becomes -1, below any
    code, so the forest can split it off."""
    numeric = pd.to_numeric(column, errors="coerce")
    if numeric.notna().sum() == column.notna().sum() and not column.map(lambda v: isinstance(v, bool)).any():
        low = numeric.min() if numeric.notna().any() else 0.0
        return numeric.fillna(low - 1 - abs(low)).to_numpy(dtype=float)
    codes = {v: i for i, v in enumerate(sorted(column.dropna().astype(str).unique()))}
    return column.map(lambda v: -1 if pd.isna(v) else codes[str(v)]).to_numpy(dtype=float)


def study_importances(engine: str, study: str, storage: Optional[str], params: pd.DataFrame,
                      objective: pd.Series) -> tuple[dict[str, float], str]:
    """(importances, method) for one study: Optuna's evaluator for an Optuna study whose
    storage has it, else the run-table method. Raises ValueError when neither can."""
    note = ""
    if engine == "optuna":
        from search.engines.optuna_importance import METHOD, param_importances

        try:
            return param_importances(study, storage), METHOD
        except LookupError as err:  # not in this --storage: the run table still knows
            note = f" (Optuna storage: {err})"
    return permutation_importances(params, objective), PERMUTATION_METHOD + note

"""Optuna's own interactive figures of a study (`optuna.visualization`, plotly), for `compare`.

The optimization history, the parallel coordinates, the parameter importances (by the same
seeded fANOVA evaluator as the importances PNG), one slice per parameter, and the contour
of the most important parameters. The study is read from its storage, as for the
importances (`optuna_storage.load`). Only `search/engines/*` imports optuna, so `compare`
asks here.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence

import optuna

from search.engines.optuna_importance import evaluator
from search.engines.optuna_storage import load
from search.errors import first_line

# A contour of n parameters is an n x n matrix of plots: the 3 most important make 9.
CONTOUR_PARAMS = 3


def study_figures(study: str, storage: Optional[str], metric: str,
                  important: Sequence[str] = ()) -> tuple[list[tuple[str, Any]], list[str]]:
    """([(title, plotly Figure)], notes) for `study`, its objective named `metric` on every
    axis; `important` (most important first) picks the contour's parameters. A figure that
    cannot be drawn (too few completed trials) is left out with a note.

    Raises LookupError when the storage has no such study (compare then draws the same
    kinds of figure from the MLflow runs)."""
    import optuna.visualization as vis

    loaded = load(study, storage)
    completed = loaded.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    target = {"target_name": metric}
    drawers = [("Optimization history", lambda: vis.plot_optimization_history(loaded, **target)),
               ("Parallel coordinates", lambda: vis.plot_parallel_coordinate(loaded, **target)),
               ("Parameter importances (fANOVA, seed 0)",
                lambda: vis.plot_param_importances(loaded, evaluator=evaluator(), **target)),
               ("Slices: the objective against each parameter", lambda: vis.plot_slice(loaded, **target))]
    contour = list(important[:CONTOUR_PARAMS])
    if len(contour) >= 2:
        drawers.append((f"Contour of the {len(contour)} most important parameters",
                        lambda: vis.plot_contour(loaded, params=contour, **target)))
    figures, notes = [], []
    if len(completed) < 2:
        notes.append(f"{study}: {len(completed)} completed trial(s); Optuna's figures need at least 2")
        drawers = drawers[:1]
    for title, draw in drawers:
        try:
            with warnings.catch_warnings():  # "... is experimental": these functions are stable in use
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                figures.append((title, draw()))
        except (ValueError, RuntimeError) as err:  # e.g. no parameter shared by the completed trials
            notes.append(f"{study}: {title.lower()}: {first_line(err)}")
    return figures, notes

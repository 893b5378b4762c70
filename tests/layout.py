"""Sweeps made directly in the parent/child layout, without training: what any engine
leaves in MLflow (a parent per study, a child per trial with `param.*`, per-epoch and final
metrics, state tags), so the compare and export tests can set up exact values, ties and
missing results in milliseconds."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from search.tracking import Tracker


@dataclass
class Trial:
    state: str = "completed"  # completed, pruned, failed, running (never finished)
    objective: Optional[float] = None  # None: no objective logged
    params: dict = field(default_factory=dict)
    curve: tuple = ()  # validation metric per epoch
    test_accuracy: Optional[float] = None


def make_study(tracking_uri: str, study: str, trials: list[Trial], *, engine: str = "optuna",
               objective: str = "maximize val_accuracy") -> tuple[str, list[str]]:
    """A study with these trials, numbered 0.. in order; returns (parent run id, child run ids)."""
    tracker = Tracker(tracking_uri)
    tags = {"blocksweep.engine": engine, "blocksweep.objective": objective}
    exp_id, parent, _ = tracker.sweep_parent(study, tags, f"name: {study}\n")
    metric = objective.split()[1]
    ids = []
    for number, trial in enumerate(trials):
        run = tracker.start_trial(exp_id, parent, study, number, {
            **tags, "blocksweep.trial_key": str(number), "blocksweep.searched": ",".join(sorted(trial.params))})
        run.log_params({f"param.{k}": v for k, v in trial.params.items()})
        for epoch, value in enumerate(trial.curve, start=1):
            run.log_epoch(epoch, {metric: value, metric.removeprefix("val_"): value / 2})
        final = {"epochs_run": len(trial.curve), "train_seconds": 1.0, "mean_images_per_second": 100.0}
        if trial.objective is not None:
            final.update(objective=trial.objective, best_epoch=max(1, len(trial.curve)))
        if trial.test_accuracy is not None:
            final["test_accuracy"] = trial.test_accuracy
        run.log_metrics(final)
        if trial.state != "running":
            run.finish(trial.state, "" if trial.state == "completed" else f"{trial.state} on purpose")
        ids.append(run.run_id)
        time.sleep(0.002)  # distinct start times (milliseconds): the tie rule orders by them
    return parent, ids

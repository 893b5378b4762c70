"""`run_epochs`: the recipe's one epoch loop, for both trainers (Keras fit and fused JAX).

Per-epoch metrics go to `on_epoch`, the objective to `report` (pruning); it checks for
NaN, times the epochs, applies the final lookahead and evaluates on the test set, giving
the same `TrialResult` as the standard trainer. The model kept is the final one
(airbench's weights after the last lookahead), so the objective is the last epoch's
value, not the best epoch's.

A fractional `train.epochs` (airbench94 trains 9.9) runs airbench's arithmetic:
`recipe.shape_of` gives total = ceil(steps_per_epoch * epochs) steps, the schedules and the
lookahead run over that total, and the last of the ceil(epochs) epochs stops when the total
is reached. That partial epoch is an epoch like the others for the pruner, the progress bar
and the logged metrics (epoch number ceil(epochs)); its loss, accuracy and images/s are over
the steps it ran. Without a validation split (`data.val_size: 0`, airbench's benchmark) no
epoch is validated, nothing is reported to a pruner and the objective is None: only the test
set is scored, at the end.
"""

from __future__ import annotations

import math
import time

import numpy as np

from search.training.components import mean_rate
from search.training.results import TrialResult, TrialState


def epoch_steps(steps_per_epoch: int, total_steps: int) -> list[int]:
    """The optimiser steps of each epoch: whole epochs, then what is left of the total."""
    whole, rest = divmod(total_steps, steps_per_epoch)
    return [steps_per_epoch] * whole + ([rest] if rest else [])


class LossWindow:
    """Running mean of the per-step training loss, one point every `window` steps (the
    standard trainer's `train_loss_window`)."""

    def __init__(self, window: int):
        self.window = window
        self.step = 0
        self.recent: list[float] = []

    def add(self, losses) -> list[tuple[int, float]]:
        points = []
        for loss in losses:
            self.step += 1
            self.recent.append(float(loss))
            if self.step % self.window == 0:
                points.append((self.step, float(np.mean(self.recent))))
                self.recent = []
        return points


def run_epochs(trainer, config, *, report=None, on_epoch=None, progress=None) -> TrialResult:
    """Train through `trainer` (fused.FusedTrainer, tensorflow_path.TensorFlowTrainer or
    keras_path.KerasTrainer) epoch by epoch:
    each epoch is `trainer.train_steps(*trainer.epoch_data(epoch), 0, steps)`.

    An asynchronous trainer (the fused JAX loop) gets epoch e+1 enqueued before epoch e's
    results are read, so reading metrics, logging them and asking the pruner happen while
    the device trains: the device never waits for the host. The price: a pruned trial
    trains one epoch more than it reports. Its epoch times are the intervals between
    results, so they include the device's validation when it runs every epoch; a
    synchronous trainer's training time is its epoch's data and steps alone.
    """
    recipe = config.train.airbench
    metric = config.objective.metric
    validated = config.data.val_size > 0
    every = validated and recipe.validate == "every_epoch"
    plan = epoch_steps(trainer.steps_per_epoch, trainer.total_steps)
    epochs = len(plan)
    window = LossWindow(config.train.loss_window)
    history: list[dict] = []
    failure = ""
    pruned = False

    def train(epoch):  # (handle, seconds of a synchronous trainer's training)
        begin = time.perf_counter()
        handle = trainer.train_steps(*trainer.epoch_data(epoch), 0, plan[epoch])
        return handle, time.perf_counter() - begin

    seen = time.perf_counter()
    train_seconds = 0.0
    pending, trained = train(0)
    for e in range(epochs):
        last = e == epochs - 1
        if last and recipe.lookahead:
            trainer.finish_lookahead()  # airbench ends on the EMA weights
        val = trainer.evaluate("val") if every or (validated and last) else None
        following = train(e + 1) if trainer.asynchronous and not last else None
        losses, correct = trainer.read_train(pending)
        images = trainer.batch_size * plan[e]
        metrics = {"loss": float(np.mean(losses)), "accuracy": correct / images}
        if val is not None:
            metrics.update({f"val_{k}": v for k, v in trainer.read_eval(val).items()})
        now = time.perf_counter()
        if trainer.asynchronous:
            trained = now - seen
        train_seconds += trained
        metrics["epoch_seconds"] = now - seen
        metrics["images_per_second"] = images / max(trained, 1e-9)
        metrics["learning_rate"] = trainer.learning_rate(e * trainer.steps_per_epoch + plan[e] - 1)
        if e == 0:
            metrics["setup_seconds"] = trainer.setup_seconds
            metrics["compile_seconds"] = trainer.compile_seconds
        seen = now
        history.append(metrics)
        points = window.add(losses)
        if on_epoch is not None:
            on_epoch(e + 1, metrics, points)
        if progress is not None:
            progress(e + 1, metrics)
        if not np.all(np.isfinite(losses)):
            failure = f"loss became {metrics['loss']} in epoch {e + 1}"
            break
        if val is not None:
            value = metrics.get(metric)
            if value is None or not math.isfinite(value):
                failure = f"objective {metric} is {value} in epoch {e + 1}"
                break
            # A prune decision after the last epoch would save nothing.
            if report is not None and report(e + 1, value) and not last:
                pruned = True
                break
        if trainer.asynchronous:
            pending = following[0] if following else None
        elif not last:
            pending, trained = train(e + 1)

    common = dict(epochs_run=len(history), history=tuple(history), train_seconds=train_seconds,
                  images_per_second=mean_rate(history))
    if failure:
        return TrialResult(state=TrialState.FAILED, objective=None, best_epoch=None, reason=failure, **common)
    scored = [h for h in history if metric in h]
    objective = scored[-1][metric] if scored else None
    best_epoch = len(history) if scored else None  # None without a validation split
    if pruned:
        return TrialResult(state=TrialState.PRUNED, objective=objective, best_epoch=best_epoch,
                           reason=f"pruned after epoch {len(history)}", model=trainer.export(), **common)
    test = trainer.read_eval(trainer.evaluate("test"))
    return TrialResult(state=TrialState.COMPLETE, objective=objective, best_epoch=best_epoch,
                       test={f"test_{k}": v for k, v in test.items()}, model=trainer.export(), **common)

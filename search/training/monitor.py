"""`TrialMonitor`: the Keras callback that watches one trial of the standard path and of
transfer learning, epoch by epoch, under every backend.

It times the training steps (validation excluded), keeps the running loss window, stops
on NaN/inf, keeps the best epoch's weights, hands each epoch's metrics to `on_epoch` and
the objective to `report` (the engine's pruner), and applies early stopping.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import keras
import numpy as np

Report = Callable[[int, float], bool]  # (epoch, objective value) -> prune now?
EpochSink = Callable[[int, dict, list], None]  # (epoch, metrics, [(batch, running loss)])



class TrialMonitor(keras.callbacks.Callback):
    """Watches one trial, epoch by epoch, under every backend: times the training steps,
    keeps the running loss window, stops on NaN/inf, keeps the best epoch's weights,
    reports to the pruner and applies early stopping."""

    def __init__(self, config, train_images: int, report: Optional[Report] = None,
                 on_epoch: Optional[EpochSink] = None, progress=None, keep=None,
                 total_epochs: Optional[int] = None):
        """`keep`: the model whose weights the best epoch keeps (default: the one being fit;
        transfer learning fits the head, then the whole classifier). `total_epochs`: the
        trial's last epoch when it spans several `fit` calls (default: this fit's last)."""
        super().__init__()
        self.keep, self.total_epochs = keep, total_epochs
        self.objective = config.objective
        self.window = config.train.loss_window
        self.patience = config.train.early_stopping.patience
        self.min_delta = config.train.early_stopping.min_delta
        self.train_images = train_images
        self.report, self.on_epoch, self.progress = report, on_epoch, progress
        self.history: list[dict] = []
        self.best_value: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.best_weights = None
        self.pruned = False
        self.failure = ""
        self.train_seconds = 0.0
        self.since_best = 0
        # Running loss: Keras's batch logs carry the epoch's mean loss so far, so the sum
        # of the last `window` batch losses is a difference of running totals.
        self.global_batch = 0
        self.batch_in_epoch = 0
        self.loss_total = 0.0  # sum of the batch losses of finished epochs
        self.window_start_total = 0.0
        self.window_points: list[tuple[int, float]] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.perf_counter()
        self.train_end = None
        self.batch_in_epoch = 0

    def on_train_batch_end(self, batch, logs=None):
        self.global_batch += 1
        self.batch_in_epoch = batch + 1
        # Read the logs only every `window` batches: reading them waits for the device.
        if self.global_batch % self.window:
            return
        mean = float(logs["loss"])
        if not math.isfinite(mean):
            self._fail(f"loss became {mean} at batch {self.global_batch}")
            return
        total = self.loss_total + mean * self.batch_in_epoch
        self.window_points.append((self.global_batch, (total - self.window_start_total) / self.window))
        self.window_start_total = total

    def on_test_begin(self, logs=None):
        if self.train_end is None:  # validation starts: the epoch's training is over
            self.train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        train_seconds = (self.train_end or now) - self.epoch_start
        self.train_seconds += train_seconds
        metrics = {k: float(v) for k, v in (logs or {}).items()}
        self.loss_total += metrics.get("loss", 0.0) * self.batch_in_epoch
        metrics["epoch_seconds"] = now - self.epoch_start
        metrics["images_per_second"] = self.train_images / max(train_seconds, 1e-9)
        metrics["learning_rate"] = _current_lr(self.model)
        self.history.append(metrics)
        points, self.window_points = self.window_points, []
        if self.on_epoch is not None:
            self.on_epoch(epoch + 1, metrics, points)
        if self.progress is not None:
            self.progress(epoch + 1, metrics)
        if self.failure:
            return
        if not math.isfinite(metrics.get("loss", 0.0)):
            return self._fail(f"loss became {metrics['loss']} in epoch {epoch + 1}")
        value = metrics.get(self.objective.metric)
        if value is None or not math.isfinite(value):
            return self._fail(f"objective {self.objective.metric} is {value} in epoch {epoch + 1}")
        if self.best_value is None or self.objective.better(value, self.best_value):
            improved_enough = self.best_value is None or abs(value - self.best_value) >= self.min_delta
            self.since_best = 0 if improved_enough else self.since_best + 1
            self.best_value, self.best_epoch = value, epoch + 1
            self.best_weights = (self.model if self.keep is None else self.keep).get_weights()
        else:
            self.since_best += 1
        last_epoch = epoch + 1 >= (self.total_epochs or self.params.get("epochs", 0))
        # Report every epoch (the pruner learns from it); a prune decision after the last
        # epoch would save nothing, so a fully trained trial counts as completed.
        if self.report is not None and self.report(epoch + 1, value) and not last_epoch:
            self.pruned = True
            self.model.stop_training = True
        elif self.patience is not None and self.since_best >= self.patience:
            self.model.stop_training = True

    def _fail(self, reason):
        self.failure = reason
        self.model.stop_training = True


def _current_lr(model) -> float:
    # Keras's `learning_rate` property evaluates a schedule at the optimizer's current step.
    return float(np.asarray(model.optimizer.learning_rate))

"""One trial: build, compile, fit, evaluate. Knows no engine and no tracker.

`train_and_evaluate(config, splits, report=..., on_epoch=...)` is the one training entry
point for `blocksweep train` and for every engine's trials. It learns of pruning only
through `report(epoch, objective) -> bool` (True: stop now, the trial is pruned), and
hands each epoch's metrics to `on_epoch` (the tracker logs them in one batched call).
Transfer-learning schemes (a ResNet's `features` / `finetune`) take the same door: it hands
them to search/transfer.py, which reuses the pieces below.

The run, in order: seed -> precision policy -> model -> optimizer and schedule -> fit with
the `TrialMonitor` callback (timing, loss window, NaN check, best weights, pruning, early
stopping) -> restore the best epoch's weights -> test evaluation.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Callable, Optional

# Keras is imported here, at the top: import this module only after
# `search.backend.select()` has chosen the backend (the CLI and engines do).

import keras
import numpy as np

from search import models
from search.backend import device_kind
from search.results import TrialResult, TrialState
from search.schedules import keras_schedule

Report = Callable[[int, float], bool]  # (epoch, objective value) -> prune now?
EpochSink = Callable[[int, dict, list], None]  # (epoch, metrics, [(batch, running loss)])


# --------------------------------------------------------------------------- model pieces


def build_model(config, splits):
    """The bare network for `config` (what gets saved and exported), with its
    data-dependent weights (a whitening stem's filters) set from the training split."""
    net = models.build_model(config.model, splits.input_shape, splits.num_classes)
    models.fit_statistics(net, config.model, splits.x_train)
    return net


def augmentation(config, seed: int):
    """Keras layers for the data config's augmentation; they run on the device inside the
    training step under every backend and are identity at inference."""
    from keras import layers

    aug = config.data.augment
    out = []
    if aug.flip:
        out.append(layers.RandomFlip("horizontal", seed=seed, name="aug_flip"))
    if aug.translate:
        # Whole-pixel shifts: nearest interpolation keeps pixels crisp (no bilinear blur).
        f = aug.translate / 32.0
        out.append(layers.RandomTranslation(f, f, fill_mode="reflect", interpolation="nearest",
                                            seed=seed + 1, name="aug_translate"))
    return out


def loss_function(config):
    smoothing = config.train.label_smoothing
    if config.data.labels == "onehot":
        return keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)
    if smoothing == 0:
        return keras.losses.SparseCategoricalCrossentropy()

    def sparse_smoothed_crossentropy(y_true, y_pred):
        # Keras's sparse loss has no label smoothing; one-hot inside the step instead.
        from keras import ops

        classes = ops.shape(y_pred)[-1]
        onehot = ops.one_hot(ops.reshape(ops.cast(y_true, "int32"), (-1,)), classes)
        return keras.losses.categorical_crossentropy(onehot, y_pred, label_smoothing=smoothing)

    return sparse_smoothed_crossentropy


def optimizer(config, steps_per_epoch: int):
    t = config.train
    lr = keras_schedule(t.schedule, t.learning_rate, steps_per_epoch, steps_per_epoch * t.epochs)
    cls = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}[t.optimizer]
    options = {"momentum": t.momentum, "nesterov": t.nesterov} if t.optimizer == "sgd" else {}
    if t.weight_decay_mode == "coupled" and t.weight_decay:
        return coupled_decay(cls)(decay=t.weight_decay, learning_rate=lr, **options)
    return cls(learning_rate=lr, weight_decay=t.weight_decay or None, **options)


def coupled_decay(cls):
    """`cls` with L2 weight decay added to the gradient of every kernel (variables of rank
    2 and more; biases and batch-norm parameters are left alone)."""

    class Coupled(cls):
        def __init__(self, decay: float, **kwargs):
            super().__init__(**kwargs)
            self.decay = decay

        def update_step(self, gradient, variable, learning_rate):
            if len(variable.shape) >= 2:
                gradient = gradient + self.decay * keras.ops.cast(variable, gradient.dtype)
            return super().update_step(gradient, variable, learning_rate)

    Coupled.__name__ = f"Coupled{cls.__name__}"
    return Coupled


@contextlib.contextmanager
def trial_setup(config):
    """What every trial starts with, whichever path trains it: the seed, and the precision
    policy for the models built inside the block (restored afterwards, so the next trial in
    the same process starts clean)."""
    keras.utils.set_random_seed(config.train.seed)
    previous = keras.mixed_precision.dtype_policy().name
    keras.mixed_precision.set_dtype_policy(precision_policy(config))
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def precision_policy(config) -> str:
    """bf16 mixed precision on a GPU (auto), float32 elsewhere: bf16 is slower on CPUs."""
    if config.train.precision != "auto":
        return config.train.precision
    return "mixed_bfloat16" if device_kind() == "gpu" else "float32"


# --------------------------------------------------------------------------- the callback


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
    opt = model.optimizer
    try:
        lr = opt.learning_rate
        return float(np.asarray(lr))
    except Exception:  # a schedule object: evaluate it at the current step
        try:
            return float(np.asarray(opt._learning_rate(opt.iterations)))
        except Exception:
            return float("nan")


# --------------------------------------------------------------------------- the trial


def train_and_evaluate(config, splits, *, report: Optional[Report] = None,
                       on_epoch: Optional[EpochSink] = None, progress=None) -> TrialResult:
    """Train `config` (a RunConfig) on `splits` and evaluate its best epoch on the test set.

    Args:
        report: called after each epoch with (epoch, objective value); returning True
            prunes the trial: it stops at once and comes back with state PRUNED.
        on_epoch: receives (epoch, metrics, running-loss points) after each epoch.
        progress: optional callable(epoch, metrics) for a terminal display.
    Returns:
        A TrialResult; NaN/inf losses give state FAILED with the reason. Other errors
        (out of memory, an impossible shape) propagate to the caller, who records them.
    `train.recipe: airbench` runs Keller Jordan's recipe instead (search/recipe.py; the
    fused JAX loop of search/fast.py under JAX): same arguments, same TrialResult.
    """
    if config.train.recipe == "airbench":
        from search import recipe

        return recipe.train_and_evaluate(config, splits, report=report, on_epoch=on_epoch, progress=progress)
    if getattr(config.model, "transfers", False):
        # A transfer-learning scheme (ResNet features / finetune): two phases, cached
        # embeddings; same arguments, same result (see search/transfer.py).
        from search import transfer

        return transfer.train_and_evaluate(config, splits, report=report, on_epoch=on_epoch, progress=progress)
    with trial_setup(config):
        net = build_model(config, splits)
        trainer = keras.Sequential([keras.Input(splits.input_shape), *augmentation(config, config.train.seed), net],
                                   name="trainer") if _augments(config) else net
        steps = math.ceil(len(splits.x_train) / config.train.batch_size)
        trainer.compile(optimizer=optimizer(config, steps), loss=loss_function(config), metrics=["accuracy"])
        monitor = TrialMonitor(config, len(splits.x_train), report, on_epoch, progress)
        trainer.fit(splits.x_train, splits.y_train, batch_size=config.train.batch_size,
                    epochs=config.train.epochs, validation_data=(splits.x_val, splits.y_val),
                    callbacks=[monitor], verbose=0, shuffle=True)

    common = dict(objective=monitor.best_value, best_epoch=monitor.best_epoch,
                  epochs_run=len(monitor.history), history=tuple(monitor.history),
                  train_seconds=monitor.train_seconds,
                  images_per_second=mean_rate(monitor.history))
    if monitor.failure:
        return TrialResult(state=TrialState.FAILED, reason=monitor.failure, **common)
    if monitor.best_weights is not None:
        # `net` sits inside `trainer` and shares its variables (augmentation has none).
        trainer.set_weights(monitor.best_weights)
    if monitor.pruned:
        return TrialResult(state=TrialState.PRUNED, reason=f"pruned after epoch {len(monitor.history)}",
                           model=net, **common)
    net.compile(loss=loss_function(config), metrics=["accuracy"])
    test_loss, test_accuracy = net.evaluate(splits.x_test, splits.y_test, batch_size=512, verbose=0)
    return TrialResult(state=TrialState.COMPLETE, model=net,
                       test={"test_accuracy": float(test_accuracy), "test_loss": float(test_loss)}, **common)


def _augments(config) -> bool:
    aug = config.data.augment
    return bool(aug.flip or aug.translate)


def mean_rate(history) -> float:
    # Epoch 1 includes compilation; average the rest when there is a rest.
    rates = [h["images_per_second"] for h in history]
    rates = rates[1:] if len(rates) > 1 else rates
    return float(np.mean(rates)) if rates else 0.0

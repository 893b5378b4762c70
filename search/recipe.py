"""The airbench recipe (`train.recipe: airbench`): its pieces, its epoch loop, and the
Keras-fit path that runs it on every backend.

Keller Jordan's airbench94 (2024) trains a whitened VGG to 94% on CIFAR-10 in seconds;
`config.AirbenchRecipe` holds its optimisation settings (and how airbench's units map to
ours), `models/vgg.py` its network. Two paths run the same recipe:

* `search/fast.py` (JAX backend): the whole training set on the device, a jitted step over
  the model's stateless call, a whole epoch of steps fused into one dispatch;
* `KerasTrainer` below (any backend; `train.airbench.path: keras`): Keras `fit`, one
  epoch at a time, with the same optimiser, schedule, augmentation, lookahead and TTA.

Both plug into `run_epochs`, the one epoch loop: per-epoch metrics to `on_epoch`, the
objective to `report` (pruning), NaN checks, timing, the final lookahead and the test
evaluation, giving the same `TrialResult` as the standard trainer. The model kept is the
final one (airbench's weights after the last lookahead), so the objective is the last
epoch's value, not the best epoch's.

The augmentation and TTA functions are written once: array functions take the array
module (`numpy` or `jax.numpy`) as `xp`; model-level ones use `keras.ops`.
"""

from __future__ import annotations

import math
import time
from typing import Any, Optional

import keras
import numpy as np
from keras import ops

from search.schedules import keras_schedule
from search.train import TrialResult, TrialState, build_model, mean_rate, trial_setup

# --------------------------------------------------------------------------- data on the device


def int_labels(y: np.ndarray) -> np.ndarray:
    """Class indices (int32) from sparse or one-hot labels."""
    y = np.asarray(y)
    return (y.argmax(axis=1) if y.ndim == 2 else y.reshape(-1)).astype(np.int32)


def flip_pattern(n: int, seed: int) -> np.ndarray:
    """One random flip decision per training image, drawn once for the whole run."""
    return np.random.default_rng(seed).random(n) < 0.5


def epoch_flips(pattern, epoch):
    """Alternating flip: the pattern on even epochs (0-based), its inverse on odd ones, so
    every image is seen both ways in any two consecutive epochs (airbench's choice:
    more diverse than a fresh coin per epoch)."""
    return pattern ^ (epoch % 2 == 1)


def pad_reflect(xp, images, pad: int):
    """NHWC images with `pad` pixels of reflect padding on each side of H and W."""
    return xp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect") if pad else images


def augment(xp, padded, index, offsets, flips, size: int):
    """Crops of `size` x `size` from `padded` (images reflect-padded by `translate`):
    crop k is image index[k] shifted by offsets[k] - translate pixels (rows, columns),
    mirrored left-right where flips[k]. One gather for the whole batch or epoch: the
    flip is reading the crop's columns backwards."""
    span = xp.arange(size)
    rows = offsets[:, 0:1] + span
    cols = offsets[:, 1:2] + span
    cols = xp.where(flips[:, None], cols[:, ::-1], cols)
    return padded[index[:, None, None], rows[:, :, None], cols[:, None, :]]


# --------------------------------------------------------------------------- model-level pieces


def logits_model(net):
    """The network up to its `logits` layer (sharing its variables): what the recipe
    trains on and averages for TTA. The saved model keeps the softmax on top."""
    return keras.Model(net.inputs, net.get_layer("logits").output, name=f"{net.name}_logits")


def smoothed_cross_entropy(logits, labels, smoothing: float, num_classes: int):
    """Per-example cross-entropy against (1 - s) * one_hot + s / K (PyTorch's label
    smoothing), from logits."""
    logp = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
    target = ops.one_hot(ops.cast(ops.reshape(labels, (-1,)), "int32"), num_classes)
    target = target * (1.0 - smoothing) + smoothing / num_classes
    return -ops.sum(target * logp, axis=-1)


def tta_logits(predict, x, level: int):
    """(plain logits, TTA logits) of images `x` (NHWC) under `predict`.

    level 0: the plain logits; 1: mirror(x) = mean of the logits of x and its left-right
    flip; 2: 0.5 * mirror(x) + 0.25 * (mirror(up_left) + mirror(down_right)), where the
    shifted images are x moved by one pixel with reflect padding (airbench's TTA). All
    views go through `predict` as one batch (inference batch-norm is per example)."""
    if level == 0:
        plain = predict(x)
        return plain, plain
    views = [x, ops.flip(x, axis=2)]
    if level == 2:
        h, w = x.shape[1], x.shape[2]
        padded = ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
        up_left = padded[:, 2:, 2:, :]  # pixel (i, j) shows x[i + 1, j + 1]
        down_right = padded[:, :h, :w, :]  # pixel (i, j) shows x[i - 1, j - 1]
        views += [up_left, ops.flip(up_left, axis=2), down_right, ops.flip(down_right, axis=2)]
    n = x.shape[0]
    logits = ops.cast(predict(ops.concatenate(views, axis=0)), "float32")
    parts = [logits[k * n:(k + 1) * n] for k in range(len(views))]
    mirror = [0.5 * (parts[2 * k] + parts[2 * k + 1]) for k in range(len(views) // 2)]
    tta = mirror[0] if level == 1 else 0.5 * mirror[0] + 0.25 * (mirror[1] + mirror[2])
    return parts[0], tta


def eval_sums(plain, tta, labels, mask, smoothing: float, num_classes: int):
    """[sum of losses, correct plain, correct TTA] over the examples where mask is 1."""
    labels = ops.cast(labels, "int32")
    mask = ops.cast(mask, "float32")
    loss = ops.sum(smoothed_cross_entropy(plain, labels, smoothing, num_classes) * mask)
    right = ops.sum(ops.cast(ops.argmax(plain, axis=-1) == labels, "float32") * mask)
    right_tta = ops.sum(ops.cast(ops.argmax(tta, axis=-1) == labels, "float32") * mask)
    return ops.stack([loss, right, right_tta])


def variable_groups(model, recipe, steps_per_epoch: int) -> list[tuple[float, float, Optional[int]]]:
    """(lr scale, coupled decay, last step or None) for each of `model.trainable_variables`:
    batch-norm parameters train at `bias_lr_scale` x the lr with `bias_weight_decay`; the
    whitening stem's bias stops after `whiten_bias_epochs`; the rest: lr x 1, `weight_decay`."""
    from search.models.layers import PatchWhitening

    kind = {}
    for layer in model.layers:
        for v in layer.trainable_weights:
            if isinstance(layer, keras.layers.BatchNormalization):
                kind[id(v)] = "norm"
            elif isinstance(layer, PatchWhitening):
                kind[id(v)] = "whiten"
    limit = (None if recipe.whiten_bias_epochs is None
             else int(round(recipe.whiten_bias_epochs * steps_per_epoch)))
    groups = []
    for v in model.trainable_variables:
        k = kind.get(id(v))
        if k == "norm":
            groups.append((recipe.bias_lr_scale, recipe.bias_weight_decay, None))
        else:
            groups.append((1.0, recipe.weight_decay, limit if k == "whiten" else None))
    return groups


def sgd_update(w, g, v, lr, momentum: float, nesterov: bool, decay: float):
    """One step of PyTorch's SGD with coupled weight decay (what airbench uses), on any
    array type: g = grad + decay * w; v = momentum * v + g; w -= lr * (g + momentum * v)
    with Nesterov, lr * v without. Returns (new w, new v). (Keras's SGD keeps lr inside
    its velocity, which differs once the lr changes, as it does here every step.)"""
    g = g + decay * w
    v = momentum * v + g
    return w - lr * (g + momentum * v if nesterov else v), v


def lookahead_decay(step, total_steps: int, recipe):
    """d = decay**every * (step / total)**power: the EMA's weight on its past at `step`
    (small early, so the EMA follows the weights; large late, so it averages them)."""
    return recipe.lookahead_decay ** recipe.lookahead_every * (step / total_steps) ** recipe.lookahead_power


def lookahead_update(xp, ema, w, step, total_steps: int, recipe):
    """airbench's lookahead after optimiser step number `step` (1-based): when step is a
    multiple of `lookahead_every`, ema = d * ema + (1 - d) * w and w <- ema; otherwise
    both unchanged. Returns (ema, w). `xp` is numpy or jax.numpy (step may be traced)."""
    sync = step % recipe.lookahead_every == 0
    d = lookahead_decay(step, total_steps, recipe)
    ema = xp.where(sync, d * ema + (1 - d) * w, ema)
    return ema, xp.where(sync, ema, w)


def shape_of(config, splits) -> tuple[int, int]:
    """(batch size, steps per epoch): airbench drops the last partial batch; a batch
    larger than the training set shrinks to it."""
    n = len(splits.x_train)
    batch = min(config.train.airbench.batch_size, n)
    return batch, n // batch


# --------------------------------------------------------------------------- the epoch loop


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
    """Train through `trainer` (fast.FusedTrainer or KerasTrainer) epoch by epoch.

    An asynchronous trainer (the fused JAX loop) gets epoch e+1 enqueued before epoch e's
    results are read, so reading metrics, logging them and asking the pruner happen while
    the device trains: the device never waits for the host. The price: a pruned trial
    trains one epoch more than it reports. Its epoch times are the intervals between
    results, so they include the device's validation when it runs every epoch; a
    synchronous trainer's training time is its `train_epoch` call alone.
    """
    recipe = config.train.airbench
    epochs = config.train.epochs
    metric = config.objective.metric
    every = recipe.validate == "every_epoch"
    images = trainer.batch_size * trainer.steps_per_epoch
    window = LossWindow(config.train.loss_window)
    history: list[dict] = []
    failure = ""
    pruned = False
    def train(epoch):  # (handle, seconds of a synchronous trainer's training)
        begin = time.perf_counter()
        handle = trainer.train_epoch(epoch)
        return handle, time.perf_counter() - begin

    seen = time.perf_counter()
    train_seconds = 0.0
    pending, trained = train(0)
    for e in range(epochs):
        last = e == epochs - 1
        if last and recipe.lookahead:
            trainer.finish_lookahead()  # airbench ends on the EMA weights
        val = trainer.evaluate("val") if (every or last) else None
        following = train(e + 1) if trainer.asynchronous and not last else None
        losses, correct = trainer.read_train(pending)
        metrics = {"loss": float(np.mean(losses)), "accuracy": correct / images}
        if val is not None:
            metrics.update({f"val_{k}": v for k, v in trainer.read_eval(val).items()})
        now = time.perf_counter()
        if trainer.asynchronous:
            trained = now - seen
        train_seconds += trained
        metrics["epoch_seconds"] = now - seen
        metrics["images_per_second"] = images / max(trained, 1e-9)
        metrics["learning_rate"] = trainer.learning_rate((e + 1) * trainer.steps_per_epoch - 1)
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
    best_epoch = len(history) if scored else None
    if pruned:
        return TrialResult(state=TrialState.PRUNED, objective=objective, best_epoch=best_epoch,
                           reason=f"pruned after epoch {len(history)}", model=trainer.export(), **common)
    test = trainer.read_eval(trainer.evaluate("test"))
    return TrialResult(state=TrialState.COMPLETE, objective=objective, best_epoch=best_epoch,
                       test={f"test_{k}": v for k, v in test.items()}, model=trainer.export(), **common)


# --------------------------------------------------------------------------- the Keras-fit path


class RecipeSGD(keras.optimizers.Optimizer):
    """PyTorch's (Nesterov) SGD with coupled weight decay and per-variable lr scales, as a
    Keras optimizer (`sgd_update` with lr * scale). `groups` holds (lr scale, decay, last
    step or None) for each variable, in the order of the variables the optimiser is built
    with (the model's trainable ones, as `variable_groups` lists them)."""

    def __init__(self, learning_rate, momentum: float, nesterov: bool, groups: list, **kwargs):
        super().__init__(learning_rate=learning_rate, name="recipe_sgd", **kwargs)
        self.momentum = momentum
        self.nesterov = nesterov
        self.groups = groups

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.velocities = [self.add_variable_from_reference(v, name="velocity") for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        scale, decay, last = self.groups[index]
        lr = ops.cast(learning_rate, variable.dtype) * scale
        if last is not None:
            lr = ops.where(self.iterations < last, lr, ops.zeros_like(lr))
        velocity = self.velocities[index]
        new_w, new_v = sgd_update(ops.convert_to_tensor(variable), ops.cast(gradient, variable.dtype),
                                  ops.convert_to_tensor(velocity), lr, self.momentum, self.nesterov, decay)
        self.assign(velocity, new_v)
        self.assign(variable, new_w)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Lookahead(keras.callbacks.Callback):
    """airbench's lookahead as a callback: every `every` steps, for every float variable,
    ema = d * ema + (1 - d) * w and w <- ema; `finish()` sets w <- ema at the end."""

    def __init__(self, recipe, total_steps: int):
        super().__init__()
        self.recipe, self.total = recipe, total_steps
        self.step = 0
        self.ema: Optional[list[np.ndarray]] = None

    def _variables(self):
        return [v for v in self.model.weights if "float" in str(v.dtype)]

    def on_train_begin(self, logs=None):
        if self.ema is None:
            self.ema = [np.array(ops.convert_to_numpy(v)) for v in self._variables()]

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.recipe.lookahead_every:
            return
        for i, variable in enumerate(self._variables()):
            self.ema[i], w = lookahead_update(np, self.ema[i], ops.convert_to_numpy(variable), self.step,
                                              self.total, self.recipe)
            variable.assign(w)

    def finish(self):
        for variable, ema in zip(self._variables(), self.ema):
            variable.assign(ema)


class _StepLosses(keras.callbacks.Callback):
    """Each step's loss, recovered from Keras's running mean (kept as tensors: read once
    at the end of the epoch)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.means = []

    def on_train_batch_end(self, batch, logs=None):
        self.means.append(logs["loss"])

    def on_epoch_end(self, epoch, logs=None):
        self.accuracy = logs.get("accuracy", 0.0)

    def losses(self) -> np.ndarray:
        means = np.array([float(m) for m in self.means])
        totals = means * np.arange(1, len(means) + 1)
        return np.diff(np.concatenate([[0.0], totals]))


class KerasTrainer:
    """The recipe through Keras `fit` on any backend: the epoch's augmented images are
    made on the host (same functions and rules as the fused path), then one `fit` epoch
    with `RecipeSGD`, the schedule, label smoothing and the `Lookahead` callback; TTA
    evaluation runs the logits model eagerly."""

    asynchronous = False

    def __init__(self, config, splits):
        started = time.perf_counter()
        self.config, self.splits = config, splits
        recipe = config.train.airbench
        self.recipe = recipe
        self.net = build_model(config, splits)
        self.model = logits_model(self.net)
        self.num_classes = splits.num_classes
        self.batch_size, self.steps_per_epoch = shape_of(config, splits)
        total = self.steps_per_epoch * config.train.epochs
        self.schedule = keras_schedule(recipe.schedule, recipe.learning_rate, self.steps_per_epoch, total)
        groups = variable_groups(self.model, recipe, self.steps_per_epoch)
        optimizer = RecipeSGD(self.schedule, recipe.momentum, recipe.nesterov, groups)
        smoothing, k = recipe.label_smoothing, self.num_classes

        def loss(y_true, logits):
            return smoothed_cross_entropy(logits, y_true, smoothing, k)

        self.model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
        self.callbacks = [Lookahead(recipe, total)] if recipe.lookahead else []
        self.step_losses = _StepLosses()
        aug = config.data.augment
        self.translate, self.flip = aug.translate, aug.flip
        self.padded = pad_reflect(np, splits.x_train, self.translate)
        self.labels = int_labels(splits.y_train)
        self.pattern = flip_pattern(len(self.labels), config.train.seed)
        self.rng = np.random.default_rng(config.train.seed + 1)
        self.setup_seconds = time.perf_counter() - started
        self.compile_seconds = 0.0  # Keras compiles inside the first fit

    def epoch_data(self, epoch: int):
        n, m = len(self.labels), self.batch_size * self.steps_per_epoch
        index = self.rng.permutation(n)[:m]
        offsets = self.rng.integers(0, 2 * self.translate + 1, size=(m, 2))
        if not self.flip:
            flips = np.zeros(m, dtype=bool)
        elif self.recipe.flip == "alternating":
            flips = epoch_flips(self.pattern[index], epoch)
        else:
            flips = self.rng.random(m) < 0.5
        return augment(np, self.padded, index, offsets, flips, self.splits.x_train.shape[1]), self.labels[index]

    def train_epoch(self, epoch: int):
        x, y = self.epoch_data(epoch)
        self.model.fit(x, y, batch_size=self.batch_size, epochs=1, shuffle=False, verbose=0,
                       callbacks=[*self.callbacks, self.step_losses])
        return self.step_losses.losses(), float(self.step_losses.accuracy) * len(y)

    def read_train(self, handle):
        return handle

    def finish_lookahead(self):
        if self.callbacks:
            self.callbacks[0].finish()

    def evaluate(self, split: str):
        x = getattr(self.splits, f"x_{split}")
        y = int_labels(getattr(self.splits, f"y_{split}"))
        size = min(self.recipe.eval_batch_size, len(x))
        sums = np.zeros(3)
        for start in range(0, len(x), size):
            xb, yb = x[start:start + size], y[start:start + size]
            plain, tta = tta_logits(lambda v: self.model(v, training=False), ops.convert_to_tensor(xb),
                                    self.recipe.tta_level)
            sums += ops.convert_to_numpy(eval_sums(plain, tta, yb, np.ones(len(yb)), self.recipe.label_smoothing,
                                                   self.num_classes))
        return sums, len(x)

    def read_eval(self, handle) -> dict:
        return eval_metrics(*handle)

    def learning_rate(self, step: int) -> float:
        return float(ops.convert_to_numpy(self.schedule(step)))

    def export(self):
        return self.net


def eval_metrics(sums, count: int) -> dict:
    loss, right, right_tta = (float(v) for v in np.asarray(sums))
    return {"loss": loss / count, "accuracy": right / count, "tta_accuracy": right_tta / count}


# --------------------------------------------------------------------------- the entry point


def train_and_evaluate(config, splits, *, report=None, on_epoch=None, progress=None) -> TrialResult:
    """The recipe's trial (called by `search.train.train_and_evaluate`): the fused JAX loop
    under the JAX backend (unless `train.airbench.path` says keras), else Keras fit."""
    path = config.train.airbench.path
    backend = keras.backend.backend()
    if path == "fused" and backend != "jax":
        raise ValueError(f"train.airbench.path fused needs the JAX backend (this process runs {backend})")
    with trial_setup(config):
        if backend == "jax" and path != "keras":
            from search.fast import FusedTrainer

            trainer: Any = FusedTrainer(config, splits)
        else:
            trainer = KerasTrainer(config, splits)
        return run_epochs(trainer, config, report=report, on_epoch=on_epoch, progress=progress)


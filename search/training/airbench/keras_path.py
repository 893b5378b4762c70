"""The recipe through Keras `fit`, on any backend (`train.airbench.path: keras`, and the
recipe's path on torch; TensorFlow runs tensorflow_path.py, built on this class): the same
optimiser, schedule, augmentation, lookahead and TTA as the fused JAX trainer, one `fit`
epoch at a time.
"""

from __future__ import annotations

import functools
import time
from typing import Optional

import keras
import numpy as np
from keras import ops

from search.training.airbench.recipe import (augment, epoch_flips, eval_metrics, eval_sums, flip_pattern, int_labels,
                                             logits_model, lookahead_decays, lookahead_update, pad_reflect, shape_of,
                                             smoothed_cross_entropy, sgd_update, tta_logits, variable_groups)
from search.training.components import build_model
from search.training.schedules import keras_schedule


class RecipeSGD(keras.optimizers.Optimizer):
    """PyTorch's (Nesterov) SGD with coupled weight decay and per-variable lr scales, as a
    Keras optimizer (`sgd_update` with lr * scale). `groups` maps each trainable variable's
    path to its (lr scale, decay, last step or None), as `variable_groups` gives them."""

    def __init__(self, learning_rate, momentum: float, nesterov: bool, groups: dict, **kwargs):
        super().__init__(learning_rate=learning_rate, name="recipe_sgd", **kwargs)
        self.momentum = momentum
        self.nesterov = nesterov
        self.groups = groups

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        # update_step receives a Keras variable (JAX) or the backend's own variable behind
        # it (`v.value` on TensorFlow): find the variable's group and velocity by either.
        self.slots = {}
        for v in variables:
            slot = (self.groups[v.path], self.add_variable_from_reference(v, name="velocity"))
            self.slots[id(v)] = self.slots[id(v.value)] = slot

    def update_step(self, gradient, variable, learning_rate):
        (scale, decay, last), velocity = self.slots[id(variable)]
        lr = ops.cast(learning_rate, variable.dtype) * scale
        if last is not None:
            lr = ops.where(self.iterations < last, lr, ops.zeros_like(lr))
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
        self.every, self.decays = recipe.lookahead_every, lookahead_decays(total_steps, recipe)
        self.step = 0
        self.ema: Optional[list[np.ndarray]] = None

    def _variables(self):
        return [v for v in self.model.weights if "float" in str(v.dtype)]

    def on_train_begin(self, logs=None):
        if self.ema is None:
            self.ema = [np.array(ops.convert_to_numpy(v)) for v in self._variables()]

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every:
            return
        # Under JAX, fit keeps the state outside the variables between steps; this public
        # call writes it back (and fit reads the variables again before its next step).
        getattr(self.model, "jax_state_sync", lambda: None)()
        for i, variable in enumerate(self._variables()):
            self.ema[i], w = lookahead_update(np, self.ema[i], ops.convert_to_numpy(variable), self.step,
                                              self.decays, self.every)
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
    made on the host (same functions and rules as the fused path), then `fit` over them
    with `RecipeSGD`, the schedule, label smoothing and the `Lookahead` callback; TTA
    evaluation runs the logits model eagerly.

    `net`: the network to train, its whitening filters already set (a test or a reference
    run gives both trainers the same one); None builds it from the config and the data."""

    asynchronous = False

    def __init__(self, config, splits, net=None):
        started = time.perf_counter()
        self.config, self.splits = config, splits
        recipe = config.train.airbench
        self.recipe = recipe
        self.net = build_model(config, splits) if net is None else net
        self.model = logits_model(self.net)
        self.num_classes = splits.num_classes
        self.batch_size, self.steps_per_epoch, self.total_steps = shape_of(config, splits)
        self.schedule = keras_schedule(recipe.schedule, recipe.learning_rate, self.steps_per_epoch,
                                       self.total_steps)
        groups = variable_groups(self.model, recipe, self.steps_per_epoch)
        by_path = {v.path: group for v, group in zip(self.model.trainable_variables, groups)}
        optimizer = RecipeSGD(self.schedule, recipe.momentum, recipe.nesterov, by_path)
        smoothing, k = recipe.label_smoothing, self.num_classes

        def loss(y_true, logits):
            return smoothed_cross_entropy(logits, y_true, smoothing, k)

        self.model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
        self.callbacks = [Lookahead(recipe, self.total_steps)] if recipe.lookahead else []
        self.step_losses = _StepLosses()
        aug = config.data.augment
        self.translate, self.flip = aug.translate, aug.flip
        self.labels = int_labels(splits.y_train)
        self.pattern = flip_pattern(len(self.labels), config.train.seed)
        self.rng = np.random.default_rng(config.train.seed + 1)
        self.setup_seconds = time.perf_counter() - started
        self.compile_seconds = 0.0  # Keras compiles inside the first fit

    @functools.cached_property
    def padded(self) -> np.ndarray:
        """The training images, reflect-padded once (on first use: a trainer that cuts
        its crops elsewhere never pays for this copy)."""
        return pad_reflect(np, self.splits.x_train, self.translate)

    def epoch_plan(self, epoch: int):
        """The epoch's crops as (image index, offsets, flips), `batch * steps_per_epoch` of
        each in step order: a seeded permutation (the remainder dropped, as airbench's
        loader does), shifts of up to `translate` pixels, flips. Host arrays of a few
        hundred kB, drawn once an epoch."""
        n, m = len(self.labels), self.batch_size * self.steps_per_epoch
        index = self.rng.permutation(n)[:m]
        offsets = self.rng.integers(0, 2 * self.translate + 1, size=(m, 2))
        if not self.flip:
            flips = np.zeros(m, dtype=bool)
        elif self.recipe.flip == "alternating":
            flips = epoch_flips(self.pattern[index], epoch)
        else:
            flips = self.rng.random(m) < 0.5
        return index, offsets, flips

    def epoch_data(self, epoch: int):
        """The epoch's `batch * steps_per_epoch` augmented training images and labels, in
        step order."""
        index, offsets, flips = self.epoch_plan(epoch)
        return augment(np, self.padded, index, offsets, flips, self.splits.x_train.shape[1]), self.labels[index]

    def train_steps(self, x, y, first: int, count: int):
        """Optimiser steps first..first+count-1 of an epoch whose images are `x`, `y` (step s
        trains on batch s). Returns the steps' losses and the count of right predictions."""
        b = self.batch_size
        x, y = x[first * b:(first + count) * b], y[first * b:(first + count) * b]
        self.model.fit(x, y, batch_size=b, epochs=1, shuffle=False, verbose=0,
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

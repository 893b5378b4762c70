"""The recipe on TensorFlow (the CPU backend), compiled: one `tf.function` per step.

Why: Keras `fit` of the recipe (keras_path.KerasTrainer) spends much of a CPU's time
around the step rather than in it: it gathers each epoch's augmented images in NumPy
(550 MB at 45,000 images), hands them to fit's data adapter, and runs two callbacks after
every step (the lookahead, the losses) that make the host wait for each step and copy
every weight to NumPy every fifth one. Here, in reading order:

1. the training images stay resident as one tensor; each step cuts its batch's crops
   (shift with reflect padding, flip) inside the graph, from the plan of image indices,
   offsets and flips that `KerasTrainer.epoch_plan` draws once an epoch: the same host
   random streams as the Keras path, so both paths train on the same batches;
2. the step (crops, forward, label-smoothed loss, gradients, `RecipeSGD`, airbench's
   lookahead) is one `tf.function`; its losses and correct counts stay tensors until the
   epoch ends;
3. evaluation with TTA is one `tf.function` per batch of `eval_batch_size` images.

The math is the Keras path's, piece for piece (the optimiser, the schedule, the lookahead
rule and its decay table, the TTA): only where it runs changed. tests/test_fast.py trains
both paths from the same weights on the same batches and compares them.

Measured on the 2-core development CPU (AVX-512, TensorFlow 2.21, 2026-12-01, widths
16/64/64, batch 1,024; BENCHMARKS.md "CPU throughput"): XLA (`jit_compile=True`) runs this
step at ~0.6x the speed of TensorFlow's own kernels (oneDNN convolutions), so it is off.
"""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

from search.training.airbench.keras_path import KerasTrainer
from search.training.airbench.recipe import (eval_sums, int_labels, lookahead_decays, lookahead_update,
                                             smoothed_cross_entropy, tta_logits)

# --------------------------------------------------------------------------- 1. crops in the graph


def crops(images, index, offsets, flips, translate: int):
    """`recipe.augment` in TensorFlow, from unpadded images: crop k is image index[k],
    reflect-padded by `translate`, shifted by offsets[k] - translate pixels (rows,
    columns), mirrored left-right where flips[k]. Padding the batch after the gather
    equals gathering from padded images (a resident copy 27% larger is never made)."""
    size = images.shape[1]
    batch = tf.gather(images, index)
    if translate:
        batch = tf.pad(batch, [[0, 0], [translate, translate], [translate, translate], [0, 0]], mode="REFLECT")
    span = tf.range(size, dtype=offsets.dtype)
    rows = offsets[:, 0:1] + span
    cols = offsets[:, 1:2] + span
    cols = tf.where(flips[:, None], tf.reverse(cols, axis=[1]), cols)
    batch = tf.gather(batch, rows, axis=1, batch_dims=1)
    return tf.gather(batch, cols, axis=2, batch_dims=1)


# --------------------------------------------------------------------------- the trainer


class TensorFlowTrainer(KerasTrainer):
    """The recipe under TensorFlow with a compiled step (the trainer interface of
    `epochs.run_epochs`). Builds on `KerasTrainer`: the same network, optimiser, schedule
    and epoch plans; it replaces how an epoch runs and how a split is scored.

    `net`: as for KerasTrainer (a test gives both trainers the same starting weights)."""

    def __init__(self, config, splits, net=None):
        super().__init__(config, splits, net)
        started = time.perf_counter()
        r = self.recipe
        # 1. resident data: the training images (the crops are cut per step) and the
        # evaluation splits in batches
        self.images = tf.constant(splits.x_train)
        self.eval_size = min(r.eval_batch_size, max(len(splits.x_val), len(splits.x_test), 1))
        self.resident = {name: (tf.constant(getattr(splits, f"x_{name}")),
                                tf.constant(int_labels(getattr(splits, f"y_{name}"))))
                         for name in ("val", "test") if len(getattr(splits, f"x_{name}"))}
        # the lookahead's state: an EMA of every float variable (the Lookahead callback's
        # set: weights and batch-norm statistics), starting from the initial values
        self.averaged = [v for v in self.model.weights if "float" in str(v.dtype)] if r.lookahead else []
        self.ema = [tf.Variable(tf.identity(v.value), trainable=False) for v in self.averaged]
        self.decays = tf.constant(lookahead_decays(self.total_steps, r))
        self.optimizer = self.model.optimizer
        self.optimizer.build(self.model.trainable_variables)
        self.setup_seconds += time.perf_counter() - started

        # 2. and 3. traced now, so compile time is measured apart from training
        started = time.perf_counter()
        b = self.batch_size
        self._step = tf.function(self._train_step, jit_compile=False).get_concrete_function(
            tf.TensorSpec([b], tf.int32), tf.TensorSpec([b, 2], tf.int32), tf.TensorSpec([b], tf.bool),
            tf.TensorSpec([b], tf.int32))
        self._eval = tf.function(self._eval_batch, jit_compile=False, reduce_retracing=True)
        self.compile_seconds = time.perf_counter() - started

    # ---- 2. the step

    def _train_step(self, index, offsets, flips, labels):
        """One optimiser step on the batch the plan names: (loss, correct predictions)."""
        x = crops(self.images, index, offsets, flips, self.translate)
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits = self.model(x, training=True)
            loss = tf.reduce_mean(smoothed_cross_entropy(logits, labels, self.recipe.label_smoothing,
                                                         self.num_classes))
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        if self.averaged:
            # airbench's lookahead after the step (the Lookahead callback's rule, in the graph)
            count = tf.convert_to_tensor(self.optimizer.iterations)  # steps taken, this one included
            for ema, variable in zip(self.ema, self.averaged):
                new_ema, w = lookahead_update(tf, ema, variable.value, count, self.decays, self.recipe.lookahead_every)
                ema.assign(new_ema)
                variable.assign(w)
        right = tf.reduce_sum(tf.cast(tf.argmax(logits, axis=-1, output_type=tf.int32) == labels, tf.int32))
        return loss, right

    # ---- the trainer interface of epochs.run_epochs

    def epoch_data(self, epoch: int):
        """The epoch's crops to cut, (index, offsets, flips) as tensors, and their labels,
        in step order (the images are made inside each step)."""
        index, offsets, flips = self.epoch_plan(epoch)
        plan = (tf.constant(index, tf.int32), tf.constant(offsets, tf.int32), tf.constant(flips, tf.bool))
        return plan, tf.constant(self.labels[index], tf.int32)

    def train_steps(self, plan, labels, first: int, count: int):
        """Optimiser steps first..first+count-1 of an epoch (step s trains on the s-th
        batch of the plan). Returns the steps' losses and right counts as tensors, read by
        `read_train` once the epoch is done."""
        b = self.batch_size
        losses, right = [], []
        for s in range(first, first + count):
            part = slice(s * b, (s + 1) * b)
            loss, ok = self._step(*(p[part] for p in plan), labels[part])
            losses.append(loss)
            right.append(ok)
        return losses, right

    def read_train(self, handle):
        losses, right = handle
        return np.array([float(v) for v in losses]), float(sum(int(v) for v in right))

    def finish_lookahead(self):
        for ema, variable in zip(self.ema, self.averaged):
            variable.assign(ema)

    # ---- 3. evaluation

    def _eval_batch(self, x, y):
        """[loss sum, correct plain, correct TTA] of one batch (inference mode)."""
        plain, tta = tta_logits(lambda v: self.model(v, training=False), x, self.recipe.tta_level)
        return eval_sums(plain, tta, y, tf.ones(tf.shape(y), tf.float32), self.recipe.label_smoothing,
                         self.num_classes)

    def evaluate(self, split: str):
        x, y = self.resident[split]
        n = int(x.shape[0])
        sums = tf.zeros(3)
        for start in range(0, n, self.eval_size):
            sums += self._eval(x[start:start + self.eval_size], y[start:start + self.eval_size])
        return sums, n

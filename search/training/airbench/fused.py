"""The airbench recipe under JAX: the whole trial on the device, one dispatch per epoch.

Why: on an H100 a bare jitted Keras-JAX step of airbench's network runs at ~260k img/s,
but a Python loop that dispatches one step at a time (and gathers each batch) reaches
~120k (BENCHMARKS.md, "Fast trial vs airbench94"): dispatch, not arithmetic, limits it.
So the page below keeps everything on the device and fuses the steps. In reading order:

1. the data, resident on the device (bf16 on a GPU), reflect-padded once;
2. each epoch's shuffled, shifted and flipped images, made by one jitted gather;
3. the train step: a pure function over `model.stateless_call` (weights as arrays),
   PyTorch-style Nesterov SGD with per-variable lr scales and coupled decay, then
   airbench's lookahead, all inside the step;
4. an epoch of steps fused into one call with `lax.fori_loop` on an accelerator (one step
   per call on a CPU: see `FusedTrainer.__init__`);
5. evaluation with test-time augmentation, batch by batch;
6. the end of training: the lookahead's last update, w <- EMA.

`FusedTrainer` only holds the state and calls these. Every function is compiled ahead of
time (`jit(...).lower(...).compile()`), so compile time is measured apart from training,
and XLA's persistent cache (mlruns/xla_cache) lets later trials of the same architecture
skip compilation (15-20 s on an H100). Per-step losses come back as one array and are read
an epoch later (`epochs.run_epochs` enqueues the next epoch first), so logging and pruning
never stall the device. Inputs are never donated: an evaluation enqueued on epoch e's
weights may still be reading them when epoch e+1 starts, and the state is small (~8 MB
per copy for airbench's network).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from search import models
from search.training.airbench import recipe as rc
from search.training.airbench.epochs import epoch_steps
from search.tracking import store
from search.training.schedules import multiplier

CACHE = store.STORE / "xla_cache"  # beside the local MLflow store (git-ignored)


def enable_compilation_cache(folder: Path = CACHE) -> None:
    """XLA's persistent compilation cache in `folder`, unless the user set one
    ($JAX_COMPILATION_CACHE_DIR). JAX decides whether to use the cache at the process's
    first compilation, so this runs before the first model is built. Entries are kept
    for compilations of 1 s or more (the train step takes 15-20 s on an H100; the eager
    ops Keras runs while building a model take milliseconds and are not cached)."""
    if jax.config.jax_compilation_cache_dir:
        return
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder.resolve()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# --------------------------------------------------------------------------- 1. data on the device


def eval_batches(x: np.ndarray, y: np.ndarray, size: int, dtype):
    """A split as device arrays of `size`-image batches (the last one zero-padded, so one
    compiled evaluation fits every batch) and masks that count only the real images.
    Returns (images, labels, masks, image count)."""
    n = len(x)
    count = -(-n // size)
    pad = count * size - n
    xs = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    ys = np.concatenate([y, np.zeros(pad, y.dtype)]) if pad else y
    mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    xs = jax.device_put(xs).astype(dtype)
    return ([xs[i * size:(i + 1) * size] for i in range(count)],
            [jnp.asarray(ys[i * size:(i + 1) * size]) for i in range(count)],
            [jnp.asarray(mask[i * size:(i + 1) * size]) for i in range(count)], n)


# --------------------------------------------------------------------------- 2. each epoch's images


def epoch_data(padded, labels, pattern, key, epoch, *, batch: int, steps: int, translate: int, flip: bool,
               flip_mode: str, size: int):
    """The epoch's `batch * steps` training images, augmented, and their labels: a seeded
    permutation (the remainder is dropped, as airbench's loader does), random shifts of up
    to `translate` pixels and flips (alternating per epoch, or a fresh coin), made by one
    gather from the padded images (`recipe.augment`)."""
    kp, ko, kf = jax.random.split(jax.random.fold_in(key, epoch), 3)
    m = batch * steps
    index = jax.random.permutation(kp, labels.shape[0])[:m]
    offsets = jax.random.randint(ko, (m, 2), 0, 2 * translate + 1)
    if not flip:
        flips = jnp.zeros(m, bool)
    elif flip_mode == "alternating":
        flips = rc.epoch_flips(pattern[index], epoch)
    else:
        flips = jax.random.bernoulli(kf, 0.5, (m,))
    return rc.augment(jnp, padded, index, offsets, flips, size), labels[index]


# --------------------------------------------------------------------------- 3. the train step


def initial_state(model) -> tuple[dict, list[bool]]:
    """The trial's state as arrays: trainable weights, non-trainable ones (batch-norm
    statistics), a momentum buffer per weight, lookahead EMAs (of the weights and of the
    float statistics) and the step count. Also which non-trainable variables are floats
    (the lookahead averages those; integer counters are left alone)."""
    tv = [jnp.asarray(v.value) for v in model.trainable_variables]
    ntv = [jnp.asarray(v.value) for v in model.non_trainable_variables]
    floats = [bool(jnp.issubdtype(v.dtype, jnp.floating)) for v in ntv]
    state = {"tv": tv, "ntv": ntv, "velocity": [jnp.zeros_like(w) for w in tv],
             "ema_tv": list(tv), "ema_ntv": [v for v, f in zip(ntv, floats) if f],
             "step": jnp.zeros((), jnp.int32)}
    return state, floats


def forward_loss(tv, ntv, xb, yb, *, model, smoothing: float, classes: int):
    """Mean label-smoothed cross-entropy of a batch from the logits (float32 whatever the
    compute precision), with the updated batch-norm statistics and the count of correct
    predictions as auxiliaries."""
    logits, ntv = model.stateless_call(tv, ntv, xb, training=True)
    logits = logits.astype(jnp.float32)
    loss = rc.smoothed_cross_entropy(logits, yb, smoothing, classes).mean()
    return loss, (ntv, jnp.sum(jnp.argmax(logits, -1) == yb))


def lookahead(state: dict, tv: list, ntv: list, floats: list[bool], decays, every: int) -> tuple[list, ...]:
    """airbench's lookahead after the step: every `every` steps both the weights and the
    float statistics move to their EMA (recipe.lookahead_update, d from the `decays`
    table). Returns the new (ema_tv, tv, ema_ntv, ntv)."""
    count = state["step"] + 1  # the step just taken, 1-based
    pairs = [rc.lookahead_update(jnp, e, w, count, decays, every) for e, w in zip(state["ema_tv"], tv)]
    ema_tv, tv = [e for e, _ in pairs], [w for _, w in pairs]
    stats = [v for v, f in zip(ntv, floats) if f]
    pairs = [rc.lookahead_update(jnp, e, v, count, decays, every) for e, v in zip(state["ema_ntv"], stats)]
    ema_ntv, synced = [e for e, _ in pairs], iter([v for _, v in pairs])
    ntv = [next(synced) if f else v for v, f in zip(ntv, floats)]
    return ema_tv, tv, ema_ntv, ntv


def train_step(state: dict, xb, yb, *, model, groups, rate, r, decays, floats: list[bool], classes: int):
    """One optimiser step on one batch: gradients of `forward_loss`, then per variable
    PyTorch's SGD with its group's lr scale and coupled decay (zero lr once a group's last
    step has passed: the whitening bias freeze), then the lookahead. Returns
    (new state, loss, correct predictions)."""
    (loss, (ntv, right)), grads = jax.value_and_grad(forward_loss, has_aux=True)(
        state["tv"], state["ntv"], xb, yb, model=model, smoothing=r.label_smoothing, classes=classes)
    step = state["step"]
    lr = rate(step)
    tv, velocity = [], []
    for w, g, v, (scale, decay, last) in zip(state["tv"], grads, state["velocity"], groups):
        step_lr = lr * scale if last is None else jnp.where(step < last, lr * scale, 0.0)
        w, v = rc.sgd_update(w, g, v, step_lr, r.momentum, r.nesterov, decay)
        tv.append(w)
        velocity.append(v)
    ema_tv, ema_ntv = state["ema_tv"], state["ema_ntv"]
    if r.lookahead:
        ema_tv, tv, ema_ntv, ntv = lookahead(state, tv, ntv, floats, decays, r.lookahead_every)
    new = {"tv": tv, "ntv": ntv, "velocity": velocity, "ema_tv": ema_tv, "ema_ntv": ema_ntv, "step": step + 1}
    return new, loss, right


# --------------------------------------------------------------------------- 4. an epoch of fused steps


def one_step(state, x_epoch, y_epoch, s, *, batch: int, step):
    """Step `s` of the epoch: its batch sliced from the epoch's images on the device."""
    xb = lax.dynamic_slice_in_dim(x_epoch, s * batch, batch)
    yb = lax.dynamic_slice_in_dim(y_epoch, s * batch, batch)
    return step(state, xb, yb)


def run_steps(state, x_epoch, y_epoch, first, count: int, *, one):
    """Steps first..first+count-1 of the epoch in one `lax.fori_loop` (`count` is static:
    XLA sees the trip count). Returns the state and the steps' losses and correct counts."""
    def body(i, carry):
        state, losses, right = carry
        state, loss, ok = one(state, x_epoch, y_epoch, first + i)
        return state, losses.at[i].set(loss), right.at[i].set(ok)

    init = (state, jnp.zeros(count, jnp.float32), jnp.zeros(count, jnp.int32))
    return lax.fori_loop(0, count, body, init)


# --------------------------------------------------------------------------- 5. evaluation with TTA


def eval_batch(tv, ntv, xb, yb, mb, *, model, level: int, smoothing: float, classes: int):
    """[loss sum, correct plain, correct TTA] of one padded evaluation batch (inference
    mode; `mb` masks the padding)."""
    def predict(v):
        return model.stateless_call(tv, ntv, v, training=False)[0]

    plain, tta = rc.tta_logits(predict, xb, level)
    return rc.eval_sums(plain, tta, yb, mb, smoothing, classes)


# --------------------------------------------------------------------------- 6. the end


def finish_lookahead(state: dict, floats: list[bool]) -> dict:
    """w <- EMA for the weights and the float statistics: airbench's last lookahead update
    (d = 1), after the last step."""
    ema = iter(state["ema_ntv"])
    ntv = [next(ema) if f else v for v, f in zip(state["ntv"], floats)]
    return {**state, "tv": list(state["ema_tv"]), "ntv": ntv}


# --------------------------------------------------------------------------- the trainer


class FusedTrainer:
    """One trial of the recipe: the state, and the functions above compiled for it (the
    trainer interface of `epochs.run_epochs`; every call returns at once).

    `net`: the network to train, its whitening filters already set (a test or a reference
    run gives both trainers the same one); None builds it from the config and sets the
    filters from the resident training images."""

    asynchronous = True

    def __init__(self, config, splits, net=None):
        import keras

        enable_compilation_cache()
        started = time.perf_counter()
        r = self.recipe = config.train.airbench
        aug = config.data.augment
        # The network, its whitening filters computed on the device from the resident images.
        x_train = jax.device_put(splits.x_train)
        if net is None:
            net = models.build_model(config.model, splits.input_shape, splits.num_classes)
            models.fit_statistics(net, config.model, x_train)
        self.net = net
        self.model = rc.logits_model(self.net)
        mixed = keras.mixed_precision.dtype_policy().name == "mixed_bfloat16"
        self.dtype = dtype = jnp.bfloat16 if mixed else jnp.float32
        self.batch_size, self.steps_per_epoch, self.total_steps = rc.shape_of(config, splits)
        B, S, total = self.batch_size, self.steps_per_epoch, self.total_steps
        k = splits.num_classes
        size = splits.x_train.shape[1]

        # 1. the data, resident
        self.padded = rc.pad_reflect(jnp, x_train.astype(dtype), aug.translate)
        self.labels = jnp.asarray(rc.int_labels(splits.y_train))
        self.pattern = jnp.asarray(rc.flip_pattern(len(splits.x_train), config.train.seed))
        self.key = jax.random.key(config.train.seed)
        eval_size = min(r.eval_batch_size, max(len(splits.x_val), len(splits.x_test)))
        self.splits = {name: eval_batches(getattr(splits, f"x_{name}"), rc.int_labels(getattr(splits, f"y_{name}")),
                                          eval_size, dtype)
                       for name in ("val", "test") if len(getattr(splits, f"x_{name}"))}
        # the state and the functions, with the trial's constants bound
        self.state, self.floats = initial_state(self.model)
        self.rate = multiplier(r.schedule, r.learning_rate, S, total)
        prepare = functools.partial(epoch_data, batch=B, steps=S, translate=aug.translate, flip=aug.flip,
                                    flip_mode=r.flip, size=size)
        step = functools.partial(train_step, model=self.model, groups=rc.variable_groups(self.model, r, S),
                                 rate=self.rate, r=r, decays=jnp.asarray(rc.lookahead_decays(total, r)),
                                 floats=self.floats, classes=k)
        one = functools.partial(one_step, batch=B, step=step)
        self._chunked = jax.jit(functools.partial(run_steps, one=one), static_argnums=4)
        evaluate = functools.partial(eval_batch, model=self.model, level=r.tta_level, smoothing=r.label_smoothing,
                                     classes=k)
        self.setup_seconds = time.perf_counter() - started

        # Compile everything now (or fetch it from the persistent cache). Steps per
        # dispatch: a whole epoch on an accelerator. On a CPU, one: XLA:CPU runs a step
        # 5-10x slower inside a loop than jitted alone (BENCHMARKS.md, 2-core CPU
        # 2026-11-26: 0.95 s per step alone, 5.4 s in lax.scan, 10.4 s in fori_loop), and
        # dispatch costs nothing next to a CPU step.
        started = time.perf_counter()
        i32 = jnp.zeros((), jnp.int32)
        self.epoch_shape = (jax.ShapeDtypeStruct((B * S, size, size, 3), dtype),
                            jax.ShapeDtypeStruct((B * S,), jnp.int32))
        xs, ys, ms, _ = self.splits["test"]
        self.chunk = r.steps_per_dispatch or (S if jax.default_backend() != "cpu" else 1)
        self._prepare = jax.jit(prepare).lower(self.padded, self.labels, self.pattern, self.key, i32).compile()
        self._step = jax.jit(one).lower(self.state, *self.epoch_shape, i32).compile() if self.chunk == 1 else None
        self._steps = {}  # chunk length -> executable; now those that the trial's epochs need
        for steps in set(epoch_steps(S, total)) if self.chunk > 1 else ():
            for first in range(0, steps, self.chunk):
                self._steps_of(min(self.chunk, steps - first))
        self._eval = jax.jit(evaluate).lower(self.state["tv"], self.state["ntv"], xs[0], ys[0], ms[0]).compile()
        self.compile_seconds = time.perf_counter() - started

    def _steps_of(self, count: int):
        """The executable that runs `count` fused steps (compiled once per length; a test
        or a reference run may ask for lengths that a trial's epochs do not)."""
        if count not in self._steps:
            self._steps[count] = self._chunked.lower(self.state, *self.epoch_shape, jnp.zeros((), jnp.int32),
                                                     count).compile()
        return self._steps.get(count)

    # ---- the trainer interface of epochs.run_epochs

    def epoch_data(self, epoch: int):
        """The epoch's augmented images and labels, made on the device (step s trains on
        the s-th batch of them)."""
        return self._prepare(self.padded, self.labels, self.pattern, self.key, jnp.int32(epoch))

    def train_steps(self, x, y, first: int, count: int):
        """Optimiser steps first..first+count-1 of an epoch whose images are `x`, `y`
        (device arrays from `epoch_data`, or host arrays of the same shape)."""
        x, y = jnp.asarray(x, self.dtype), jnp.asarray(y, jnp.int32)
        losses, right = [], []
        if self.chunk == 1:
            for s in range(first, first + count):
                self.state, loss, ok = self._step(self.state, x, y, jnp.int32(s))
                losses.append(loss)
                right.append(ok)
            return "steps", losses, right
        for start in range(first, first + count, self.chunk):
            run = self._steps_of(min(self.chunk, first + count - start))
            self.state, loss, ok = run(self.state, x, y, jnp.int32(start))
            losses.append(loss)
            right.append(ok)
        return "chunks", losses, right

    def read_train(self, handle):
        kind, losses, right = handle
        if kind == "steps":  # one scalar per step
            return np.array([float(v) for v in losses]), float(sum(int(v) for v in right))
        # one array per chunk, a value per step
        return np.concatenate([np.asarray(v) for v in losses]), float(sum(np.asarray(v).sum() for v in right))

    def finish_lookahead(self):
        if self.recipe.lookahead:
            self.state = finish_lookahead(self.state, self.floats)

    def evaluate(self, split: str):
        xs, ys, ms, n = self.splits[split]
        sums = None
        for xb, yb, mb in zip(xs, ys, ms):
            part = self._eval(self.state["tv"], self.state["ntv"], xb, yb, mb)
            sums = part if sums is None else sums + part
        return sums, n

    def read_eval(self, handle) -> dict:
        return rc.eval_metrics(*handle)

    def learning_rate(self, step: int) -> float:
        return float(self.rate(np.float32(step)))

    def export(self):
        """The Keras model (softmax on top) holding the trained state."""
        for variable, value in zip(self.model.trainable_variables, self.state["tv"]):
            variable.assign(value)
        for variable, value in zip(self.model.non_trainable_variables, self.state["ntv"]):
            variable.assign(value)
        return self.net

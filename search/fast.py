"""The airbench recipe's fast path under JAX: the whole trial on the device, one dispatch
per epoch.

Measured on an H100 (shared/device/README.md): a bare jitted Keras-JAX step of airbench's
network runs at ~260k img/s, but a Python loop that dispatches one step at a time (and
gathers each batch) reaches ~120k: dispatch, not arithmetic, limits it. So here:

* the training set stays on the device (bf16 on a GPU), reflect-padded once; each epoch's
  shuffled, shifted and flipped images are made by one jitted gather (`recipe.augment`);
* the train step is a pure function over `model.stateless_call` (trainable and
  non-trainable variables as arrays): PyTorch-style Nesterov SGD with per-variable lr
  scales and coupled decay, and airbench's lookahead, all inside the step;
* `lax.fori_loop` fuses a whole epoch of steps (or `steps_per_dispatch`) into one call
  on an accelerator (one step per call on a CPU, see `FusedTrainer`);
  per-step losses come back as one array, read a whole epoch later (`recipe.run_epochs`
  enqueues the next epoch first), so logging and pruning never stall the device;
* every function is compiled ahead of time (`jit(...).lower(...).compile()`), so compile
  time is measured apart from training, and XLA's persistent cache (mlruns/xla_cache)
  lets later trials of the same architecture skip compilation (15-20 s on an H100).

Inputs are never donated: an evaluation enqueued on epoch e's weights may still be
reading them when epoch e+1 starts, and the state is small (~8 MB per copy for airbench).
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from search import models
from search import recipe as rc
from search.schedules import multiplier

CACHE = Path("mlruns") / "xla_cache"  # beside the local MLflow store (git-ignored)


def enable_compilation_cache(folder: Path = CACHE) -> None:
    """XLA's persistent compilation cache in `folder`, unless the user set one
    ($JAX_COMPILATION_CACHE_DIR). JAX decides whether to use the cache at the process's
    first compilation, so this runs before the first model is built. Entries are kept
    for compilations of 1 s or more (the train step takes 15-20 s on an H100; the
    eager ops Keras runs while building a model take milliseconds and are not cached)."""
    if jax.config.jax_compilation_cache_dir:
        return
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder.resolve()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _padded_batches(x: np.ndarray, y: np.ndarray, size: int, dtype):
    """A split as device arrays of `size`-image batches (the last one zero-padded) and
    masks that count only real images."""
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


class FusedTrainer:
    """One trial of the recipe as jitted JAX functions over the model's variables (the
    trainer interface of `recipe.run_epochs`)."""

    asynchronous = True

    def __init__(self, config, splits):
        import keras

        enable_compilation_cache()
        started = time.perf_counter()
        r = config.train.airbench
        self.recipe = r
        # The network, its whitening filters computed on the device from the resident images.
        x_train = jax.device_put(splits.x_train)
        self.net = models.build_model(config.model, splits.input_shape, splits.num_classes)
        models.fit_statistics(self.net, config.model, x_train)
        self.model = rc.logits_model(self.net)
        mixed = keras.mixed_precision.dtype_policy().name == "mixed_bfloat16"
        dtype = jnp.bfloat16 if mixed else jnp.float32
        self.batch_size, self.steps_per_epoch = rc.shape_of(config, splits)
        B, S = self.batch_size, self.steps_per_epoch
        total = S * config.train.epochs
        k = splits.num_classes
        aug = config.data.augment
        t = aug.translate
        size = splits.x_train.shape[1]

        # ---- data, resident on the device
        n = len(splits.x_train)
        self.padded = rc.pad_reflect(jnp, x_train.astype(dtype), t)
        self.labels = jnp.asarray(rc.int_labels(splits.y_train))
        self.pattern = jnp.asarray(rc.flip_pattern(n, config.train.seed))
        self.key = jax.random.key(config.train.seed)
        eval_size = min(r.eval_batch_size, max(len(splits.x_val), len(splits.x_test)))
        self.splits = {name: _padded_batches(getattr(splits, f"x_{name}"),
                                             rc.int_labels(getattr(splits, f"y_{name}")), eval_size, dtype)
                       for name in ("val", "test")}

        # ---- the state: weights, momentum buffers, lookahead EMAs, step
        tv = [jnp.asarray(v.value) for v in self.model.trainable_variables]
        ntv = [jnp.asarray(v.value) for v in self.model.non_trainable_variables]
        floats = [jnp.issubdtype(v.dtype, jnp.floating) for v in ntv]
        self.state = {"tv": tv, "ntv": ntv, "velocity": [jnp.zeros_like(w) for w in tv],
                      "ema_tv": list(tv), "ema_ntv": [v for v, f in zip(ntv, floats) if f],
                      "step": jnp.zeros((), jnp.int32)}
        groups = rc.variable_groups(self.model, r, S)
        rate = multiplier(r.schedule, r.learning_rate, S, total)
        self.rate = rate
        model = self.model

        def forward_loss(tv, ntv, xb, yb):
            logits, ntv = model.stateless_call(tv, ntv, xb, training=True)
            logits = logits.astype(jnp.float32)
            loss = rc.smoothed_cross_entropy(logits, yb, r.label_smoothing, k).mean()
            return loss, (ntv, jnp.sum(jnp.argmax(logits, -1) == yb))

        def train_step(state, xb, yb):
            (loss, (ntv, right)), grads = jax.value_and_grad(forward_loss, has_aux=True)(
                state["tv"], state["ntv"], xb, yb)
            step = state["step"]
            lr = rate(step)
            tv, velocity = [], []
            for w, g, v, (scale, decay, last) in zip(state["tv"], grads, state["velocity"], groups):
                step_lr = lr * scale if last is None else jnp.where(step < last, lr * scale, 0.0)
                w, v = rc.sgd_update(w, g, v, step_lr, r.momentum, r.nesterov, decay)
                tv.append(w)
                velocity.append(v)
            step = step + 1
            ema_tv, ema_ntv = state["ema_tv"], state["ema_ntv"]
            if r.lookahead:  # on the weights and on the float state (batch-norm statistics)
                count = step.astype(jnp.float32)
                pairs = [rc.lookahead_update(jnp, e, w, count, total, r) for e, w in zip(ema_tv, tv)]
                ema_tv, tv = [e for e, _ in pairs], [w for _, w in pairs]
                stats = [v for v, f in zip(ntv, floats) if f]
                pairs = [rc.lookahead_update(jnp, e, v, count, total, r) for e, v in zip(ema_ntv, stats)]
                ema_ntv = [e for e, _ in pairs]
                synced = iter([v for _, v in pairs])
                ntv = [next(synced) if f else v for v, f in zip(ntv, floats)]
            new = {"tv": tv, "ntv": ntv, "velocity": velocity, "ema_tv": ema_tv, "ema_ntv": ema_ntv, "step": step}
            return new, loss, right

        def one_step(state, x_epoch, y_epoch, s):
            xb = lax.dynamic_slice_in_dim(x_epoch, s * B, B)
            yb = lax.dynamic_slice_in_dim(y_epoch, s * B, B)
            return train_step(state, xb, yb)

        def run_steps(state, x_epoch, y_epoch, first, count: int):
            # `count` is static: XLA sees the loop's trip count.
            def body(i, carry):
                state, losses, right = carry
                state, loss, ok = one_step(state, x_epoch, y_epoch, first + i)
                return state, losses.at[first + i].set(loss), right.at[first + i].set(ok)

            init = (state, jnp.zeros(S, jnp.float32), jnp.zeros(S, jnp.int32))
            return lax.fori_loop(0, count, body, init)

        def prepare_epoch(padded, labels, pattern, key, epoch):
            kp, ko, kf = jax.random.split(jax.random.fold_in(key, epoch), 3)
            index = jax.random.permutation(kp, n)[:B * S]
            offsets = jax.random.randint(ko, (B * S, 2), 0, 2 * t + 1)
            if not aug.flip:
                flips = jnp.zeros(B * S, bool)
            elif r.flip == "alternating":
                flips = rc.epoch_flips(pattern[index], epoch)
            else:
                flips = jax.random.bernoulli(kf, 0.5, (B * S,))
            return rc.augment(jnp, padded, index, offsets, flips, size), labels[index]

        def eval_batch(tv, ntv, xb, yb, mb):
            def predict(v):
                return model.stateless_call(tv, ntv, v, training=False)[0]

            plain, tta = rc.tta_logits(predict, xb, r.tta_level)
            return rc.eval_sums(plain, tta, yb, mb, r.label_smoothing, k)

        self.setup_seconds = time.perf_counter() - started
        # ---- compile everything now (or fetch it from the persistent cache)
        started = time.perf_counter()
        i32 = jnp.zeros((), jnp.int32)
        x_epoch = jax.ShapeDtypeStruct((B * S, size, size, 3), dtype)
        y_epoch = jax.ShapeDtypeStruct((B * S,), jnp.int32)
        xs, ys, ms, _ = self.splits["val"]
        # Steps per dispatch: a whole epoch on an accelerator. On a CPU, one: XLA:CPU runs a
        # step 5-10x slower inside a loop than jitted alone (2-core development CPU,
        # 2026-11-26, 8/32/32-wide net, batch 256: 0.95 s per step alone, 5.4 s in
        # lax.scan, 10.4 s in fori_loop; BENCHMARKS.md), and dispatch costs nothing next
        # to a CPU step.
        self.chunk = r.steps_per_dispatch or (S if jax.default_backend() != "cpu" else 1)
        self._prepare = jax.jit(prepare_epoch).lower(self.padded, self.labels, self.pattern, self.key, i32).compile()
        if self.chunk == 1:
            self._step = jax.jit(one_step).lower(self.state, x_epoch, y_epoch, i32).compile()
        else:  # one executable per chunk length (two when the chunk does not divide the epoch)
            counts = {min(self.chunk, S - first) for first in range(0, S, self.chunk)}
            steps = jax.jit(run_steps, static_argnums=4)
            self._steps = {c: steps.lower(self.state, x_epoch, y_epoch, i32, c).compile() for c in counts}
        self._eval = jax.jit(eval_batch).lower(tv, ntv, xs[0], ys[0], ms[0]).compile()
        self.compile_seconds = time.perf_counter() - started

    # ---- the trainer interface of recipe.run_epochs (all calls return at once)

    def train_epoch(self, epoch: int):
        x, y = self._prepare(self.padded, self.labels, self.pattern, self.key, jnp.int32(epoch))
        losses, right = [], []
        if self.chunk == 1:
            for s in range(self.steps_per_epoch):
                self.state, loss, ok = self._step(self.state, x, y, jnp.int32(s))
                losses.append(loss)
                right.append(ok)
            return "steps", losses, right
        for first in range(0, self.steps_per_epoch, self.chunk):
            count = min(self.chunk, self.steps_per_epoch - first)
            self.state, loss, ok = self._steps[count](self.state, x, y, jnp.int32(first))
            losses.append(loss)
            right.append(ok)
        return "chunks", losses, right

    def read_train(self, handle):
        kind, losses, right = handle
        if kind == "steps":  # one scalar per step
            return np.array([float(v) for v in losses]), float(sum(int(v) for v in right))
        # each chunk filled its own steps of the epoch's arrays, zeros elsewhere
        return np.sum([np.asarray(v) for v in losses], axis=0), float(sum(np.asarray(v).sum() for v in right))

    def finish_lookahead(self):
        """w <- ema (airbench's last lookahead update, with d = 1)."""
        if self.recipe.lookahead:
            it = iter(self.state["ema_ntv"])
            ntv = [next(it) if jnp.issubdtype(v.dtype, jnp.floating) else v for v in self.state["ntv"]]
            self.state = {**self.state, "tv": list(self.state["ema_tv"]), "ntv": ntv}

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

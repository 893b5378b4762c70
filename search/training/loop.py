"""The one training loop: a trial, from a `RunConfig` and its splits to a `TrialResult`.
Knows no engine and no tracker.

It learns of pruning only through `report(epoch, objective) -> bool` (True: stop now, the
trial is pruned) and hands each epoch's metrics to `on_epoch` (the tracker logs them in
one batched call). The standard path, in order: seed -> precision policy -> model ->
optimizer and schedule -> fit with the `TrialMonitor` callback (timing, loss window, NaN
check, best weights, pruning, early stopping) -> the best epoch's weights -> the test set.

Training modes that train differently (the airbench recipe, transfer learning) register
with this loop (`register_mode`); a config that a mode applies to is trained by that mode,
with the same arguments and the same `TrialResult`. The loop never imports a mode.

Streamed splits (a folder too large for memory) train on the standard path only, fed batch
by batch (search/training/streaming.py); the modes hold their data in memory and refuse them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import keras

from search.errors import UsageError
from search.training.components import (augmentation, build_model, loss_function, mean_rate, optimizer,
                                        trial_setup)
from search.training.monitor import EpochSink, Report, TrialMonitor
from search.training.results import TrialResult, TrialState


TEST_BATCH = 512  # images per evaluation batch

# Why a mode does not take streamed data (a folder over the in-memory limit), in one line.
STREAM_REFUSAL = {
    "airbench": "train.recipe airbench: the recipe keeps the whole training split on the device "
                "(padded once, augmented there each epoch)",
    "transfer": "a transfer scheme: it caches every image's embedding (or fine-tunes on arrays) in memory",
}

# --------------------------------------------------------------------------- modes


@dataclass(frozen=True)
class Mode:
    """A way of training that takes over the trials whose config it applies to."""

    name: str
    applies: Callable[[object], bool]  # RunConfig -> does this mode train it?
    train: Callable[..., TrialResult]  # same signature as `train_and_evaluate`


MODES: dict[str, Mode] = {}


def register_mode(name: str, applies: Callable[[object], bool], train: Callable[..., TrialResult]) -> None:
    """Register (or replace) a training mode. Modes register when their module is imported
    (search/training/__init__.py imports them all before the first trial)."""
    MODES[name] = Mode(name, applies, train)


def mode_for(config) -> Optional[Mode]:
    """The registered mode that trains `config`, or None for the standard path."""
    return next((mode for mode in MODES.values() if mode.applies(config)), None)


def check_streamable(config, splits) -> None:
    """UsageError when `config`'s mode cannot take `splits` because they stream."""
    mode = mode_for(config)
    if mode is not None and getattr(splits, "streamed", False):
        why = STREAM_REFUSAL.get(mode.name, f"the {mode.name} mode holds its data in memory")
        raise UsageError(f"{why}; a folder over the in-memory limit streams, so train it on the standard "
                         "path (train.recipe: standard, no transfer scheme)")


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
    """
    check_streamable(config, splits)
    mode = mode_for(config)
    if mode is not None:
        return mode.train(config, splits, report=report, on_epoch=on_epoch, progress=progress)
    with trial_setup(config):
        net = build_model(config, splits)
        augmenting = bool(config.data.augment.flip or config.data.augment.translate)
        augment = augmentation(config, config.train.seed, splits.input_shape[:2])
        trainer = keras.Sequential([keras.Input(splits.input_shape), *augment, net],
                                   name="trainer") if augmenting else net
        steps = math.ceil(len(splits.x_train) / config.train.batch_size)
        trainer.compile(optimizer=optimizer(config, steps), loss=loss_function(config), metrics=["accuracy"])
        monitor = TrialMonitor(config, len(splits.x_train), report, on_epoch, progress, keep=net)
        if getattr(splits, "streamed", False):  # a folder too large for memory: batch by batch
            from search.training.streaming import Batches

            batch = config.train.batch_size
            trainer.fit(Batches(splits.x_train, splits.y_train, batch, seed=config.train.seed),
                        epochs=config.train.epochs, callbacks=[monitor], verbose=0,
                        validation_data=Batches(splits.x_val, splits.y_val, TEST_BATCH) if len(splits.x_val)
                        else None)
            test = Batches(splits.x_test, splits.y_test, TEST_BATCH)
        else:
            trainer.fit(splits.x_train, splits.y_train, batch_size=config.train.batch_size,
                        epochs=config.train.epochs, validation_data=(splits.x_val, splits.y_val),
                        callbacks=[monitor], verbose=0, shuffle=True)
            test = (splits.x_test, splits.y_test)
    return finish(monitor, config, net, test=test)


def finish(monitor: TrialMonitor, config, net, *, test, scored=None, **record) -> TrialResult:
    """The trial's result from its monitor: FAILED with the reason; else `net` set to the
    best epoch's weights and PRUNED; else COMPLETE with `scored` (default `net`; transfer
    scheme 1 scores its head on cached embeddings) evaluated on `test` = (x, y).
    `record` is passed on to the result (transfer learning's params, tags, artifacts)."""
    common = dict(objective=monitor.best_value, best_epoch=monitor.best_epoch,
                  epochs_run=len(monitor.history), history=tuple(monitor.history),
                  train_seconds=monitor.train_seconds, images_per_second=mean_rate(monitor.history), **record)
    if monitor.failure:
        return TrialResult(state=TrialState.FAILED, reason=monitor.failure, **common)
    if monitor.best_weights is not None:
        net.set_weights(monitor.best_weights)
    if monitor.pruned:
        return TrialResult(state=TrialState.PRUNED, reason=f"pruned after epoch {len(monitor.history)}",
                           model=net, **common)
    scored = net if scored is None else scored  # test: (x, y) arrays, or streamed batches
    scored.compile(loss=loss_function(config), metrics=["accuracy"])
    if isinstance(test, tuple):
        test_loss, test_accuracy = scored.evaluate(*test, batch_size=TEST_BATCH, verbose=0)
    else:  # streamed batches
        test_loss, test_accuracy = scored.evaluate(test, verbose=0)
    return TrialResult(state=TrialState.COMPLETE, model=net,
                       test={"test_accuracy": float(test_accuracy), "test_loss": float(test_loss)}, **common)

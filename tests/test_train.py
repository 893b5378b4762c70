"""The trainer: one configuration on tiny real-shaped data, under the test backend."""

from __future__ import annotations

import math

import numpy as np
import pytest

from search.config import DataConfig, RunConfig, Schedule, TrainConfig
from search.data import load_cifar10, prepare
from search.models import vgg
from search.training import train_and_evaluate
from search.training.results import TrialState


def tiny_config(**train) -> RunConfig:
    options = dict(epochs=2, batch_size=50, learning_rate=0.05, loss_window=2)
    options.update(train)
    return RunConfig(model=vgg.Config(blocks=1, filters=4, dense_units=16, dropout=0.0, head_dropout=0.0),
                     data=DataConfig(train_size=300, val_size=100, test_size=100,
                                     augment={"flip": False, "translate": 0}),
                     train=TrainConfig(**options))


@pytest.fixture(scope="module")
def splits(tiny_cifar):
    return prepare(load_cifar10(tiny_cifar), tiny_config().data)


def test_one_run_completes_and_learns(splits):
    epochs = []
    result = train_and_evaluate(tiny_config(epochs=3), splits, on_epoch=lambda e, m, p: epochs.append((e, m, p)))
    assert result.state is TrialState.COMPLETE
    assert [e for e, _, _ in epochs] == [1, 2, 3]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds", "images_per_second",
            "learning_rate"} <= set(epochs[0][1])
    assert result.objective == max(m["val_accuracy"] for _, m, _ in epochs)
    assert result.objective > 0.3  # chance is 0.1; the synthetic classes are easy
    assert 0 <= result.test["test_accuracy"] <= 1 and result.images_per_second > 0


def test_running_loss_is_logged_every_window_of_batches(splits):
    points = []
    train_and_evaluate(tiny_config(epochs=2, loss_window=2), splits, on_epoch=lambda e, m, p: points.extend(p))
    # 300 images / 50 per batch = 6 batches per epoch, 12 in all -> a point every 2 batches.
    assert [step for step, _ in points] == [2, 4, 6, 8, 10, 12]
    assert all(math.isfinite(v) and v > 0 for _, v in points)


def test_running_loss_window_equals_the_mean_of_batch_losses(splits):
    """With window = batches per epoch, the window mean is exactly the epoch's mean loss."""
    seen = []
    train_and_evaluate(tiny_config(epochs=2, loss_window=6), splits, on_epoch=lambda e, m, p: seen.append((m, p)))
    for metrics, points in seen:
        assert points[0][1] == pytest.approx(metrics["loss"], rel=1e-4)


def test_nan_loss_fails_the_run_with_the_reason(splits):
    result = train_and_evaluate(tiny_config(learning_rate=1e12, epochs=3, loss_window=1), splits)
    assert result.state is TrialState.FAILED
    assert "loss became nan" in result.reason or "loss became inf" in result.reason


def test_report_returning_true_prunes_at_once(splits):
    calls = []

    def report(epoch, value):
        calls.append((epoch, value))
        return True

    result = train_and_evaluate(tiny_config(epochs=4), splits, report=report)
    assert result.state is TrialState.PRUNED and result.epochs_run == 1 and len(calls) == 1
    assert not result.test  # pruned trials are not evaluated on the test set


def test_best_epoch_weights_are_restored_not_the_last(splits):
    # Learn for two epochs, then a 10x learning rate wrecks the network (without NaN).
    config = tiny_config(epochs=4, learning_rate=0.05,
                         schedule=Schedule(kind="step", drop_epochs=(2,), drop_factor=10.0))
    result = train_and_evaluate(config, splits)
    history = [h["val_accuracy"] for h in result.history]
    assert result.state is TrialState.COMPLETE
    assert history[-1] < max(history)  # the premise: the last epoch is not the best
    assert result.best_epoch == int(np.argmax(history)) + 1
    _, accuracy = result.model.evaluate(splits.x_val, splits.y_val, verbose=0)
    assert accuracy == pytest.approx(result.objective, abs=1e-6)


def test_early_stopping_stops_after_patience(splits):
    result = train_and_evaluate(tiny_config(epochs=8, learning_rate=1e-7, early_stopping={"patience": 1}), splits)
    assert result.state is TrialState.COMPLETE and result.epochs_run < 8


def test_coupled_weight_decay_shrinks_kernels_more_than_decoupled(splits):
    def kernel_norm(mode):
        config = tiny_config(epochs=1, learning_rate=1e-3, weight_decay=1.0, weight_decay_mode=mode)
        model = train_and_evaluate(config, splits).model
        return float(np.linalg.norm(model.get_layer("head_dense").get_weights()[0]))

    assert kernel_norm("coupled") < kernel_norm("decoupled")


@pytest.mark.parametrize("schedule,steps,expected", [
    (Schedule(kind="constant"), [0, 50, 99], [1.0, 1.0, 1.0]),
    (Schedule(kind="step", drop_epochs=(2, 3)), [0, 19, 20, 30], [1.0, 1.0, 0.1, 0.01]),
    (Schedule(kind="cosine"), [0, 50, 100], [1.0, 0.5, 0.0]),
    (Schedule(kind="inverse_time"), [0, 10, 30], [1.0, 0.5, 0.25]),
    (Schedule(kind="onecycle", start_fraction=0.2, peak_fraction=0.25, final_fraction=0.0), [0, 25, 100],
     [0.2, 1.0, 0.0]),
    (Schedule(kind="constant", warmup_epochs=1), [0, 4, 9, 20], [0.1, 0.5, 1.0, 1.0]),
])
def test_schedule_multipliers(schedule, steps, expected):
    from search.training.schedules import multiplier

    rate = multiplier(schedule, learning_rate=1.0, steps_per_epoch=10, total_steps=100)
    assert [float(np.asarray(rate(s))) for s in steps] == pytest.approx(expected, abs=1e-6)

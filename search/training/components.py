"""What a trial is built from, whichever path trains it: the seed and precision policy,
the network (with its data-dependent weights set), on-device augmentation, the loss and
the optimizer with its learning-rate schedule; and what it hands over: the network wrapped
into the model of raw pixels (search/models/classifier.py).

Keras is imported at the top: import this module only after `search.backend.select()`
has chosen the backend (the command line and the engines do).
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np

from search import models
from search.backend import device_kind
from search.training.schedules import keras_schedule


def build_model(config, splits):
    """The bare network for `config` (what gets saved and exported), with its
    data-dependent weights (a whitening stem's filters) set from the training split."""
    net = models.build_model(config.model, splits.input_shape, splits.num_classes)
    models.fit_statistics(net, config.model, splits.x_train)
    return net


def classifier(config, splits, net):
    """`net` as the model a user takes away: raw 0..255 pixels in (standardised inside with
    the training split's constants), probabilities out, with TTA inside where `served` says."""
    from search.models.classifier import wrap
    from search.training.results import served

    return wrap(net, splits.mean, splits.std, served(config)[1])


def augmentation(config, seed: int, image_size: tuple[int, int] = (32, 32)):
    """Keras layers for the data config's augmentation; they run on the device inside the
    training step under every backend and are identity at inference."""
    from keras import layers

    aug = config.data.augment
    out = []
    if aug.flip:
        out.append(layers.RandomFlip("horizontal", seed=seed, name="aug_flip"))
    if aug.translate:
        # Whole-pixel shifts: nearest interpolation keeps pixels crisp (no bilinear blur).
        # RandomTranslation takes fractions of the height and width.
        height, width = image_size
        out.append(layers.RandomTranslation(aug.translate / height, aug.translate / width, fill_mode="reflect",
                                            interpolation="nearest", seed=seed + 1, name="aug_translate"))
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


def mean_rate(history) -> float:
    """Mean training images/s of a trial's epochs. Epoch 1 includes compilation; average
    the rest when there is a rest."""
    rates = [h["images_per_second"] for h in history]
    rates = rates[1:] if len(rates) > 1 else rates
    return float(np.mean(rates)) if rates else 0.0

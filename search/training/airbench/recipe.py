"""The airbench recipe's pieces, written once for both paths (Keras fit and fused JAX):
the data on the device and its augmentation, the logits and TTA, the loss, the optimiser
and lookahead rules.

Keller Jordan's airbench94 (2024) trains a whitened VGG to 94% on CIFAR-10 in seconds;
`config.AirbenchRecipe` holds its optimisation settings (and how airbench's units map to
ours), `search/models/vgg.py` its network. Array functions take the array module (`numpy`
or `jax.numpy`) as `xp`; model-level ones use `keras.ops`, so they run on every backend.
"""

from __future__ import annotations

import math
from typing import Optional

import keras
import numpy as np
from keras import ops

from search.models.layers import PatchWhitening, tta_merge, tta_views

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
    views go through `predict` as one batch (inference batch-norm is per example). The
    views and the average are `search.models.layers.tta_views` and `tta_merge`: the layers
    of the model a trial hands over run the same code."""
    if level == 0:
        plain = predict(x)
        return plain, plain
    return tta_merge(ops.cast(predict(tta_views(x, level)), "float32"), level)


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
    kind = {}
    for layer in model.layers:
        for v in layer.trainable_weights:
            if isinstance(layer, keras.layers.BatchNormalization):
                kind[id(v)] = "norm"
            elif isinstance(layer, PatchWhitening):
                kind[id(v)] = "whiten"
    # airbench: `model[0].bias.requires_grad = (epoch < whiten_bias_epochs)`, so optimiser
    # steps 0 .. whiten_bias_epochs * steps_per_epoch - 1 move it, and no later one does.
    limit = None if recipe.whiten_bias_epochs is None else recipe.whiten_bias_epochs * steps_per_epoch
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


def lookahead_decays(total_steps: int, recipe) -> np.ndarray:
    """d for every step count 0..total_steps, the EMA's weight on its past:
    decay**every * (step / total)**power (small early, so the EMA follows the weights;
    large late, so it averages them). float32, computed once, as airbench's
    `alpha_schedule = 0.95**5 * (torch.arange(total + 1) / total)**3`; both trainers read
    this one table, so they use the same d to the bit."""
    fraction = np.arange(total_steps + 1, dtype=np.float32) / np.float32(total_steps)
    d = np.float32(recipe.lookahead_decay ** recipe.lookahead_every) * fraction ** np.float32(recipe.lookahead_power)
    return d.astype(np.float32)


def lookahead_update(xp, ema, w, step, decays, every: int):
    """airbench's lookahead after optimiser step number `step` (1-based): when step is a
    multiple of `every`, ema = d * ema + (1 - d) * w with d = decays[step] and w <- ema;
    otherwise both unchanged. Returns (ema, w). `xp` is numpy or jax.numpy (step may be
    traced)."""
    sync = step % every == 0
    d = decays[step]
    ema = xp.where(sync, d * ema + (1 - d) * w, ema)
    return ema, xp.where(sync, ema, w)


def shape_of(config, splits) -> tuple[int, int, int]:
    """(batch size, steps per epoch, total steps) of a trial. airbench drops the last
    partial batch and trains `total_train_steps = ceil(len(train_loader) * epochs)` steps:
    the same expression here, so a fractional budget gives its step count exactly (50,000
    images, batch 1024, 9.9 epochs: 48 steps an epoch, 476 in all, the tenth epoch 44
    steps). A batch larger than the training set shrinks to it."""
    n = len(splits.x_train)
    batch = min(config.train.airbench.batch_size, n)
    steps_per_epoch = n // batch
    return batch, steps_per_epoch, math.ceil(steps_per_epoch * config.train.epochs)


def eval_metrics(sums, count: int) -> dict:
    """Mean loss, plain and TTA accuracy from the sums of `eval_sums` over `count` images."""
    loss, right, right_tta = (float(v) for v in np.asarray(sums))
    return {"loss": loss / count, "accuracy": right / count, "tta_accuracy": right_tta / count}

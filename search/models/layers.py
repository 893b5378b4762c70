"""Custom layers, registered with Keras so saved models load with `safe_mode=True`.

`PatchWhitening` is airbench's frozen first layer: a k x k 'valid' convolution whose
filters whiten the image's k x k patches (the eigenvectors of their uncentred covariance,
each divided by sqrt(eigenvalue + eps), and their negatives), with a trainable bias that
starts at zero. The filters
depend on training data, so builders leave them at zero and the trainer sets them from
the training split (`set_statistics`) before training: builders stay pure functions of
the config, and the saved model carries the filters as ordinary (non-trainable) weights.

`Standardize`, `TTAViews` and `TTAMerge` put what used to happen outside a trained network
inside the model a trial hands over (search/models/classifier.py): the per-channel
standardisation of raw 0..255 pixels with the training split's constants, and airbench's
test-time augmentation. `tta_views` and `tta_merge` are the functions the recipe's own
evaluation uses (search/training/airbench/recipe.py: `tta_logits`), so the model computes
the TTA accuracy the run records with the same code.

This module imports nothing from `search`: it is shipped, as it is, inside every MLflow
model a sweep logs (search/tracking/pyfunc_model.py), so those models load where
Blocksweep is not installed.

A fresh process loads a model with these layers after importing this module (Keras finds
registered classes by name, and only imports Keras's own modules by itself):

    import search.models.layers  # registers the layers
    keras.models.load_model("model.keras", safe_mode=True)

or through `search.models.load_model(path)`, which does both.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


def patch_covariance(images, kernel_size: int) -> np.ndarray:
    """Second moment (float64 numpy) of all k x k patches ('valid' positions) of NHWC
    `images`, each patch flattened in the (row, column, channel) order of a Keras kernel:
    P.T @ P / n, uncentred, as airbench's `get_whitening_parameters` computes it (the
    images are already normalised, so the patch mean is near zero anyway).

    Written with keras.ops, so a device array stays on its device: the fused JAX path
    passes its resident training images and the ~5M patches of 5,000 images are formed and
    multiplied on the GPU (numpy on a CPU takes ~0.7 s for them, a quarter of airbench's
    whole training time). float32 products; the 12x12 result is small."""
    x = ops.cast(ops.convert_to_tensor(images), "float32")
    _, h, w, channels = x.shape
    rows, cols = h - kernel_size + 1, w - kernel_size + 1
    shifted = [x[:, i:i + rows, j:j + cols, :] for i in range(kernel_size) for j in range(kernel_size)]
    patches = ops.reshape(ops.stack(shifted, axis=3), (-1, kernel_size * kernel_size * channels))
    moment = ops.matmul(ops.transpose(patches), patches)
    return np.asarray(ops.convert_to_numpy(moment), dtype=np.float64) / patches.shape[0]


def whitening_kernel(images, kernel_size: int = 2, eps: float = 5e-4) -> np.ndarray:
    """The (k, k, c, 2*k*k*c) kernel whose filters whiten `images`' patches: filter j is
    eigenvector j of the patch second moment (eigenvalues descending) divided by
    sqrt(eigenvalue_j + eps); filters d..2d-1 are their negatives (so a following GELU
    keeps both signs), as airbench's `init_whitening_conv`. The whitened patches have
    second moment diag(lambda / (lambda + eps)): the identity on every direction whose
    energy is well above eps. (An eigenvector's sign is arbitrary: another eigensolver
    may swap filter j with filter j + d.)"""
    channels = images.shape[-1]
    eigenvalues, eigenvectors = np.linalg.eigh(patch_covariance(images, kernel_size))
    order = np.argsort(eigenvalues)[::-1]
    scaled = eigenvectors[:, order] / np.sqrt(eigenvalues[order] + eps)
    filters = np.concatenate([scaled, -scaled], axis=1)
    return filters.reshape(kernel_size, kernel_size, channels, -1).astype(np.float32)


@keras.saving.register_keras_serializable(package="blocksweep")
class PatchWhitening(keras.layers.Layer):
    """k x k 'valid' convolution with 2*k*k*c frozen whitening filters and a trainable bias.

    The filters start at zero; `set_statistics(images)` computes them from (normalised)
    training images. They are a non-trainable weight, so they are saved and restored with
    the model and no optimiser touches them."""

    def __init__(self, kernel_size: int = 2, eps: float = 5e-4, bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = int(kernel_size)
        self.eps = float(eps)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        channels = input_shape[-1]
        k = self.kernel_size
        self.filters = 2 * k * k * channels
        self.kernel = self.add_weight(name="kernel", shape=(k, k, channels, self.filters),
                                      initializer="zeros", trainable=False)
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer=self.bias_initializer,
                                    trainable=True)

    def call(self, inputs):
        outputs = ops.conv(inputs, ops.cast(self.kernel, inputs.dtype), strides=1, padding="valid")
        return outputs + ops.cast(self.bias, outputs.dtype)

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        shrink = self.kernel_size - 1
        return (n, None if h is None else h - shrink, None if w is None else w - shrink,
                2 * self.kernel_size * self.kernel_size * c)

    def set_statistics(self, images) -> None:
        """Set the filters from NHWC training images (already normalised as the model's
        inputs are; numpy or a backend tensor)."""
        self.kernel.assign(whitening_kernel(images, self.kernel_size, self.eps))

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size, "eps": self.eps,
                "bias_initializer": keras.initializers.serialize(self.bias_initializer)}


# --------------------------------------------------------------------------- raw pixels in


@keras.saving.register_keras_serializable(package="blocksweep")
class Standardize(keras.layers.Layer):
    """Raw pixels (uint8, or float 0..255, NHWC RGB) -> (pixels - mean) / std per channel.

    In float32, with the constants rounded to float32 first: exactly the arithmetic of
    `search.data.splits.prepare` (numpy), so the images a trained network sees through this
    layer are bit for bit the images it was trained and tested on. The constants are in the
    layer's config (what it does, readable in the saved model) and held as non-trainable
    weights: TensorFlow's graph optimiser turns a division by a constant into a
    multiplication by its reciprocal, which is not division (as constants, 86,000 of the
    307,200 values of 100 test images differed from numpy's by one ulp; as variables, none)."""

    def __init__(self, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), **kwargs):
        kwargs["dtype"] = "float32"  # pixels are never rounded to bfloat16 before the subtraction
        super().__init__(**kwargs)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def build(self, input_shape):
        def constant(name, values):
            return self.add_weight(name=name, shape=(len(values),), trainable=False,
                                   initializer=keras.initializers.Constant(np.asarray(values, np.float32)))

        self.mean_weight = constant("mean", self.mean)
        self.std_weight = constant("std", self.std)

    def call(self, inputs):
        return ops.divide(ops.subtract(ops.cast(inputs, "float32"), self.mean_weight), self.std_weight)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


# --------------------------------------------------------------------------- test-time augmentation

TTA_VIEWS = {0: 1, 1: 2, 2: 6}  # views per image at each level


def tta_views(x, level: int):
    """The views of NHWC images `x` that airbench's TTA averages, stacked along the batch
    axis view after view (all views go through the network as one batch; inference
    batch-norm is per example): level 1: x and its left-right flip; level 2: also x moved
    by one pixel up-left and down-right (reflect padding), each with its flip."""
    if level == 0:
        return x
    views = [x, ops.flip(x, axis=2)]
    if level == 2:
        h, w = x.shape[1], x.shape[2]
        padded = ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
        up_left = padded[:, 2:, 2:, :]  # pixel (i, j) shows x[i + 1, j + 1]
        down_right = padded[:, :h, :w, :]  # pixel (i, j) shows x[i - 1, j - 1]
        views += [up_left, ops.flip(up_left, axis=2), down_right, ops.flip(down_right, axis=2)]
    return ops.concatenate(views, axis=0)


def tta_merge(logits, level: int):
    """(plain logits, TTA logits) from the logits of `tta_views`' batch: plain is the first
    view's; mirror(v) = the mean of a view's and its flip's; level 1: mirror(x); level 2:
    0.5 * mirror(x) + 0.25 * (mirror(up-left) + mirror(down-right))."""
    if level == 0:
        return logits, logits
    parts = ops.reshape(logits, (TTA_VIEWS[level], -1, logits.shape[-1]))
    mirror = [0.5 * (parts[2 * k] + parts[2 * k + 1]) for k in range(TTA_VIEWS[level] // 2)]
    tta = mirror[0] if level == 1 else 0.5 * mirror[0] + 0.25 * (mirror[1] + mirror[2])
    return parts[0], tta


@keras.saving.register_keras_serializable(package="blocksweep")
class TTAViews(keras.layers.Layer):
    """`tta_views` as a layer: (n, h, w, c) images -> (views * n, h, w, c)."""

    def __init__(self, level: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.level = int(level)

    def call(self, inputs):
        return tta_views(inputs, self.level)

    def compute_output_shape(self, input_shape):
        n = input_shape[0]
        return (None if n is None else n * TTA_VIEWS[self.level], *input_shape[1:])

    def get_config(self):
        return {**super().get_config(), "level": self.level}


@keras.saving.register_keras_serializable(package="blocksweep")
class TTAMerge(keras.layers.Layer):
    """The TTA logits of `tta_merge` as a layer: (views * n, classes) -> (n, classes), in float32."""

    def __init__(self, level: int = 2, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.level = int(level)

    def call(self, inputs):
        return tta_merge(ops.cast(inputs, "float32"), self.level)[1]

    def compute_output_shape(self, input_shape):
        n = input_shape[0]
        return (None if n is None else n // TTA_VIEWS[self.level], *input_shape[1:])

    def get_config(self):
        return {**super().get_config(), "level": self.level}

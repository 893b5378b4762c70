"""Custom layers, registered with Keras so saved models load with `safe_mode=True`.

`PatchWhitening` is airbench's frozen first layer: a k x k 'valid' convolution whose
filters whiten the image's k x k patches (the eigenvectors of their uncentred covariance,
each divided by sqrt(eigenvalue + eps), and their negatives), with a trainable bias that
starts at zero. The filters
depend on training data, so builders leave them at zero and the trainer sets them from
the training split (`set_statistics`) before training: builders stay pure functions of
the config, and the saved model carries the filters as ordinary (non-trainable) weights.

A fresh process loads such a model after importing this module (Keras finds registered
classes by name, and only imports Keras's own modules by itself):

    import search.models.layers  # registers PatchWhitening
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

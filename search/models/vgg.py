"""VGG built from blocks (Simonyan & Zisserman, 2014), with the block composition as a
searchable parameter.

The configuration is `search.config.families.VGGConfig`. Each block is one composition
from `blocks.py` with `filters * growth**i` channels (or an explicit per-block list); a
max-pooling block halves the 32x32 input, so at most 5 blocks.
The head flattens into a dense layer (or globally averages) before the classifier.

airbench94's network (Keller Jordan, 2024) is this family with the options below set:
a frozen patch-whitening stem (`stem: whiten`), blocks `conv-pool-bn-act-conv-bn-act` of
64/256/256 bias-free convolutions, batch-norm with a frozen scale, momentum 0.6 (Keras's
convention) and epsilon 1e-12, GELU, global max pooling, a bias-free classifier and
logits times 1/9, initialised as PyTorch does with an identity on each 3x3 convolution's
first C_in filters (`init: airbench`). See spaces/vgg_fast.yaml.
"""

from __future__ import annotations

from search.config.families import VGGConfig as Config
from search.models.blocks import conv_block, dense_head

def build(config: Config, input_shape: tuple[int, int, int], num_classes: int):
    """The Keras model for `config`; layer names say block and position (block2_conv1).
    A whitening stem's filters are zero here: `fit_statistics` sets them from data."""
    import keras

    if config.init == "airbench":
        # PyTorch's default for conv and linear weights: kaiming_uniform(a=sqrt(5)), i.e.
        # uniform +-sqrt(6 / ((1 + 5) * fan_in)) = +-1/sqrt(fan_in) = VarianceScaling(1/3).
        # An identifier, not an instance: an unseeded Keras initializer instance fixes its
        # seed when made, so one instance shared by layers (conv_block passes its options to
        # both convolutions) would give same-shaped layers the same weights.
        def conv_init():
            return {"class_name": "VarianceScaling",
                    "config": {"scale": 1 / 3, "mode": "fan_in", "distribution": "uniform"}}

        dense_init = conv_init
    else:
        def conv_init():
            return "he_uniform"

        def dense_init():
            return "glorot_uniform"

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    if config.stem == "whiten":
        from search.models.layers import PatchWhitening

        # Its bias starts at zero (airbench's `Conv.reset_parameters` zeroes every bias).
        x = PatchWhitening(config.whiten_kernel, config.whiten_eps, name="stem_whiten")(x)
        x = keras.layers.Activation(config.activation, name=f"stem_{config.activation}")(x)
    bn_options = {"momentum": config.bn_momentum, "epsilon": config.bn_epsilon, "scale": config.bn_scale}
    for i, (width, rate) in enumerate(zip(config.widths(), config.dropouts())):
        inner = config.inner_dropout if config.inner_dropout is not None else rate
        x = conv_block(x, config.block, width, dropout=rate, inner_dropout=inner,
                       activation=config.activation, name=f"block{i + 1}",
                       conv_options={"kernel_initializer": conv_init(), "use_bias": config.conv_bias},
                       bn_options=bn_options)
    outputs = dense_head(x, config.head, units=config.dense_units, dropout=config.head_dropout,
                         activation=config.activation, num_classes=num_classes,
                         use_bias=config.classifier_bias, logit_scale=config.logit_scale,
                         classifier_options={"kernel_initializer": dense_init()})
    model = keras.Model(inputs, outputs, name="vgg")
    if config.init == "airbench":
        for layer in model.layers:
            if isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (3, 3):
                layer.kernel.assign(partial_identity(keras.ops.convert_to_numpy(layer.kernel)))
    return model


def partial_identity(kernel):
    """`kernel` (kh, kw, C_in, C_out) with its first min(C_in, C_out) filters replaced by
    the identity: filter i is 1 at the centre of input channel i, 0 elsewhere (airbench's
    Dirac init: each block starts close to passing its input through)."""
    import numpy as np

    kernel = np.array(kernel, copy=True)
    kh, kw, c_in, c_out = kernel.shape
    n = min(c_in, c_out)
    kernel[..., :n] = 0
    kernel[kh // 2, kw // 2, np.arange(n), np.arange(n)] = 1
    return kernel


def fit_statistics(model, config: Config, x_train) -> None:
    """Set the data-dependent weights of a built model from the training images: the
    whitening stem's filters, from the first `whiten_images` images (already normalised)."""
    if config.stem == "whiten":
        model.get_layer("stem_whiten").set_statistics(x_train[: config.whiten_images])

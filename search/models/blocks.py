"""The block vocabulary: compositions of convolution, batch-norm, pooling and dropout.

A composition is a dash-separated string read left to right, one token per layer:

    conv   3x3 convolution, 'same' padding; its activation follows at once, unless the
           composition places activations itself with `act`
    bn     batch normalisation
    act    the activation (only in compositions that place it explicitly)
    pool   2x2 max pooling
    drop   dropout

The names are declared in `search.config.families` (four VGG block orderings and
airbench's `conv-pool-bn-act-conv-bn-act`; three dense heads, `gap` and `gmp`).
"""

from __future__ import annotations


def tokens(composition: str) -> list[str]:
    return composition.split("-")


def conv_block(x, composition: str, filters: int, *, dropout: float, inner_dropout: float,
               activation: str, name: str, conv_options: dict | None = None,
               bn_options: dict | None = None):
    """Apply one block to tensor `x`. In a block with two dropouts the first uses
    `inner_dropout`, the last `dropout`. Layers are named ``{name}_{token}{k}``."""
    from keras import layers

    conv_options = conv_options or {}
    bn_options = bn_options or {}
    parts = tokens(composition)
    explicit_act = "act" in parts
    drops_left = parts.count("drop")
    seen: dict[str, int] = {}
    for token in parts:
        seen[token] = seen.get(token, 0) + 1
        layer_name = f"{name}_{token}{seen[token]}"
        if token == "conv":
            x = layers.Conv2D(filters, 3, padding="same", name=layer_name, **conv_options)(x)
            if not explicit_act:
                x = layers.Activation(activation, name=f"{layer_name}_{activation}")(x)
        elif token == "bn":
            x = layers.BatchNormalization(name=layer_name, **bn_options)(x)
        elif token == "act":
            x = layers.Activation(activation, name=layer_name)(x)
        elif token == "pool":
            x = layers.MaxPooling2D(2, name=layer_name)(x)
        elif token == "drop":
            rate = dropout if drops_left == 1 else inner_dropout
            drops_left -= 1
            x = layers.Dropout(rate, name=layer_name)(x)
        else:  # unreachable for validated configs; kept so a typo in code fails loudly
            raise ValueError(f"unknown block token {token!r} in {composition!r}")
    return x


def dense_head(x, head: str, *, units: int, dropout: float, activation: str, num_classes: int,
               output_activation: str = "softmax", use_bias: bool = True, logit_scale: float | None = None,
               classifier_options: dict | None = None):
    """Flatten (or globally pool) the feature map, then the head composition, then the
    classifier. `gap` is All-CNN's head: global average pooling straight into the classes;
    `gmp` is airbench's: global max pooling straight into the classes.

    With `logit_scale` the classifier is three layers: a linear Dense, `logits` (its output
    times the scale) and `predictions` (the softmax); trainers that need the logits (the
    airbench recipe) read the `logits` layer. Without it, one Dense with the softmax."""
    from keras import layers

    if head == "gap":
        x = layers.GlobalAveragePooling2D(name="head_gap")(x)
    elif head == "gmp":
        # A max pooling whose window is the whole map (airbench's nn.MaxPool2d(3) on its
        # 3x3 map), not GlobalMaxPooling2D: where the maximum is tied, its gradient goes to
        # the first tied position, as PyTorch's does, where a reduce-max splits it among
        # them (ties are common: flat image regions give equal activations).
        x = layers.MaxPooling2D(pool_size=tuple(x.shape[1:3]), name="head_gmp")(x)
        x = layers.Flatten(name="head_flatten")(x)
    else:
        x = layers.Flatten(name="head_flatten")(x)
        for token in tokens(head):
            if token == "dense":
                x = layers.Dense(units, activation=activation, name="head_dense")(x)
            elif token == "bn":
                x = layers.BatchNormalization(name="head_bn")(x)
            elif token == "drop":
                x = layers.Dropout(dropout, name="head_drop")(x)
    # The classifier keeps float32 outputs under mixed precision (stable softmax/loss).
    options = classifier_options or {}
    if logit_scale is None:
        return layers.Dense(num_classes, activation=output_activation, use_bias=use_bias, dtype="float32",
                            name="predictions", **options)(x)
    x = layers.Dense(num_classes, use_bias=use_bias, dtype="float32", name="classifier", **options)(x)
    x = layers.Rescaling(logit_scale, dtype="float32", name="logits")(x)
    return layers.Activation(output_activation, dtype="float32", name="predictions")(x)

"""ResNet50 (He et al., 2015) from `keras.applications`, for transfer learning on CIFAR-10.

The classifier, in order:

    image 32x32, pixels 0..255  (data.normalize: false, see `Config.check_data`)
    -> Resizing to input_size x input_size, on the device      ("resize"; skipped at 32)
    -> keras.applications.resnet50.preprocess_input            (RGB->BGR, minus the ImageNet
                                                                 mean: what its weights expect)
    -> the base, "resnet50": ResNet50 without its top          (stages conv1..conv5)
    -> the head, "head": the dense-head vocabulary of blocks.py (gap | dense-drop | ...)

Both the resizing and the preprocessing are inside the model, so a saved model takes raw
pixels, and Keras ops keep it loadable with `safe_mode=True` (no Lambda layer).

`width` and `stage_blocks` shrink the network for CPU runs: with the defaults (1.0 and
3-4-6-3 blocks) the base *is* `keras.applications.ResNet50`, the only shape ImageNet weights
fit; otherwise the same bottleneck topology with the same layer names is built here
(a test checks that at full size both are layer-for-layer identical). Measured on the 2-core
CPU (TensorFlow, 2026-11-26): the full base trains at ~86 img/s at input 32 and ~20 img/s
at 64; width 0.25 with one block per stage at ~600 img/s at 32.

The configuration is `search.config.families.ResNet50Config`. Transfer learning (`scheme`,
`weights`, the fine-tuning options) is carried out by `search/training/transfer.py`;
pre-trained weights are found by `search/training/weights.py`.
"""

from __future__ import annotations

from search.config.families import RESNET_STAGES as STAGES
from search.config.families import RESNET_UNFREEZABLE as UNFREEZABLE
from search.config.families import ResNet50Config as Config
from search.models.blocks import dense_head

BASE, HEAD = "resnet50", "head"  # layer names of the base and the head inside the classifier
STAGE_FILTERS = (64, 128, 256, 512)  # bottleneck widths (outputs are 4x)
BN_EPSILON = 1.001e-5  # keras.applications' value


# --------------------------------------------------------------------------- the network


def front(x, config: Config):
    """Raw 0..255 pixels -> the base's input: resized on the device, then ResNet's own
    `preprocess_input` (recorded as Keras ops, so it is saved with the model)."""
    import keras
    from keras import layers

    if x.shape[1] != config.input_size or x.shape[2] != config.input_size:
        # float32 even under mixed precision: bf16 would round pixels before the mean subtraction.
        x = layers.Resizing(config.input_size, config.input_size, interpolation="bilinear",
                            dtype="float32", name="resize")(x)
    return keras.applications.resnet50.preprocess_input(x)


def build_base(config: Config):
    """The ResNet base without top, randomly initialised (search/training/weights.py loads weights)."""
    import keras

    shape = (config.input_size, config.input_size, 3)
    if config.is_keras_resnet50:
        return keras.applications.ResNet50(include_top=False, weights=None, input_shape=shape, name=BASE)
    return resnet_v1(shape, config.width, config.stage_blocks)


def resnet_v1(input_shape, width: float, stage_blocks, name: str = BASE):
    """keras.applications' ResNet v1 topology (bottleneck blocks, a projection shortcut in
    each stage's first block, stride 2 from conv3 on), its layer names and batch-norm epsilon,
    with `width` times the channels and `stage_blocks` blocks per stage."""
    import keras
    from keras import layers

    def conv_bn(x, filters, kernel, prefix, strides=1, padding="valid", relu=True):
        x = layers.Conv2D(filters, kernel, strides=strides, padding=padding, name=f"{prefix}_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{prefix}_bn")(x)
        return layers.Activation("relu", name=f"{prefix}_relu")(x) if relu else x

    def block(x, filters, stride, projection, prefix):
        if projection:
            shortcut = layers.Conv2D(4 * filters, 1, strides=stride, name=f"{prefix}_0_conv")(x)
            shortcut = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{prefix}_0_bn")(shortcut)
        else:
            shortcut = x
        x = conv_bn(x, filters, 1, f"{prefix}_1", strides=stride)
        x = conv_bn(x, filters, 3, f"{prefix}_2", padding="same")
        x = conv_bn(x, 4 * filters, 1, f"{prefix}_3", relu=False)
        x = layers.Add(name=f"{prefix}_add")([shortcut, x])
        return layers.Activation("relu", name=f"{prefix}_out")(x)

    inputs = keras.Input(shape=input_shape)
    x = layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = layers.Conv2D(max(1, round(64 * width)), 7, strides=2, name="conv1_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for s, (filters, blocks) in enumerate(zip(STAGE_FILTERS, stage_blocks)):
        for i in range(blocks):
            stride = (1 if s == 0 else 2) if i == 0 else 1
            x = block(x, max(1, round(filters * width)), stride, i == 0, f"{UNFREEZABLE[s]}_block{i + 1}")
    return keras.Model(inputs, x, name=name)


def build_head(config: Config, feature_shape, num_classes: int):
    """The head as its own model, so scheme 1 can train it on cached embeddings alone."""
    import keras

    inputs = keras.Input(shape=tuple(feature_shape), name="features")
    outputs = dense_head(inputs, config.head, units=config.dense_units, dropout=config.head_dropout,
                         activation=config.activation, num_classes=num_classes)
    return keras.Model(inputs, outputs, name=HEAD)


def build(config: Config, input_shape: tuple[int, int, int], num_classes: int):
    """image -> resize -> preprocess_input -> base -> head. Under a transfer scheme the base
    runs in inference mode (training=False) always: its batch-norm statistics stay those of
    the pre-trained weights, even while unfrozen stages fine-tune."""
    import keras

    inputs = keras.Input(shape=input_shape, name="image")
    base = build_base(config)
    features = base(front(inputs, config), training=False if config.transfers else None)
    outputs = build_head(config, features.shape[1:], num_classes)(features)
    return keras.Model(inputs, outputs, name="resnet50_classifier")


# --------------------------------------------------------------------------- stages


def stage_of(layer_name: str) -> str:
    """conv1..conv5 for a base layer (pool1_* belongs to the stem, conv1)."""
    prefix = layer_name.split("_", 1)[0]
    return "conv1" if prefix == "pool1" else prefix


def unfreeze_top_stages(base, k: int) -> None:
    """Make the top `k` stages (conv5, then conv4, ...) trainable, except their batch-norm
    layers, which stay frozen (and so in inference mode); everything else stays frozen."""
    from keras import layers

    top = set(UNFREEZABLE[len(UNFREEZABLE) - k:]) if k else set()
    base.trainable = True  # the flag propagates to every layer; then each is set below
    for layer in base.layers:
        layer.trainable = stage_of(layer.name) in top and not isinstance(layer, layers.BatchNormalization)


def trainable_split(net) -> dict[str, dict[str, int]]:
    """Per stage of the base (conv1..conv5) and for the head: how many weight tensors and
    parameters are trainable and how many frozen. What the fine-tuning run logs."""
    import numpy as np

    def count(weights):
        return len(weights), int(sum(int(np.prod(w.shape)) for w in weights))

    split = {}
    groups: dict[str, list] = {stage: [] for stage in STAGES}
    for layer in net.get_layer(BASE).layers:
        if layer.weights:
            groups[stage_of(layer.name)].append(layer)
    groups["head"] = [net.get_layer(HEAD)]
    for group, members in groups.items():
        trainable = [w for layer in members for w in layer.trainable_weights]
        frozen = [w for layer in members for w in layer.non_trainable_weights]
        (tw, tp), (fw, fp) = count(trainable), count(frozen)
        split[group] = {"trainable_weights": tw, "trainable_params": tp, "frozen_weights": fw, "frozen_params": fp}
    return split

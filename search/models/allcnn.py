"""All-CNN-C from "Striving for Simplicity: The All Convolutional Net" (Springenberg et
al., ICLR 2015): no pooling layers; two 3x3 convolutions with stride 2 downsample instead.

    input dropout 0.2
    conv96 3x3, conv96 3x3, conv96 3x3 stride 2, dropout 0.5
    conv192 3x3, conv192 3x3, conv192 3x3 stride 2, dropout 0.5
    conv192 3x3 (valid), conv192 1x1, conv10 1x1
    global average pooling, softmax

ReLU follows every convolution, the last (class scores) included, as in the paper's
table (`class_relu: false` drops that last one). Padding:
'same' everywhere except the 3x3 after the second downsampling, which is 'valid' (8x8 -> 6x6).
`width` scales the 96/192 channels for quick CPU runs (1.0 is the paper); the
configuration is `search.config.families.AllCNNConfig`.
"""

from __future__ import annotations

from search.config.families import AllCNNConfig as Config


def build(config: Config, input_shape: tuple[int, int, int], num_classes: int):
    import keras
    from keras import layers

    c1 = max(1, round(96 * config.width))
    c2 = max(1, round(192 * config.width))

    def conv(x, filters, kernel, name, strides=1, padding="same", activation="relu"):
        # He initialisation: the paper trains from scratch with plain ReLUs.
        return layers.Conv2D(filters, kernel, strides=strides, padding=padding, activation=activation,
                             kernel_initializer="he_normal", name=name)(x)

    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Dropout(config.input_dropout, name="input_drop")(inputs)
    x = conv(x, c1, 3, "conv1")
    x = conv(x, c1, 3, "conv2")
    x = conv(x, c1, 3, "conv3_stride2", strides=2)
    x = layers.Dropout(config.dropout, name="drop1")(x)
    x = conv(x, c2, 3, "conv4")
    x = conv(x, c2, 3, "conv5")
    x = conv(x, c2, 3, "conv6_stride2", strides=2)
    x = layers.Dropout(config.dropout, name="drop2")(x)
    x = conv(x, c2, 3, "conv7", padding="valid")
    x = conv(x, c2, 1, "conv8")
    x = conv(x, num_classes, 1, "conv9_classes", activation="relu" if config.class_relu else None)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name="allcnn_c")

"""VGG built from blocks (Simonyan & Zisserman, 2014), with the block composition as a
searchable parameter.

Each block is one composition from `blocks.py` with `filters * growth**i` channels (or an
explicit per-block list); a max-pooling block halves the 32x32 input, so at most 5 blocks.
The head flattens into a dense layer (or globally averages) before the classifier.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import Field, model_validator

from search.models.blocks import BlockName, HeadName, conv_block, dense_head
from search.schema import record

Activation = Literal["relu", "gelu", "elu", "selu", "swish", "tanh", "leaky_relu", "mish"]
Rate = float  # dropout rate in [0, 1)


@record
class Config:
    family: Literal["vgg"] = "vgg"
    blocks: int = Field(3, ge=1, le=5)
    block: BlockName = "conv-bn-conv-pool-drop"
    # Channels of block 0, multiplied by `growth` per block; or one value per block.
    filters: Union[int, tuple[int, ...]] = 32
    growth: float = Field(2.0, gt=0)
    # Dropout at the end of each block (or one rate per block); `inner_dropout` is the first
    # dropout of blocks that have two (conv-drop-conv-drop-pool); None means `dropout`.
    dropout: Union[Rate, tuple[Rate, ...]] = 0.25
    inner_dropout: Rate | None = None
    head: HeadName = "dense-drop"
    dense_units: int = Field(128, ge=1)
    head_dropout: Rate = Field(0.5, ge=0, lt=1)
    activation: Activation = "relu"

    @model_validator(mode="after")
    def _per_block_lengths(self):
        for name in ("filters", "dropout"):
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) != self.blocks:
                raise ValueError(f"{name} has {len(value)} values for {self.blocks} blocks")
        for rate in self.dropouts() + [self.inner_dropout or 0.0]:
            if not 0 <= rate < 1:
                raise ValueError(f"dropout rate {rate} is outside [0, 1)")
        if min(self.widths()) < 1:
            raise ValueError("every block needs at least one filter")
        return self

    def widths(self) -> list[int]:
        if isinstance(self.filters, tuple):
            return list(self.filters)
        return [max(1, round(self.filters * self.growth**i)) for i in range(self.blocks)]

    def dropouts(self) -> list[float]:
        if isinstance(self.dropout, tuple):
            return list(self.dropout)
        return [self.dropout] * self.blocks


def build(config: Config, input_shape: tuple[int, int, int], num_classes: int):
    """The Keras model for `config`; layer names say block and position (block2_conv1)."""
    import keras

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for i, (width, rate) in enumerate(zip(config.widths(), config.dropouts())):
        inner = config.inner_dropout if config.inner_dropout is not None else rate
        x = conv_block(x, config.block, width, dropout=rate, inner_dropout=inner,
                       activation=config.activation, name=f"block{i + 1}",
                       conv_options={"kernel_initializer": "he_uniform"})
    outputs = dense_head(x, config.head, units=config.dense_units, dropout=config.head_dropout,
                         activation=config.activation, num_classes=num_classes)
    return keras.Model(inputs, outputs, name="vgg")

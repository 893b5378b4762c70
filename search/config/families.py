"""The model families' configuration records: what `model:` in a space file may say.

One record per family, its `family` literal the name a space file uses. The records live
here, with every other default, so that reading and validating a space file never imports
the model zoo (and Keras); `search/models/<family>.py` builds a network from its record.
Adding a family is one record here, one entry in `FAMILIES`, one builder module.

The block and head vocabulary (compositions of convolution, batch-norm, pooling and
dropout) is named here too; `search/models/blocks.py` turns the names into layers.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, model_validator

from search.config.schema import MAX_EPOCHS, Bool, Float, Int, record

# --------------------------------------------------------------------------- vocabulary

# A block composition, read left to right (search/models/blocks.py): the four VGG block
# orderings a sweep compares, and airbench's block (pooling before normalisation,
# activations placed explicitly).
BlockName = Literal[
    "conv-bn-conv-pool-drop",
    "bn-conv-bn-conv-pool-drop",
    "conv-bn-conv-bn-pool",
    "conv-drop-conv-drop-pool",
    "conv-pool-bn-act-conv-bn-act",
]
# A dense head: three orderings of dense, batch-norm and dropout; `gap` is All-CNN's
# global average pooling, `gmp` airbench's global max pooling.
HeadName = Literal["dense-drop", "dense-bn", "dense-bn-drop", "gap", "gmp"]
Activation = Literal["relu", "gelu", "elu", "selu", "swish", "tanh", "leaky_relu", "mish"]
Rate = Float  # dropout rate in [0, 1)


# --------------------------------------------------------------------------- vgg


@record
class VGGConfig:
    """VGG built from blocks (Simonyan & Zisserman, 2014), the block composition searchable.

    airbench94's network (Keller Jordan, 2024) is this family with `stem: whiten`, blocks
    `conv-pool-bn-act-conv-bn-act` of 64/256/256 bias-free convolutions, batch-norm with a
    frozen scale, momentum 0.6 (Keras's convention) and epsilon 1e-12, GELU, global max
    pooling, a bias-free classifier, logits times 1/9 and `init: airbench` (see
    spaces/vgg_fast.yaml)."""

    family: Literal["vgg"] = "vgg"
    blocks: Int = Field(3, ge=1, le=5)  # each pooling block halves 32x32: at most 5
    block: BlockName = "conv-bn-conv-pool-drop"
    # Channels of block 0, multiplied by `growth` per block; or one value per block.
    filters: Union[Int, tuple[Int, ...]] = 32
    growth: Float = Field(2.0, gt=0)
    # Dropout at the end of each block (or one rate per block); `inner_dropout` is the first
    # dropout of blocks that have two (conv-drop-conv-drop-pool); None means `dropout`.
    dropout: Union[Rate, tuple[Rate, ...]] = 0.25
    inner_dropout: Rate | None = None
    head: HeadName = "dense-drop"
    dense_units: Int = Field(128, ge=1)
    head_dropout: Rate = Field(0.5, ge=0, lt=1)
    activation: Activation = "relu"
    # Widths are multiplied by this (rounded; a searchable knob that keeps the proportions).
    width_multiplier: Float = Field(1.0, gt=0)
    # whiten: a frozen k x k patch-whitening convolution (2*k*k*3 filters, set from the
    # first `whiten_images` training images by the trainer; eps as in airbench) and the
    # activation, before the blocks.
    stem: Literal["none", "whiten"] = "none"
    whiten_kernel: Int = Field(2, ge=1, le=4)
    whiten_eps: Float = Field(5e-4, gt=0)
    whiten_images: Int = Field(5000, ge=1)
    conv_bias: Bool = True
    # Batch-norm in Keras's convention: moving = momentum * moving + (1 - momentum) * batch.
    # PyTorch's `momentum` is the other weight: its 0.4 is Keras's 0.6 (airbench writes 0.6
    # and passes 1 - 0.6 to nn.BatchNorm2d). bn_scale false: centre only (scale fixed at 1).
    bn_momentum: Float = Field(0.99, ge=0, lt=1)
    bn_epsilon: Float = Field(1e-3, gt=0)
    bn_scale: Bool = True
    # keras: He-uniform convolutions, Glorot-uniform dense (Keras's default). airbench:
    # PyTorch's default, uniform +-1/sqrt(fan_in), with each 3x3 convolution's first C_in
    # filters set to the identity (a Dirac at the centre).
    init: Literal["keras", "airbench"] = "keras"
    classifier_bias: Bool = True
    # None: one Dense+softmax classifier (classic). A number: Dense -> `logits` (times this
    # scale; airbench 1/9) -> softmax; the airbench recipe trains on that layer.
    logit_scale: Optional[Float] = Field(None, gt=0)

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
            base = list(self.filters)
        else:
            base = [self.filters * self.growth**i for i in range(self.blocks)]
        return [max(1, round(w * self.width_multiplier)) for w in base]

    def dropouts(self) -> list[float]:
        if isinstance(self.dropout, tuple):
            return list(self.dropout)
        return [self.dropout] * self.blocks


# --------------------------------------------------------------------------- allcnn


@record
class AllCNNConfig:
    """All-CNN-C (Springenberg et al., ICLR 2015); `width` scales the 96/192 channels for
    quick CPU runs (1.0 is the paper)."""

    family: Literal["allcnn"] = "allcnn"
    width: Float = Field(1.0, gt=0)
    input_dropout: Float = Field(0.2, ge=0, lt=1)
    dropout: Float = Field(0.5, ge=0, lt=1)
    # The paper's table puts a ReLU on the class scores too. Once all ten scores are <= 0
    # for every image, that ReLU passes no gradient and the network cannot recover: measured
    # on the CPU (full width, lr 0.05, 5,000 images), the scores were all exactly 0 from the
    # second epoch on (BENCHMARKS.md). False drops it, the usual remedy.
    class_relu: Bool = True


# --------------------------------------------------------------------------- resnet50

RESNET_STAGES = ("conv1", "conv2", "conv3", "conv4", "conv5")  # layer-name prefixes, input to output
RESNET_UNFREEZABLE = RESNET_STAGES[1:]  # fine-tuning unfreezes the top K of these; the stem stays frozen
KERAS_RESNET50_BLOCKS = (3, 4, 6, 3)  # ResNet50's bottleneck blocks per stage


@record
class ResNet50Config:
    """ResNet50 (He et al., 2015) for transfer learning (search/models/resnet50.py builds
    it; search/training/transfer.py trains its schemes)."""

    family: Literal["resnet50"] = "resnet50"
    # Side of the square the 32x32 images are resized to, on the device. ImageNet features
    # need room: 64 is the default, 32 the smallest ResNet50 accepts (1x1 after conv5).
    input_size: Int = Field(64, ge=32)
    # Channel multiplier and blocks per stage (conv2..conv5); the defaults are ResNet50.
    width: Float = Field(1.0, gt=0, le=1)
    stage_blocks: tuple[Int, Int, Int, Int] = KERAS_RESNET50_BLOCKS
    # Pre-trained weights of the base: imagenet | PATH (.h5, .weights.h5, .keras, or a folder
    # holding model.keras) | an MLflow run id | pretrain:SPACE.yaml (search/training/weights.py).
    weights: Optional[str] = None
    # scratch: random initialisation, every layer trains (`weights` is not used: the
    #   baseline). features: scheme 1, the frozen base as a fixed feature extractor (cached
    #   embeddings). finetune: scheme 2, the head first, then the top stages unfrozen.
    scheme: Literal["scratch", "features", "finetune"] = "scratch"
    trainable_stages: Int = Field(2, ge=0, le=len(RESNET_UNFREEZABLE))  # finetune: K top stages unfrozen
    head_epochs: Int = Field(3, ge=0, le=MAX_EPOCHS)  # finetune: epochs of head training on the embeddings first
    finetune_learning_rate: Float = Field(1e-4, gt=0)  # finetune: the rate once stages are unfrozen
    # The head, from the same vocabulary as VGG's.
    head: HeadName = "gap"
    dense_units: Int = Field(256, ge=1)
    head_dropout: Float = Field(0.5, ge=0, lt=1)
    activation: Activation = "relu"

    @model_validator(mode="after")
    def _weights_fit_scheme(self):
        if any(n < 1 for n in self.stage_blocks):
            raise ValueError("stage_blocks needs at least one block per stage")
        if self.scheme != "scratch" and not self.weights:
            raise ValueError(f"scheme {self.scheme} transfers pre-trained weights: set model.weights "
                             "(imagenet, a file, an export folder, a run id or pretrain:SPACE.yaml)")
        if self.weights == "imagenet" and not self.is_keras_resnet50:
            raise ValueError("weights imagenet fit only the full ResNet50 (width 1.0, stage_blocks [3, 4, 6, 3])")
        return self

    @property
    def is_keras_resnet50(self) -> bool:
        return self.width == 1.0 and tuple(self.stage_blocks) == KERAS_RESNET50_BLOCKS

    @property
    def transfers(self) -> bool:
        """Whether pre-trained weights are used (scheme 1 or 2); scratch goes through the
        ordinary trainer."""
        return self.scheme != "scratch"

    def trial_epochs(self, train_epochs: int) -> int:
        """Epochs a trial runs: fine-tuning adds its head epochs before train.epochs."""
        return train_epochs + (self.head_epochs if self.scheme == "finetune" else 0)

    def check_data(self, data) -> None:
        """ResNet's preprocessing is inside the model and expects pixels 0..255; the data
        pipeline's own standardisation would feed it values around 0 instead (and the
        ImageNet mean subtraction would then be wrong), so it must be off."""
        if data.normalize:
            raise ValueError("data.normalize must be false with model.family resnet50: the model applies "
                             "keras.applications.resnet50.preprocess_input to 0..255 pixels itself")


# --------------------------------------------------------------------------- the registry

FAMILIES: dict[str, type] = {"vgg": VGGConfig, "allcnn": AllCNNConfig, "resnet50": ResNet50Config}

"""The configuration records: every setting of a run, its type, range and default.

All defaults live in the records here and in `families.py`, in this one place. Records are
frozen pydantic dataclasses that reject unknown keys (`schema.record`), so a typo in a
space file is an error, not a silently ignored setting. `RunConfig` is what one training
run uses; `SpaceFile` is a whole space file (a run config's sections plus the sweep's
name, search defaults and parameters). `spec.py` reads YAML into them.
"""

from __future__ import annotations

import functools
import math
from typing import Annotated, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from search.config.families import FAMILIES
from search.config.schema import MAX_EPOCHS, Bool, Float, Int, record
from search.config.space import CategoricalParam, FloatParam, IntParam

# --------------------------------------------------------------------------- limits

# The largest values a space file may state. Each is far above any real use and far below
# what would run for ever or exhaust memory, so that a typo (`epochs: 1e12`, `batch_size:
# 1e9`) is refused at load time instead of starting a trial that never ends. (The epochs'
# cap, MAX_EPOCHS, is in schema.py: the model families' records use it too.)
CIFAR10_TRAIN_IMAGES = 50_000  # the training split a batch is drawn from: 5,000 per class
# A study's name (the space's `name`, or --study) names an MLflow experiment (MLflow's
# database holds 256 characters) and folders under mlruns/ (a file system allows 255 bytes
# per name), with room for the suffixes added to it (`-kerastuner`, `-train`).
MAX_NAME = 200
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# Each trial is a training run and an MLflow child run; the sweeps here run tens to
# hundreds, and 10,000 leaves two orders of magnitude of room.
MAX_TRIALS = 10_000

# --------------------------------------------------------------------------- data


@record
class Augment:
    """Augmentation applied on the device, inside the training step, under every backend."""

    flip: Bool = True  # random horizontal flip
    translate: Int = Field(2, ge=0, le=8)  # random shift of up to this many pixels (reflect padding)


# The largest side `data.image_size` may have, in pixels: a folder of photos resized larger
# than this is almost always a mistake (a 512x512 RGB image is 0.75 MB decoded, 3 MB as the
# float32 a trial trains on).
MAX_IMAGE_SIDE = 512


@record
class FolderSource:
    """A folder of labelled images in `keras.utils.image_dataset_from_directory`'s layout:
    one sub-folder per class (class names: the sub-folders' names, sorted), PNG, JPEG, BMP
    or GIF files inside. A relative path is relative to the working directory."""

    folder: str = Field(min_length=1)


@record
class DataConfig:
    # Where the images come from: cifar10 (the default), cifar100 (Keras's python layout,
    # `label_mode` fine or coarse) or {folder: PATH} (search/data/folders.py).
    source: Union[Literal["cifar10", "cifar100"], FolderSource] = "cifar10"
    label_mode: Literal["fine", "coarse"] = "fine"  # cifar100: 100 fine or 20 coarse classes
    # Folder only. [height, width] every image is resized to on load (Pillow's Lanczos, as
    # `predict` does); None: the most common size in the folder. At most MAX_IMAGE_SIDE.
    image_size: Optional[tuple[Int, Int]] = None
    # Folder only. A folder of test images in the same layout (the same class folders);
    # None: a stratified `test_fraction` of the folder, picked once and recorded beside
    # the decoded cache (mlruns/images/), so a rerun or a second worker tests on the same.
    test: Optional[str] = None
    test_fraction: Float = Field(0.2, gt=0, lt=1)
    # Folder only. error: a corrupt, truncated or non-image file stops the run (one line
    # naming it); skip: such files are left out, with a warning that counts and names them.
    on_bad_image: Literal["error", "skip"] = "error"
    # Stratified subset of the training split for quick runs (None: all of it).
    train_size: Optional[Int] = Field(None, ge=10)
    # Held out from the 50,000 training images, stratified and seeded; selection uses it.
    # 0: no validation split, every training image trains and only the test set is
    # reported: airbench94's benchmark (train.recipe airbench, `blocksweep train` and
    # bench/ only; a sweep refuses it, as its objective must never see the test set).
    val_size: Int = Field(5000, ge=0)
    # Subset of the test set (None: all 10,000); the test set is for reporting only.
    test_size: Optional[Int] = Field(None, ge=10)
    # Keep only these classes, relabelled 0..k-1 in this order (transfer experiments).
    classes: Optional[tuple[Int, ...]] = None
    normalize: Bool = True  # per-channel mean/std of the training split
    labels: Literal["sparse", "onehot"] = "sparse"
    augment: Augment = Augment()
    seed: Int = 0

    @field_validator("val_size")
    @classmethod
    def _val_size_none_or_some(cls, value: int) -> int:
        if 0 < value < 10:
            raise ValueError("val_size is 0 (no validation split) or at least 10 images")
        return value

    @model_validator(mode="after")
    def _classes_valid(self):
        if self.classes is not None:
            if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
                raise ValueError("classes needs at least two distinct class indices")
            # Other sources' class counts are known once the data is read (search/data).
            if self.source == "cifar10" and not all(0 <= c <= 9 for c in self.classes):
                raise ValueError("classes are CIFAR-10 class indices 0..9")
            if min(self.classes) < 0:
                raise ValueError("classes are class indices, 0 or more")
        return self

    @model_validator(mode="after")
    def _source_settings(self):
        folder = isinstance(self.source, FolderSource)
        for name in ("image_size", "test"):
            if getattr(self, name) is not None and not folder:
                raise ValueError(f"data.{name} applies to data.source: {{folder: PATH}} only")
        for name in ("test_fraction", "on_bad_image"):
            if getattr(self, name) != _DEFAULT_FOLDER_SETTINGS[name] and not folder:
                raise ValueError(f"data.{name} applies to data.source: {{folder: PATH}} only")
        if self.label_mode != "fine" and self.source != "cifar100":
            raise ValueError("data.label_mode applies to data.source: cifar100 only")
        if self.image_size is not None and not all(1 <= side <= MAX_IMAGE_SIDE for side in self.image_size):
            raise ValueError(f"data.image_size {list(self.image_size)}: each side is 1..{MAX_IMAGE_SIDE} pixels")
        return self


# The folder-only settings' defaults, read off the record (one place for defaults).
_DEFAULT_FOLDER_SETTINGS = {name: getattr(DataConfig, name) for name in ("test_fraction", "on_bad_image")}


# --------------------------------------------------------------------------- training


@record
class Schedule:
    """Learning-rate schedule, as a multiplier of `learning_rate` per optimizer step.

    constant; step (times `drop_factor` at each epoch in `drop_epochs`); cosine (to
    `final_fraction`); inverse_time (the 1/t decay ``lr = c1 / (step + c2)``; c2 defaults to
    one epoch of steps and c1 to learning_rate * c2, so it starts at learning_rate);
    onecycle (linear up to 1 at `peak_fraction` of training, then linearly down to
    `final_fraction`: airbench's shape). `warmup_epochs` of linear warm-up precede any kind.
    """

    kind: Literal["constant", "step", "cosine", "inverse_time", "onecycle"] = "constant"
    warmup_epochs: Float = Field(0.0, ge=0)
    drop_epochs: tuple[Float, ...] = ()
    drop_factor: Float = Field(0.1, gt=0)
    final_fraction: Float = Field(0.0, ge=0)
    start_fraction: Float = Field(0.2, ge=0)
    peak_fraction: Float = Field(0.23, gt=0, lt=1)
    c1: Optional[Float] = Field(None, gt=0)
    c2: Optional[Float] = Field(None, gt=0)


@record
class EarlyStopping:
    patience: Optional[Int] = Field(None, ge=1)  # epochs without improvement; None: off
    min_delta: Float = Field(0.0, ge=0)


@record
class AirbenchRecipe:
    """The airbench94 recipe (Keller Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single
    GPU", 2024) as configuration, used when `train.recipe` is airbench. The defaults are
    airbench94's own values (PyPI sdist `airbench` 0.1.8: `hyp` in
    airbench/lib_airbench94.py, `train` in airbench/utils.py); tests/test_fast.py pins each.

    Units are ours, not airbench's: the loss is the mean cross-entropy of a batch and
    `learning_rate` the step size on its gradient. airbench sums the loss over the batch
    and states lr 11.5 and decay 0.0153 "per 1024 examples", which it converts for
    PyTorch's SGD as lr_torch = 11.5 / (1024 * (1 + 1/(1 - 0.85))) = 1.4648e-3 on the
    summed loss, i.e. 1.4648e-3 * 1024 = 1.5 on the mean loss of a 1024-image batch (at
    another batch size B airbench's step on the mean loss is 1.4648e-3 * B; ours stays
    `learning_rate`). Its coupled decay is weight_decay_torch = 0.0153 * B / 11.5 on the
    summed gradient, i.e. 0.0153 / 11.5 = 1.3304e-3 on the mean gradient whatever B, and
    1.3304e-3 / 64 = 2.0788e-5 for batch-norm biases (whose step is 64x larger but whose
    decay is not). The update is PyTorch's Nesterov SGD: g = grad + decay * w;
    v = momentum * v + g; w -= lr * (g + momentum * v).
    """

    batch_size: Int = Field(1024, ge=1, le=CIFAR10_TRAIN_IMAGES)  # clipped to the training set's size
    learning_rate: Float = Field(1.5, gt=0)
    momentum: Float = Field(0.85, ge=0, lt=1)
    nesterov: Bool = True
    label_smoothing: Float = Field(0.2, ge=0, lt=1)
    weight_decay: Float = Field(0.0153 / 11.5, ge=0)  # coupled, on every trainable variable ...
    bias_lr_scale: Float = Field(64.0, gt=0)  # ... except batch-norm parameters: 64x the lr
    bias_weight_decay: Float = Field(0.0153 / 11.5 / 64, ge=0)  # ... and this decay
    # airbench's multiplier of the learning rate: 0.2 -> 1 over the first 23% of the
    # steps, then down to 0.07 at the end.
    schedule: Schedule = Schedule(kind="onecycle", start_fraction=0.2, peak_fraction=0.23, final_fraction=0.07)
    # The whitening stem's bias trains in the first this-many epochs only (airbench: no
    # gradient, decay or momentum step afterwards; the lookahead still moves it, as it
    # moves every float variable). None: it trains throughout.
    whiten_bias_epochs: Optional[Int] = Field(3, ge=0)
    # Lookahead: every `lookahead_every` steps ema = d*ema + (1-d)*w and w <- ema, with
    # d = lookahead_decay**lookahead_every * (step/total)**lookahead_power; at the end
    # w <- ema. Applies to every float variable (batch-norm statistics too, as airbench).
    lookahead: Bool = True
    lookahead_every: Int = Field(5, ge=1)
    lookahead_decay: Float = Field(0.95, gt=0, le=1)
    lookahead_power: Float = Field(3.0, ge=0)
    # alternating: one random flip pattern, inverted on odd epochs (each image is seen
    # both ways every two epochs); random: a fresh coin per image and epoch. Applies when
    # data.augment.flip is on; data.augment.translate gives the shift (reflect padding).
    flip: Literal["alternating", "random"] = "alternating"
    # Test-time augmentation: 0 none; 1 mirror (mean logits of the image and its flip);
    # 2 mirror and 1-pixel shifts: 0.5*mirror(x) + 0.25*(mirror(up-left) + mirror(down-right)).
    tta_level: Int = Field(2, ge=0, le=2)
    # every_epoch: validation (plain and TTA) after each epoch, for pruning and curves;
    # last_epoch: only at the end, as airbench times itself (no pruning).
    validate: Literal["every_epoch", "last_epoch"] = "every_epoch"
    # fused: the jitted JAX loop (search/training/airbench/fused.py, JAX backend only); keras: Keras fit on
    # any backend (slower); auto: fused under JAX, the compiled step under TensorFlow
    # (search/training/airbench/tensorflow_path.py), else keras.
    path: Literal["auto", "fused", "keras"] = "auto"
    # Training steps per dispatch of the fused loop (None: one epoch per dispatch).
    steps_per_dispatch: Optional[Int] = Field(None, ge=1)
    eval_batch_size: Int = Field(1000, ge=1)


@record
class TrainConfig:
    # The epochs budget of one trial. A fraction (airbench94 trains 9.9) needs train.recipe
    # airbench, which runs ceil(steps_per_epoch * epochs) optimiser steps, its schedules
    # over that total, the last epoch partial; `epoch_count` is how many epochs report.
    epochs: Union[int, float] = Field(10, ge=1, le=MAX_EPOCHS)
    batch_size: Int = Field(128, ge=1, le=CIFAR10_TRAIN_IMAGES)
    optimizer: Literal["sgd", "adam"] = "sgd"
    learning_rate: Float = Field(0.01, gt=0)
    momentum: Float = Field(0.9, ge=0, lt=1)  # SGD only
    nesterov: Bool = True  # SGD only
    # decoupled (Keras's own): w -= lr * weight_decay * w each step. coupled: the L2
    # gradient weight_decay * w is added to each kernel's gradient before momentum (what
    # the All-CNN paper and airbench mean); with momentum 0.9 it acts ~10x stronger.
    weight_decay: Float = Field(1e-6, ge=0)
    weight_decay_mode: Literal["decoupled", "coupled"] = "decoupled"
    schedule: Schedule = Schedule()
    label_smoothing: Float = Field(0.0, ge=0, lt=1)
    early_stopping: EarlyStopping = EarlyStopping()
    # auto: bf16 mixed precision on a GPU, float32 on a CPU (bf16 is slower there).
    precision: Literal["auto", "float32", "mixed_bfloat16"] = "auto"
    # Running mean of the training loss over this many batches, logged every as many
    # batches: a smoother convergence signal than the per-epoch mean.
    loss_window: Int = Field(20, ge=1)
    seed: Int = 0
    # standard: Keras fit with the settings above. airbench: Keller Jordan's airbench94
    # recipe (search/training/airbench/) with `airbench` below
    # in place of the optimiser settings above (epochs, precision, loss_window and seed
    # still apply).
    recipe: Literal["standard", "airbench"] = "standard"
    airbench: AirbenchRecipe = AirbenchRecipe()

    @field_validator("epochs", mode="before")
    @classmethod
    def _a_number(cls, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected an integer (a fraction only with train.recipe airbench), got {value!r}")
        return value

    @field_validator("epochs")
    @classmethod
    def _whole_epochs_as_int(cls, value):
        return int(value) if float(value).is_integer() else value

    @property
    def epoch_count(self) -> int:
        """The epochs a trial runs and reports to the pruner: `epochs` rounded up."""
        return math.ceil(self.epochs)

    @model_validator(mode="after")
    def _recipe_settings(self):
        if isinstance(self.epochs, float) and self.recipe != "airbench":
            raise ValueError(f"train.epochs {self.epochs}: a fraction of an epoch needs train.recipe: airbench "
                             "(the standard trainer runs whole epochs)")
        if self.recipe == "airbench":
            for name in _RECIPE_REPLACES:  # set but never read: say where it belongs
                if getattr(self, name) != getattr(_standard_train(), name):
                    where = f"train.airbench.{name}" if name in _AIRBENCH_FIELDS else "train.airbench"
                    raise ValueError(f"train.{name} is not used by train.recipe airbench (see {where})")
        elif self.airbench != AirbenchRecipe():
            raise ValueError("train.airbench is used only with train.recipe: airbench")
        return self


# Optimiser settings of TrainConfig that the airbench recipe replaces (train.airbench.*).
_RECIPE_REPLACES = ("batch_size", "optimizer", "learning_rate", "momentum", "nesterov", "weight_decay",
                    "weight_decay_mode", "schedule", "label_smoothing", "early_stopping")
_AIRBENCH_FIELDS = set(AirbenchRecipe.__dataclass_fields__)


@functools.cache
def _standard_train() -> TrainConfig:
    return TrainConfig()


# --------------------------------------------------------------------------- objective, search

# val_tta_accuracy: accuracy with test-time augmentation (the airbench recipe's evaluation).
METRICS = ("val_accuracy", "val_loss", "val_tta_accuracy")


@record
class Objective:
    metric: Literal["val_accuracy", "val_loss", "val_tta_accuracy"] = "val_accuracy"
    # None: maximize accuracies, minimize losses.
    direction: Optional[Literal["maximize", "minimize"]] = None

    @property
    def goal(self) -> str:
        if self.direction:
            return self.direction
        return "minimize" if self.metric.endswith("loss") else "maximize"

    def better(self, a: float, b: float) -> bool:
        """Is objective value `a` strictly better than `b`?"""
        return a > b if self.goal == "maximize" else a < b


@record
class SearchDefaults:
    """Defaults for `blocksweep run`; each has a flag of the same name that wins."""

    engine: Literal["optuna", "kerastuner"] = "optuna"
    trials: Int = Field(10, ge=1, le=MAX_TRIALS)
    timeout: Optional[Float] = Field(None, gt=0)  # seconds of wall time per invocation
    sampler: Literal["tpe", "random", "cmaes", "gp", "grid"] = "tpe"
    pruner: Literal["median", "hyperband", "halving", "none"] = "median"
    tuner: Literal["random", "bayesian", "hyperband"] = "random"  # Keras Tuner's algorithm
    seed: Int = 0
    max_failures: Int = Field(5, ge=1)  # stop the sweep after this many failed trials
    keep_models: Literal["best", "all"] = "best"


# --------------------------------------------------------------------------- the file

ModelConfig = Annotated[Union[tuple(FAMILIES.values())], Field(discriminator="family")]
ParamEntry = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]


def _data_fits_model(model, data) -> None:
    """A family may need particular data settings (ResNet takes raw 0..255 pixels); it says
    so in an optional `check_data(data)` that raises ValueError."""
    check = getattr(model, "check_data", None)
    if check is not None:
        check(data)


@record
class RunConfig:
    """Everything one training run needs: what `blocksweep train` runs, one sweep trial."""

    model: ModelConfig
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    objective: Objective = Objective()

    @model_validator(mode="after")
    def _sections_fit(self):
        _check_recipe(self)
        _batch_fits_data(self)
        _data_fits_model(self.model, self.data)
        return self


@record
class SpaceFile:
    model: ModelConfig
    name: str = Field(pattern=NAME_PATTERN, max_length=MAX_NAME)
    description: str = ""
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    objective: Objective = Objective()
    search: SearchDefaults = SearchDefaults()
    params: dict[str, ParamEntry] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _sections_fit(self):
        _check_recipe(self)
        _batch_fits_data(self)
        _data_fits_model(self.model, self.data)
        return self


def _batch_fits_data(config) -> None:
    """A batch is drawn from the training split, so the standard trainer's batch can be no
    larger than that split: `data.train_size` when set, else CIFAR-10's training images of
    the kept classes less the validation split. (The airbench recipe clips its batch to
    the split itself.)"""
    if config.train.recipe != "standard":
        return
    data = config.data
    if data.train_size is not None:
        size, what = data.train_size, f"data.train_size {data.train_size}"
    elif data.source != "cifar10":  # another source's size is known once it is read
        return
    else:
        classes = len(data.classes) if data.classes is not None else 10
        size = CIFAR10_TRAIN_IMAGES // 10 * classes - data.val_size
        what = f"the {size} training images of CIFAR-10 left beside data.val_size {data.val_size}"
    if 0 < size < config.train.batch_size:  # (no images left at all: data.prepare says so)
        raise ValueError(f"train.batch_size {config.train.batch_size} is larger than the training split "
                         f"({what}): a batch is drawn from it")


def _check_recipe(config) -> None:
    """Cross-section rules of the airbench recipe: it trains on the model's logits, only it
    computes the TTA accuracy, and only it trains without a validation split."""
    airbench = config.train.recipe == "airbench"
    if config.data.val_size == 0 and not airbench:
        raise ValueError("data.val_size 0 (no validation split) needs train.recipe: airbench; the standard "
                         "trainer keeps the epoch that scores best on the validation split")
    if config.objective.metric == "val_tta_accuracy" and not airbench:
        raise ValueError("objective val_tta_accuracy needs train.recipe: airbench")
    if airbench and (config.model.family != "vgg" or config.model.logit_scale is None):
        raise ValueError("train.recipe airbench needs a vgg model with model.logit_scale set "
                         "(the recipe trains on the logits layer)")

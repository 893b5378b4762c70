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
from search.config.schema import record
from search.config.space import CategoricalParam, FloatParam, IntParam

# --------------------------------------------------------------------------- data


@record
class Augment:
    """Augmentation applied on the device, inside the training step, under every backend."""

    flip: bool = True  # random horizontal flip
    translate: int = Field(2, ge=0, le=8)  # random shift of up to this many pixels (reflect padding)


@record
class DataConfig:
    # Stratified subset of the training split for quick runs (None: all of it).
    train_size: Optional[int] = Field(None, ge=10)
    # Held out from the 50,000 training images, stratified and seeded; selection uses it.
    # 0: no validation split, every training image trains and only the test set is
    # reported: airbench94's benchmark (train.recipe airbench, `blocksweep train` and
    # bench/ only; a sweep refuses it, as its objective must never see the test set).
    val_size: int = Field(5000, ge=0)
    # Subset of the test set (None: all 10,000); the test set is for reporting only.
    test_size: Optional[int] = Field(None, ge=10)
    # Keep only these classes, relabelled 0..k-1 in this order (transfer experiments).
    classes: Optional[tuple[int, ...]] = None
    normalize: bool = True  # per-channel mean/std of the training split
    labels: Literal["sparse", "onehot"] = "sparse"
    augment: Augment = Augment()
    seed: int = 0

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
            if not all(0 <= c <= 9 for c in self.classes):
                raise ValueError("classes are CIFAR-10 class indices 0..9")
        return self


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
    warmup_epochs: float = Field(0.0, ge=0)
    drop_epochs: tuple[float, ...] = ()
    drop_factor: float = Field(0.1, gt=0)
    final_fraction: float = Field(0.0, ge=0)
    start_fraction: float = Field(0.2, ge=0)
    peak_fraction: float = Field(0.23, gt=0, lt=1)
    c1: Optional[float] = Field(None, gt=0)
    c2: Optional[float] = Field(None, gt=0)


@record
class EarlyStopping:
    patience: Optional[int] = Field(None, ge=1)  # epochs without improvement; None: off
    min_delta: float = Field(0.0, ge=0)


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

    batch_size: int = Field(1024, ge=1)  # clipped to the training set's size
    learning_rate: float = Field(1.5, gt=0)
    momentum: float = Field(0.85, ge=0, lt=1)
    nesterov: bool = True
    label_smoothing: float = Field(0.2, ge=0, lt=1)
    weight_decay: float = Field(0.0153 / 11.5, ge=0)  # coupled, on every trainable variable ...
    bias_lr_scale: float = Field(64.0, gt=0)  # ... except batch-norm parameters: 64x the lr
    bias_weight_decay: float = Field(0.0153 / 11.5 / 64, ge=0)  # ... and this decay
    # airbench's multiplier of the learning rate: 0.2 -> 1 over the first 23% of the
    # steps, then down to 0.07 at the end.
    schedule: Schedule = Schedule(kind="onecycle", start_fraction=0.2, peak_fraction=0.23, final_fraction=0.07)
    # The whitening stem's bias trains in the first this-many epochs only (airbench: no
    # gradient, decay or momentum step afterwards; the lookahead still moves it, as it
    # moves every float variable). None: it trains throughout.
    whiten_bias_epochs: Optional[int] = Field(3, ge=0)
    # Lookahead: every `lookahead_every` steps ema = d*ema + (1-d)*w and w <- ema, with
    # d = lookahead_decay**lookahead_every * (step/total)**lookahead_power; at the end
    # w <- ema. Applies to every float variable (batch-norm statistics too, as airbench).
    lookahead: bool = True
    lookahead_every: int = Field(5, ge=1)
    lookahead_decay: float = Field(0.95, gt=0, le=1)
    lookahead_power: float = Field(3.0, ge=0)
    # alternating: one random flip pattern, inverted on odd epochs (each image is seen
    # both ways every two epochs); random: a fresh coin per image and epoch. Applies when
    # data.augment.flip is on; data.augment.translate gives the shift (reflect padding).
    flip: Literal["alternating", "random"] = "alternating"
    # Test-time augmentation: 0 none; 1 mirror (mean logits of the image and its flip);
    # 2 mirror and 1-pixel shifts: 0.5*mirror(x) + 0.25*(mirror(up-left) + mirror(down-right)).
    tta_level: int = Field(2, ge=0, le=2)
    # every_epoch: validation (plain and TTA) after each epoch, for pruning and curves;
    # last_epoch: only at the end, as airbench times itself (no pruning).
    validate: Literal["every_epoch", "last_epoch"] = "every_epoch"
    # fused: the jitted JAX loop (search/training/airbench/fused.py, JAX backend only); keras: Keras fit on
    # any backend (slower); auto: fused under JAX, the compiled step under TensorFlow
    # (search/training/airbench/tensorflow_path.py), else keras.
    path: Literal["auto", "fused", "keras"] = "auto"
    # Training steps per dispatch of the fused loop (None: one epoch per dispatch).
    steps_per_dispatch: Optional[int] = Field(None, ge=1)
    eval_batch_size: int = Field(1000, ge=1)


@record
class TrainConfig:
    # The epochs budget of one trial. A fraction (airbench94 trains 9.9) needs train.recipe
    # airbench, which runs ceil(steps_per_epoch * epochs) optimiser steps, its schedules
    # over that total, the last epoch partial; `epoch_count` is how many epochs report.
    epochs: Union[int, float] = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    learning_rate: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD only
    nesterov: bool = True  # SGD only
    # decoupled (Keras's own): w -= lr * weight_decay * w each step. coupled: the L2
    # gradient weight_decay * w is added to each kernel's gradient before momentum (what
    # the All-CNN paper and airbench mean); with momentum 0.9 it acts ~10x stronger.
    weight_decay: float = Field(1e-6, ge=0)
    weight_decay_mode: Literal["decoupled", "coupled"] = "decoupled"
    schedule: Schedule = Schedule()
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    early_stopping: EarlyStopping = EarlyStopping()
    # auto: bf16 mixed precision on a GPU, float32 on a CPU (bf16 is slower there).
    precision: Literal["auto", "float32", "mixed_bfloat16"] = "auto"
    # Running mean of the training loss over this many batches, logged every as many
    # batches: a smoother convergence signal than the per-epoch mean.
    loss_window: int = Field(20, ge=1)
    seed: int = 0
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
    trials: int = Field(10, ge=1)
    timeout: Optional[float] = Field(None, gt=0)  # seconds of wall time per invocation
    sampler: Literal["tpe", "random", "cmaes", "gp", "grid"] = "tpe"
    pruner: Literal["median", "hyperband", "halving", "none"] = "median"
    tuner: Literal["random", "bayesian", "hyperband"] = "random"  # Keras Tuner's algorithm
    seed: int = 0
    max_failures: int = Field(5, ge=1)  # stop the sweep after this many failed trials
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
        _data_fits_model(self.model, self.data)
        return self


@record
class SpaceFile:
    model: ModelConfig
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    objective: Objective = Objective()
    search: SearchDefaults = SearchDefaults()
    params: dict[str, ParamEntry] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _sections_fit(self):
        _check_recipe(self)
        _data_fits_model(self.model, self.data)
        return self


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

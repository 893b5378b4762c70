"""Space files: YAML -> validated, frozen configuration records.

A space file describes one sweep:

    name: quickstart            # the default study name
    model: {family: vgg, ...}   # fixed model settings (see search/models/<family>.py)
    data: {...}                 # DataConfig below
    train: {...}                # TrainConfig below
    objective: {metric: val_accuracy, direction: maximize}
    search: {...}               # defaults for `blocksweep run` flags
    params:                     # what a sweep varies, by dotted config path
      train.learning_rate: {type: float, low: 1.0e-4, high: 0.1, log: true}

All defaults live in the records below, in this one place. `load_spec` validates the whole
file before anything runs (every parameter's values are tried against the config they set)
and reports the first problem as one line: file, key path, what is wrong.
`resolve` turns sampled values into the `RunConfig` that one training run uses.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import Field, TypeAdapter, ValidationError, model_validator

from search.errors import UsageError
from search.models import FAMILIES
from search.schema import record
from search.space import CategoricalParam, FloatParam, IntParam, Space, dependency_order

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
    val_size: int = Field(5000, ge=10)
    # Subset of the test set (None: all 10,000); the test set is for reporting only.
    test_size: Optional[int] = Field(None, ge=10)
    # Keep only these classes, relabelled 0..k-1 in this order (transfer experiments).
    classes: Optional[tuple[int, ...]] = None
    normalize: bool = True  # per-channel mean/std of the training split
    labels: Literal["sparse", "onehot"] = "sparse"
    augment: Augment = Augment()
    seed: int = 0

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
    GPU", 2024) as configuration, used when `train.recipe` is airbench.

    Units are ours, not airbench's: the loss is the mean cross-entropy of a batch and
    `learning_rate` the step size on its gradient. airbench sums the loss over the batch
    and states lr 11.5 and decay 0.0153 "per 1024 examples", which it converts for
    PyTorch's SGD as lr_torch = 11.5 / (1024 * (1 + 1/(1 - 0.85))) = 1.4648e-3 on the
    summed loss, i.e. 1.4648e-3 * 1024 = 1.5 on the mean loss; its coupled decay is
    weight_decay_torch = 0.0153 * 1024 / 11.5 = 1.3624 on the summed gradient, i.e.
    1.3624 / 1024 = 1.33e-3 on the mean gradient, and 1.3624 / 64 / 1024 = 2.08e-5 for
    batch-norm biases (whose step is 64x larger but whose decay is not). The update is
    PyTorch's Nesterov SGD: g = grad + decay * w; v = momentum * v + g;
    w -= lr * (g + momentum * v).
    """

    batch_size: int = Field(1024, ge=1)  # clipped to the training set's size
    learning_rate: float = Field(1.5, gt=0)
    momentum: float = Field(0.85, ge=0, lt=1)
    nesterov: bool = True
    label_smoothing: float = Field(0.2, ge=0, lt=1)
    weight_decay: float = Field(1.33e-3, ge=0)  # coupled, on every trainable variable ...
    bias_lr_scale: float = Field(64.0, gt=0)  # ... except batch-norm parameters: 64x the lr
    bias_weight_decay: float = Field(2.08e-5, ge=0)  # ... and this decay
    # airbench's multiplier of the learning rate: 0.2 -> 1 over the first 23% of the
    # steps, then down to 0.07 at the end.
    schedule: Schedule = Schedule(kind="onecycle", start_fraction=0.2, peak_fraction=0.23, final_fraction=0.07)
    # The whitening stem's bias stops training after this many epochs (None: it always
    # trains; airbench94's own script stops it after 3).
    whiten_bias_epochs: Optional[float] = Field(None, ge=0)
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
    # fused: the jitted JAX loop (search/fast.py, JAX backend only); keras: Keras fit on
    # any backend (slower); auto: fused under JAX, else keras.
    path: Literal["auto", "fused", "keras"] = "auto"
    # Training steps per dispatch of the fused loop (None: one epoch per dispatch).
    steps_per_dispatch: Optional[int] = Field(None, ge=1)
    eval_batch_size: int = Field(1000, ge=1)


@record
class TrainConfig:
    epochs: int = Field(10, ge=1)  # the epochs budget of one trial
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
    # recipe (search/recipe.py; fused JAX loop in search/fast.py) with `airbench` below
    # in place of the optimiser settings above (epochs, precision, loss_window and seed
    # still apply).
    recipe: Literal["standard", "airbench"] = "standard"
    airbench: AirbenchRecipe = AirbenchRecipe()

    @model_validator(mode="after")
    def _recipe_settings(self):
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

ModelConfig = Annotated[Union[tuple(m.Config for m in FAMILIES.values())], Field(discriminator="family")]
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
    """Cross-section rules of the airbench recipe: it trains on the model's logits, and
    only it computes the TTA accuracy."""
    airbench = config.train.recipe == "airbench"
    if config.objective.metric == "val_tta_accuracy" and not airbench:
        raise ValueError("objective val_tta_accuracy needs train.recipe: airbench")
    if airbench and (config.model.family != "vgg" or config.model.logit_scale is None):
        raise ValueError("train.recipe airbench needs a vgg model with model.logit_scale set "
                         "(the recipe trains on the logits layer)")


_SPACE_FILE = TypeAdapter(SpaceFile)
_RUN_CONFIG = TypeAdapter(RunConfig)
SECTIONS = ("model", "data", "train")  # the sections a parameter may set


@dataclass(frozen=True)
class Spec:
    """A loaded space file: the validated record, its search space, and the raw mapping
    that `resolve` overlays sampled values onto."""

    path: str
    file: SpaceFile
    space: Space
    raw: dict
    text: str  # the file as read, logged as an artifact

    @property
    def name(self) -> str:
        return self.file.name

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def base_config(self) -> RunConfig:
        return resolve(self, {})


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-4` as a string; this loader reads it as the float a user meant."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|^[-+]?\d[\d_]*\.\d*(?:[eE][-+]?\d+)?$"
               r"|^[-+]?\.\d+(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UsageError(f"{where}{at}: invalid YAML: {problem}") from None


# --------------------------------------------------------------------------- loading


def _format_loc(loc: tuple) -> str:
    parts = [str(p) for p in loc]
    # Tagged unions put the tag in the path (model.vgg.blocks); users wrote model.blocks.
    if len(parts) > 1 and parts[0] == "model" and parts[1] in FAMILIES:
        del parts[1]
    if len(parts) > 2 and parts[0] == "params" and parts[2] in ("float", "int", "categorical"):
        del parts[2]
    return ".".join(parts) or "(top level)"


def _first_error(err: ValidationError) -> tuple[str, str]:
    first = err.errors()[0]
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "unexpected_keyword_argument":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required key is missing"
    elif isinstance(first.get("input"), (str, int, float, bool)) and first["type"] != "value_error":
        msg += f" (got {first['input']!r})"
    more = len(err.errors()) - 1
    if more:
        msg += f" (and {more} more problem{'s' if more > 1 else ''})"
    return _format_loc(first["loc"]), msg


def set_path(tree: dict, path: str, value: Any) -> None:
    """Set `tree[a][b][c] = value` for path 'a.b.c', creating mappings on the way."""
    keys = path.split(".")
    node = tree
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`--set key=value` flags as {path: value}; the value is read as YAML (3, 0.1, true, [a, b])."""
    overrides: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w.]*", key):
            raise UsageError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. train.epochs=3")
        overrides[key] = parse_yaml(value, f"--set {key}") if value.strip() else None
    return overrides


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> Spec:
    """Read, override and validate a space file completely. Raises UsageError (one line)."""
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"{where}: no such space file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
        raise UsageError(f"{where}: cannot read the space file ({err.__class__.__name__})") from None
    raw = parse_yaml(text, where)
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: a space file is a mapping with at least `name` and `model`")
    raw = copy.deepcopy(raw)
    # `--set` fixes a value; a searched parameter that is --set is no longer searched.
    for key, value in (overrides or {}).items():
        if key.split(".")[0] not in ("name", "description", *SECTIONS, "objective", "search"):
            raise UsageError(f"--set {key}: unknown key (keys start with model., data., train., objective. or search.)")
        if isinstance(raw.get("params"), dict):
            raw["params"].pop(key, None)
            _fix_conditions(raw["params"], key, value)
        set_path(raw, key, value)
    try:
        spec_file = _SPACE_FILE.validate_python(raw)
    except ValidationError as err:
        loc, msg = _first_error(err)
        source = f"--set {loc}" if loc in (overrides or {}) else f"{where}: {loc}"
        raise UsageError(f"{source}: {msg}") from None
    space = _check_params(where, raw, spec_file)
    return Spec(path=where, file=spec_file, space=space, raw=raw, text=text)


def _fix_conditions(params: dict, key: str, value: Any) -> None:
    """A parameter conditioned on a now-fixed key either always exists (the fixed value
    satisfies the condition) or never does."""
    for name in list(params):
        entry = params[name]
        when = entry.get("when") if isinstance(entry, dict) else None
        if not isinstance(when, dict) or key not in when:
            continue
        allowed = when[key] if isinstance(when[key], list) else [when[key]]
        if value in allowed:
            params[name] = {**entry, "when": {k: v for k, v in when.items() if k != key}}
        else:
            del params[name]


def _check_params(where: str, raw: dict, spec_file: SpaceFile) -> Space:
    """Cross-parameter checks, then every candidate value tried against its config."""
    params = spec_file.params

    def fail(key: str, msg: str):
        raise UsageError(f"{where}: params.{key}: {msg}")

    fixed_counts: dict[str, int] = {}
    for path, spec in params.items():
        if path.split(".")[0] not in SECTIONS or "." not in path:
            fail(path, f"a parameter sets a config key under {', '.join(s + '.' for s in SECTIONS)} "
                       "(e.g. train.learning_rate)")
        for parent, allowed in spec.when.items():
            if parent == path:
                fail(f"{path}.when", "a parameter cannot depend on itself")
            if parent not in params:
                fail(f"{path}.when", f"{parent!r} is not a parameter of this space")
            if params[parent].per_block:
                fail(f"{path}.when", f"{parent!r} is per-block; conditions need a single value")
            parent_values = _finite_values(params[parent])
            for value in allowed:
                if parent_values is not None and value not in parent_values:
                    fail(f"{path}.when.{parent}", f"{value!r} is not a value {parent!r} can take")
        if spec.per_block:
            count = spec.per_block
            if count in params:
                if params[count].when:
                    fail(f"{path}.per_block", f"{count!r} is conditional (has `when`); a block count must "
                                              "exist in every trial")
                values = _finite_values(params[count])
                if params[count].per_block or values is None or not all(
                        isinstance(v, int) and not isinstance(v, bool) for v in values):
                    fail(f"{path}.per_block", f"{count!r} must be an int or a choice of ints")
            else:
                fixed = _lookup(raw, count)
                if not isinstance(fixed, int) or isinstance(fixed, bool):
                    # Try the record's default (model.blocks defaults to 3).
                    fixed = _lookup(_as_dict(spec_file), count)
                if not isinstance(fixed, int) or isinstance(fixed, bool):
                    fail(f"{path}.per_block", f"{count!r} is neither a parameter nor a fixed integer in the file")
                fixed_counts[count] = fixed
    try:
        dependency_order(params)
    except ValueError as err:
        raise UsageError(f"{where}: params: {err}") from None
    space = Space(params=dict(params), fixed_counts=fixed_counts)

    # Try every candidate (each choice; low and high) in the config it sets, so that
    # `model.block: {choices: [conv-foo]}` fails now, not in trial 37.
    for path, spec in params.items():
        for k, candidate in enumerate(spec.candidates()):
            counts = [None]
            if spec.per_block:
                counts = list(range(space.count_range(spec.per_block)[0], space.count_range(spec.per_block)[1] + 1))
            for count in counts:
                trial_raw = copy.deepcopy(raw)
                value = candidate if count is None else [candidate] * count
                set_path(trial_raw, path, value)
                if count is not None:
                    set_path(trial_raw, spec.per_block, count)
                try:
                    _RUN_CONFIG.validate_python({s: trial_raw.get(s, {}) for s in (*SECTIONS, "objective")
                                                 if s in trial_raw})
                except ValidationError as err:
                    loc, msg = _first_error(err)
                    which = f"choices[{k}]" if isinstance(spec, CategoricalParam) else ("low", "high")[k]
                    if loc != path and not loc.startswith(path + "."):
                        msg = f"{loc}: {msg}"
                    fail(f"{path}.{which}", f"{candidate!r} is not a valid {path}: {msg}")
    return space


def _finite_values(spec) -> list | None:
    if isinstance(spec, CategoricalParam):
        return list(spec.choices)
    if isinstance(spec, IntParam):
        return spec.values()
    return None


def _lookup(tree: dict, path: str) -> Any:
    node: Any = tree
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _as_dict(spec_file: SpaceFile) -> dict:
    return asdict(spec_file)


# --------------------------------------------------------------------------- resolving


def resolve(spec: Spec, values: dict[str, Any]) -> RunConfig:
    """The run configuration for sampled `values` ({config path: value}) over the file's
    fixed settings. An impossible combination raises ValueError with the reason (a sweep
    records that trial as failed and goes on)."""
    raw = copy.deepcopy(spec.raw)
    for path, value in values.items():
        set_path(raw, path, value)
    try:
        return _RUN_CONFIG.validate_python({s: raw[s] for s in (*SECTIONS, "objective") if s in raw})
    except ValidationError as err:
        loc, msg = _first_error(err)
        raise ValueError(f"invalid combination: {loc}: {msg}") from None


def config_dict(config: RunConfig) -> dict:
    """A plain, YAML-ready mapping of a run config (tuples as lists)."""

    def plain(x):
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return plain(asdict(config))


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'train': {'epochs': 3}} -> {'train.epochs': 3}: how parameters are logged."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def run_config_from_dict(tree: dict) -> RunConfig:
    """Validate a logged config mapping (e.g. from an MLflow artifact) back into a record."""
    return _RUN_CONFIG.validate_python(tree)

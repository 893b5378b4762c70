"""Space files: YAML -> a validated `Spec`; sampled values -> the `RunConfig` of one run.

A space file describes one sweep:

    name: quickstart            # the default study name
    model: {family: vgg, ...}   # fixed model settings (records in families.py)
    data: {...}                 # DataConfig (records.py)
    train: {...}                # TrainConfig
    objective: {metric: val_accuracy, direction: maximize}
    search: {...}               # defaults for `blocksweep run` flags
    params:                     # what a sweep varies, by dotted config path (space.py)
      train.learning_rate: {type: float, low: 1.0e-4, high: 0.1, log: true}

`load_spec` validates the whole file before anything runs (every parameter's values are
tried against the config they set) and reports the first problem as one line: file, key
path, what is wrong. `resolve` turns sampled values into the `RunConfig` that one training
run uses.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import TypeAdapter, ValidationError

from search.config.families import FAMILIES
from search.config.records import RunConfig, SpaceFile
from search.config.space import CategoricalParam, IntParam, Space, dependency_order
from search.errors import UsageError, first_line

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


# A space file is a page of settings (the shipped ones are 1-3 kB with up to ~20
# parameters). Larger input is refused before it is parsed: parsing and validation take
# time and memory in proportion to it (1 MB of 22,000 parameters: 2-9 s on the shared
# 2-core machine; loading is linear in the file, it was quadratic before: 38 s).
MAX_FILE_BYTES = 1_000_000
MAX_PARAMS = 1000  # searched parameters; a per-block one counts once
MAX_BLOCKS = 100  # the largest per-block count a parameter may be repeated for
MAX_DEPTH = 32  # nested mappings and lists (params.P.when.Q: [...] is 5 deep)


# libyaml's parser where PyYAML was built with it: the pure-Python one took 4.7 s for a
# 0.8 MB file of 10,000 parameters here, libyaml 1.6 s (the same run, the machine loaded).
# Both share the constructor below.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):
    """A YAML loader for space files: YAML 1.1 reads `1e-4` as a string, this one reads the
    float a user meant; a key given twice in one mapping is an error (YAML keeps the last
    silently, so a second `train:` section would win unseen); an integer too long for
    Python to read (over 4,300 digits) is an error with its place, not a traceback."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may override on purpose
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: the base constructor says why
                    continue
                if first != key_node.start_mark.line + 1:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first given on line {first}; YAML would keep "
                                    "the last silently)", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # Python's int-string limit (sys.get_int_max_str_digits)
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {len(node.value)} characters is too long to be a setting",
                node.start_mark) from None


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|^[-+]?\d[\d_]*\.\d*(?:[eE][-+]?\d+)?$"
               r"|^[-+]?\.\d+(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, where: str) -> Any:
    # Python's cyclic garbage collector walks every live object each time enough new ones
    # pile up; a parse allocates only acyclic nodes and values, and with the collector on,
    # parsing grew faster than the file (1.6 MB of 20,000 parameters: 4.3 s, 1.6 s without).
    collecting = gc.isenabled()
    gc.disable()
    try:
        _check_depth(text, where)
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or first_line(err)
        raise UsageError(f"{where}{at}: invalid YAML: {problem}") from None
    finally:
        if collecting:
            gc.enable()


def _check_depth(text: str, where: str) -> None:
    """Refuse collections nested deeper than MAX_DEPTH before they are built: PyYAML builds
    nested collections recursively, and libyaml's builder then overflows the C stack (a
    segmentation fault, measured with `[[[...]]]` and `- - - ...` 300,000 deep). The event
    stream is flat, so it is read up to the first level too deep and no further."""
    depth = 0
    for event in yaml.parse(text, Loader=_SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1
                raise UsageError(f"{where}:{line}: invalid YAML: collections nested over {MAX_DEPTH} deep "
                                 "(a space file needs about 5)")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


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


def load_spec(source: str | Path | Mapping[str, Any] | Spec, overrides: dict[str, Any] | None = None) -> Spec:
    """Read, override and validate a space completely. Raises UsageError (one line).

    Args:
        source: a space file (YAML), the same content as a mapping (e.g. a dict written
            in a notebook; reported as ``<space>`` in errors), or a `Spec` loaded before
            (validated again with `overrides`).
        overrides: {dotted config path: value}, as `--set` gives them (e.g.
            ``{"train.epochs": 1}``); a searched parameter that is set is no longer searched.

    Returns:
        The validated `Spec`: `file` (the `SpaceFile` record), `space` (what a sweep
        varies), `name`, and `base_config()` (the fixed settings as a `RunConfig`).

    Example:
        >>> spec = load_spec({"name": "tiny", "model": {"family": "vgg", "blocks": 1}})
        >>> spec.file.model.blocks
        1
    """
    if isinstance(source, Spec):
        if not overrides:
            return source
        where, text, raw = source.path, source.text, source.raw
    elif isinstance(source, Mapping):
        where, raw = "<space>", source
        text = yaml.safe_dump(_plain(raw), sort_keys=False)  # what the run logs as space.yaml
    else:
        where = str(source)
        try:
            size = Path(source).stat().st_size
            if size > MAX_FILE_BYTES:
                raise UsageError(f"{where}: {size:,} bytes; a space file is at most {MAX_FILE_BYTES:,} bytes "
                                 "(refused before parsing it)")
            text = Path(source).read_text()
        except FileNotFoundError:
            raise UsageError(f"{where}: no such space file") from None
        except (IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
            raise UsageError(f"{where}: cannot read the space file ({err.__class__.__name__})") from None
        raw = parse_yaml(text, where)
    if not isinstance(raw, Mapping):
        raise UsageError(f"{where}: a space file is a mapping with at least `name` and `model`")
    params = raw.get("params")
    if isinstance(params, Mapping) and len(params) > MAX_PARAMS:
        raise UsageError(f"{where}: params: {len(params):,} parameters; a space searches at most {MAX_PARAMS:,} "
                         "(each is sampled, validated and logged per trial)")
    raw = copy.deepcopy(_plain(raw))
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


def _plain(tree: Any) -> Any:
    """Mappings and tuples as the dicts and lists YAML gives (a notebook may pass either)."""
    if isinstance(tree, Mapping):
        return {k: _plain(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_plain(v) for v in tree]
    return tree


def check_sweep(spec: Spec) -> None:
    """What `blocksweep run` refuses that `blocksweep train` accepts: a trial without a
    validation split. A sweep ranks its trials by a validation objective; with
    `data.val_size: 0` (airbench's benchmark: train on every training image, report the
    test set) only the test set would be left to select on. Raises UsageError (one line)."""
    refusal = ("data.val_size 0 (no validation split: airbench's benchmark, for `blocksweep train`) cannot be "
               "swept: a sweep selects on the validation split and never sees the test set")
    if spec.file.data.val_size == 0:
        raise UsageError(f"{spec.path}: {refusal}")
    searched = spec.space.params.get("data.val_size")
    if searched is not None and 0 in searched.candidates():
        raise UsageError(f"{spec.path}: params.data.val_size: {refusal}")


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
            for value in allowed:
                if not _can_take(params[parent], value):
                    fail(f"{path}.when.{parent}", f"{value!r} is not a value {parent!r} can take")
        if spec.per_block:
            count = spec.per_block
            if count in params:
                if params[count].when:
                    fail(f"{path}.per_block", f"{count!r} is conditional (has `when`); a block count must "
                                              "exist in every trial")
                counter = params[count]
                if counter.per_block or not (isinstance(counter, IntParam) or (
                        isinstance(counter, CategoricalParam) and all(
                            isinstance(v, int) and not isinstance(v, bool) for v in counter.choices))):
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
    # `model.block: {choices: [conv-foo]}` fails now, not in trial 37. Each try copies the
    # config sections alone, never `params`: copying the whole file per candidate made
    # loading quadratic in the number of parameters (a 1 MB file of 20,000 took 7.7 s).
    # Per-block parameters come last, so that their count is known to be valid.
    sections = {key: raw[key] for key in (*SECTIONS, "objective") if key in raw}
    for path, spec in sorted(params.items(), key=lambda item: item[1].per_block is not None):
        counts = [None]
        if spec.per_block:
            low, high = space.count_range(spec.per_block)
            if high > MAX_BLOCKS:
                fail(f"{path}.per_block", f"{spec.per_block!r} can be {high}; a per-block parameter is "
                                          f"repeated for at most {MAX_BLOCKS} blocks")
            counts = list(range(low, high + 1))
        for k, candidate in enumerate(spec.candidates()):
            for count in counts:
                trial_raw = copy.deepcopy(sections)
                value = candidate if count is None else [candidate] * count
                set_path(trial_raw, path, value)
                if count is not None:
                    set_path(trial_raw, spec.per_block, count)
                try:
                    _RUN_CONFIG.validate_python(trial_raw)
                except ValidationError as err:
                    loc, msg = _first_error(err)
                    which = f"choices[{k}]" if isinstance(spec, CategoricalParam) else ("low", "high")[k]
                    if loc != path and not loc.startswith(path + "."):
                        msg = f"{loc}: {msg}"
                    fail(f"{path}.{which}", f"{candidate!r} is not a valid {path}: {msg}")
    return space


def _can_take(spec, value) -> bool:
    """Whether a parameter can take `value` (a float parameter: any value in its range)."""
    if isinstance(spec, CategoricalParam):
        return value in spec.choices
    if isinstance(spec, IntParam):
        return spec.contains(value)
    return True


def _lookup(tree: dict, path: str) -> Any:
    node: Any = tree
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _as_dict(spec_file: SpaceFile) -> dict:
    return asdict(spec_file)


def space_schema() -> dict:
    """The JSON Schema of a space file, generated from the records (`SpaceFile`): every
    key, type, range, choice and default, unknown keys refused. `blocksweep schema` prints
    it; spaces/space.schema.json is this schema (a test keeps it so), and the shipped
    spaces name it in a `# yaml-language-server: $schema=...` line, so editors with a YAML
    language server complete and check space files as they are typed. The cross-field
    rules (conditions, per-block counts, recipes) are checked by `load_spec` only.

    Returns:
        The schema as a dict (JSON Schema draft 2020-12).
    """
    schema = _SPACE_FILE.json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema,
            "title": "Blocksweep space file", "description": "A sweep's fixed settings and the parameters it "
                                                            "searches (README.md, Space files)."}


# --------------------------------------------------------------------------- resolving


def resolve(spec: Spec, values: dict[str, Any]) -> RunConfig:
    """The run configuration for sampled `values` ({config path: value}) over the file's
    fixed settings. An impossible combination raises ValueError with the reason (a sweep
    records that trial as failed and goes on)."""
    raw = copy.deepcopy(spec.raw)
    for path, value in values.items():
        set_path(raw, path, _python(value))
    try:
        return _RUN_CONFIG.validate_python({s: raw[s] for s in (*SECTIONS, "objective") if s in raw})
    except ValidationError as err:
        loc, msg = _first_error(err)
        raise ValueError(f"invalid combination: {loc}: {msg}") from None


def _python(value: Any) -> Any:
    """A sampled value as the Python scalar (or list) the strict records take: an engine
    may hand numpy scalars (Keras Tuner's oracles compute with numpy)."""
    if isinstance(value, (list, tuple)):
        return [_python(v) for v in value]
    item = getattr(value, "item", None)
    return item() if callable(item) and type(value).__module__ == "numpy" else value


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


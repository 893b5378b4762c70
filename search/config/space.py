"""The engine-neutral search space: what may vary, and when.

A space is a list of parameter specs, each naming the config key it sets by its dotted
path (``train.learning_rate``, ``model.block``). Two kinds of structure sit on top:

* a condition (``when: {model.block: [conv-drop-conv-drop-pool]}``): the parameter exists
  only while another parameter has one of those values;
* a per-block parameter (``per_block: model.blocks``): one value per block, for however
  many blocks the trial has; it resolves to a list.

Engines never read this structure themselves. `Space.sample` walks it in dependency order
and asks a `Suggester` (one small adapter per engine) for each active value, telling it
under which conditions the value is active, so Optuna's define-by-run trials and Keras
Tuner's conditional scopes are two translations of the same walk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional, Protocol, Union

from search.config.schema import STRICT, Bool, Float, Int

Scalar = Union[bool, int, float, str]
# Every choice is validated against the config it sets when the file loads (~40 us each
# here), and a grid sampler enumerates them all.
MAX_CHOICES = 1000


def _check_when(when: dict) -> None:
    for parent, allowed in when.items():
        if not allowed:
            raise ValueError(f"when.{parent} lists no values")


@dataclass(frozen=True)
class FloatParam:
    """A real value in [low, high]; `log` samples it log-uniformly; `step` discretises it."""

    low: Float
    high: Float
    log: Bool = False
    step: Optional[Float] = None
    default: Optional[Float] = None
    when: dict[str, tuple[Scalar, ...]] = field(default_factory=dict)
    per_block: str | None = None
    type: Literal["float"] = "float"
    __pydantic_config__: ClassVar = STRICT

    def __post_init__(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite numbers")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.step is not None and self.step > 0:
            steps = (self.high - self.low) / self.step
            if abs(steps - round(steps)) > 1e-8 * max(1.0, steps):
                raise ValueError(f"step {self.step} does not divide high - low ({self.high - self.low:g})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale parameter needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("step and log cannot be combined")
        if self.step is not None and self.step <= 0:
            raise ValueError("step must be positive")
        if self.default is not None and not self.low <= self.default <= self.high:
            raise ValueError(f"default {self.default} is outside [{self.low}, {self.high}]")
        _check_when(self.when)

    def fallback(self) -> float:
        """The value `blocksweep train` uses when the file gives no default."""
        if self.default is not None:
            return self.default
        if self.log:
            return math.exp((math.log(self.low) + math.log(self.high)) / 2)
        return (self.low + self.high) / 2

    def candidates(self) -> list[Any]:
        """Values checked against the model/train config at load time."""
        return [self.low, self.high]


@dataclass(frozen=True)
class IntParam:
    """An integer in [low, high] (both inclusive) on a grid of `step`."""

    low: Int
    high: Int
    step: Int = 1
    log: Bool = False
    default: Optional[Int] = None
    when: dict[str, tuple[Scalar, ...]] = field(default_factory=dict)
    per_block: str | None = None
    type: Literal["int"] = "int"
    __pydantic_config__: ClassVar = STRICT

    def __post_init__(self):
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.step < 1:
            raise ValueError("step must be a positive integer")
        if (self.high - self.low) % self.step:
            # Optuna would narrow the range with a warning; the float case is refused too.
            raise ValueError(f"step {self.step} does not divide high - low ({self.high - self.low})")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("a log-scale int parameter needs low >= 1 and step 1")
        if self.default is not None and not self.contains(self.default):
            raise ValueError(f"default {self.default} is not in range({self.low}, {self.high} + 1, {self.step})")
        _check_when(self.when)

    def fallback(self) -> int:
        return self.default if self.default is not None else self.low

    def candidates(self) -> list[Any]:
        return [self.low, self.high]

    def values(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))

    def contains(self, value: Any) -> bool:
        """Whether `value` is on the grid, without listing it (a range can be huge)."""
        return value in range(self.low, self.high + 1, self.step)


@dataclass(frozen=True)
class CategoricalParam:
    """One of a list of scalar choices (strings, numbers, booleans)."""

    choices: tuple[Scalar, ...]
    default: Scalar | None = None
    when: dict[str, tuple[Scalar, ...]] = field(default_factory=dict)
    per_block: str | None = None
    type: Literal["categorical"] = "categorical"
    __pydantic_config__: ClassVar = STRICT

    def __post_init__(self):
        if not self.choices:
            raise ValueError("choices is empty")
        if len(self.choices) > MAX_CHOICES:
            raise ValueError(f"{len(self.choices)} choices; at most {MAX_CHOICES} (a range of numbers is an int "
                             "or float parameter)")
        if len(set(map(repr, self.choices))) != len(self.choices):
            raise ValueError("choices has duplicates")
        if self.default is not None and self.default not in self.choices:
            raise ValueError(f"default {self.default!r} is not one of the choices")
        _check_when(self.when)

    def fallback(self) -> Scalar:
        return self.default if self.default is not None else self.choices[0]

    def candidates(self) -> list[Any]:
        return list(self.choices)

    def values(self) -> list[Scalar]:
        return list(self.choices)


ParamSpec = Union[FloatParam, IntParam, CategoricalParam]


@dataclass(frozen=True)
class Condition:
    """`name` (a sampled parameter) must take one of `values` for a parameter to exist."""

    name: str
    values: tuple[Scalar, ...]


class Suggester(Protocol):
    """What an engine provides to sample one value. `name` is unique within a trial
    (``model.filters.1`` for block 1 of a per-block parameter); `conditions` say when it
    is active (Keras Tuner turns them into conditional scopes; Optuna ignores them, since
    define-by-run only asks for active values)."""

    def suggest(self, name: str, spec: ParamSpec, conditions: tuple[Condition, ...]) -> Any: ...


class DefaultSuggester:
    """Picks every parameter's default: the configuration `blocksweep train` runs."""

    def suggest(self, name: str, spec: ParamSpec, conditions: tuple[Condition, ...]) -> Any:
        return spec.fallback()


class FixedSuggester:
    """Replays recorded values (flat names as `Space.sample` produces them); used to
    retrain a finished trial's configuration, e.g. for `compare --repeat`."""

    def __init__(self, values: dict[str, Any]):
        self.values = values

    def suggest(self, name: str, spec: ParamSpec, conditions: tuple[Condition, ...]) -> Any:
        return self.values[name] if name in self.values else spec.fallback()


@dataclass(frozen=True)
class Space:
    """The parameters of a sweep, in the order they must be sampled.

    `fixed` holds the fixed config values that a per-block count may refer to
    (``model.blocks: 3`` without a parameter for it)."""

    params: dict[str, ParamSpec]
    fixed_counts: dict[str, int] = field(default_factory=dict)

    @property
    def order(self) -> list[str]:
        """Parameter paths sorted so that every parameter comes after those it depends on.
        The file's order is kept where dependencies allow (stable topological sort)."""
        return dependency_order(self.params)

    def count_range(self, path: str) -> tuple[int, int]:
        """The smallest and largest number of blocks a per-block count path can take."""
        if path in self.params:
            spec = self.params[path]
            if isinstance(spec, IntParam):  # its range, without listing it
                return spec.low, spec.high
            values = spec.values() if hasattr(spec, "values") else []
            ints = [int(v) for v in values]
            return min(ints), max(ints)
        count = self.fixed_counts[path]
        return count, count

    def sample(self, suggester: Suggester) -> dict[str, Any]:
        """Sample one configuration: {config path: value}; per-block paths get lists.
        Inactive conditional parameters are left out (the config keeps its fixed value)."""
        values: dict[str, Any] = {}
        for path in self.order:
            spec = self.params[path]
            if not all(values.get(p) in allowed for p, allowed in spec.when.items()):
                continue
            conditions = tuple(Condition(p, tuple(allowed)) for p, allowed in spec.when.items())
            if spec.per_block is None:
                values[path] = suggester.suggest(path, spec, conditions)
                continue
            count_path = spec.per_block
            count = int(values.get(count_path, self.fixed_counts.get(count_path, 0)))
            per_block = []
            for i in range(count):
                block_conditions = conditions + self._block_condition(count_path, i)
                per_block.append(suggester.suggest(f"{path}.{i}", spec, block_conditions))
            values[path] = per_block
        return values

    def _block_condition(self, count_path: str, i: int) -> tuple[Condition, ...]:
        """Block i exists only when the trial has more than i blocks: a condition on the
        count parameter for blocks beyond its minimum; none for a fixed count."""
        low, _ = self.count_range(count_path)
        if count_path not in self.params or i < low:
            return ()
        more = tuple(v for v in self.params[count_path].values() if int(v) > i)
        return (Condition(count_path, more),)

    def declarations(self) -> list[tuple[str, ParamSpec, tuple[Condition, ...]]]:
        """Every (name, spec, conditions) that any trial can sample, in sampling order:
        the whole space at once, inactive branches included, for engines that declare the
        space before the first trial (Keras Tuner's conditional scopes). A per-block
        parameter appears once per block up to the largest count."""
        out = []
        for path in self.order:
            spec = self.params[path]
            conditions = tuple(Condition(p, tuple(allowed)) for p, allowed in spec.when.items())
            if spec.per_block is None:
                out.append((path, spec, conditions))
                continue
            _, high = self.count_range(spec.per_block)
            out.extend((f"{path}.{i}", spec, conditions + self._block_condition(spec.per_block, i))
                       for i in range(high))
        return out

    def flat_names(self, values: dict[str, Any]) -> dict[str, Any]:
        """{name: value} with per-block lists spread out as ``path.i``: the names engines
        and MLflow record."""
        flat: dict[str, Any] = {}
        for path, value in values.items():
            if isinstance(value, list):
                flat.update({f"{path}.{i}": v for i, v in enumerate(value)})
            else:
                flat[path] = value
        return flat

    def unflatten(self, flat: dict[str, Any]) -> dict[str, Any]:
        """Inverse of `flat_names` for this space: engine records back to config values."""
        return self.sample(FixedSuggester(flat))


def dependency_order(params: dict[str, ParamSpec]) -> list[str]:
    """Stable topological order of parameter paths by their `when` and `per_block` links.
    Raises ValueError naming the parameters in a cycle.

    A depth-first walk with an explicit stack and sets: linear in the number of parameters
    and links, and no recursion limit for a long chain of conditions."""
    deps = {
        path: [d for d in list(spec.when) + ([spec.per_block] if spec.per_block else []) if d in params]
        for path, spec in params.items()
    }
    done: dict[str, None] = {}  # insertion-ordered set: the order
    for root in params:
        if root in done:
            continue
        path_stack: list[str] = [root]  # the chain being visited, for the cycle's message
        on_path = {root}
        todo = [iter(deps[root])]
        while todo:
            dep = next(todo[-1], None)
            if dep is None:
                todo.pop()
                finished = path_stack.pop()
                on_path.discard(finished)
                done[finished] = None
            elif dep in on_path:
                cycle = path_stack[path_stack.index(dep):] + [dep]
                raise ValueError("parameters depend on each other in a cycle: " + " -> ".join(cycle))
            elif dep not in done:
                path_stack.append(dep)
                on_path.add(dep)
                todo.append(iter(deps[dep]))
    return list(done)

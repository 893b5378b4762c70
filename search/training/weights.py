"""Pre-trained weights for the ResNet base: where they come from, and whether they fit.

`model.weights` names one source; each ends up as the list of the base's weight arrays,
checked against the architecture of the config that uses them. A source that is missing
or does not fit is refused with one line (UsageError: exit 2) before anything trains.

    imagenet              Keras's ImageNet weights, downloaded once into ~/.keras/models/.
                          Without a network this fails and says to pass a file instead.
    FILE.h5, .weights.h5  the weights of the base alone: Keras's ImageNet file
                          (resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5, copied from
                          a machine with a network), or what `base.save_weights(...)` writes
    FILE.keras            a whole classifier saved by Blocksweep (a run's kept model, or a
                          bare network): its "resnet50" base is used; its head is not
    DIR                   a folder holding model.keras (what `blocksweep export` writes)
    RUN_ID                an MLflow run (32 hex digits): its kept model (the MLflow model
                          `model`, or a plain model/model.keras kept before models were
                          MLflow models), fetched through search/tracking/ from the current store
    pretrain:SPACE.yaml   a source task the project pre-trains itself: that space file's
                          configuration (its parameters at their defaults, scheme scratch,
                          the same width and stage_blocks) is trained once on CIFAR-10 from
                          the same data folder and cached in mlruns/pretrained/<key>/
                          (model.keras and source.json: its config and results). The key
                          hashes the source config and its data split, so a changed source
                          task is trained anew and an unchanged one is never trained twice.

Paths are relative to the working directory. Loaded weights are remembered in-process
(the last two sources), so a sweep reads a weights file once, not once per trial.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from search.errors import UsageError, first_line
from search.models import resnet50
from search.tracking import RUN_ID
from search.tracking.store import cache_dir, key_of, locked, replace_atomically, splits_digest

PRETRAIN = "pretrain:"
KERAS_FILE = "model.keras"  # in an export folder, a run's MLflow model, the pretrain cache
IMAGENET_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"


@dataclass(frozen=True)
class Source:
    """Weights for a base, from one source."""

    spec: str  # model.weights as written
    kind: str  # imagenet | h5 | keras | export | run | pretrain
    arrays: tuple = field(repr=False)  # the base's weights, in `base.weights` order
    description: str = ""  # what was read: a path, a run's artifact, a cache folder
    details: dict = field(default_factory=dict)  # the source task's config and results (pretrain)


# --------------------------------------------------------------------------- which source


def kind_of(spec: str) -> tuple[str, Optional[Path]]:
    """(kind, local path or None) of a `model.weights` value; UsageError if it names nothing."""
    if spec == "imagenet":
        return "imagenet", None
    if spec.startswith(PRETRAIN):
        return "pretrain", Path(spec[len(PRETRAIN):])
    path = Path(spec)
    if path.is_dir():
        if not (path / KERAS_FILE).is_file():
            raise UsageError(f"model.weights {spec}: the folder holds no {KERAS_FILE} (an export folder does)")
        return "export", path / KERAS_FILE
    if path.is_file():
        if path.name.endswith(".h5"):
            return "h5", path
        if path.suffix == ".keras":
            return "keras", path
        raise UsageError(f"model.weights {spec}: expected a .h5/.weights.h5 weights file or a .keras model")
    if RUN_ID.match(spec):
        return "run", None
    raise UsageError(f"model.weights {spec}: no such file or folder, and not imagenet, an MLflow run id "
                     "or pretrain:SPACE.yaml")


# --------------------------------------------------------------------------- loading

_MEMO: dict[tuple, Source] = {}


def load(config, *, data_folder: Optional[str] = None, tracking_uri: Optional[str] = None,
         announce: bool = False) -> Source:
    """The weights `config.weights` (a resnet50 Config) names, checked to fit its base.

    `data_folder` is where the CIFAR-10 batches are (a pretrain source trains on them);
    `announce` prints one line on stderr before a source task is pre-trained (minutes)."""
    kind, path = kind_of(config.weights)
    memo_key = (config.weights, config.width, tuple(config.stage_blocks), _stamp(path),
                data_folder if kind == "pretrain" else None)
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    if kind == "imagenet":
        source = _imagenet(config)
    elif kind == "h5":
        source = _h5_file(config, path)
    elif kind in ("keras", "export"):
        source = _keras_file(config, path, kind)
    elif kind == "run":
        source = _run(config, tracking_uri)
    else:
        source = _pretrained(config, path, data_folder, announce)
    while len(_MEMO) >= 2:
        _MEMO.pop(next(iter(_MEMO)))
    _MEMO[memo_key] = source
    return source


def check(config, tracking_uri: Optional[str] = None) -> None:
    """Before anything trains: a model config's pre-trained weights exist and fit its
    architecture (UsageError, one line). A pretrain source is only validated here (its
    space file and architecture); it trains on first use. Needs Keras: call after the
    backend is selected. Models without a weights source pass."""
    if not getattr(config, "weights", None):
        return
    kind, path = kind_of(config.weights)
    if kind == "pretrain":
        source_config(path, config)
    else:
        load(config, tracking_uri=tracking_uri)


def assign(base, source: Source) -> None:
    """Put the source's weights into `base` (already checked to fit)."""
    base.set_weights(list(source.arrays))


def _stamp(path: Optional[Path]):
    """A file's identity for the in-process memo: a rewritten file is read again."""
    if path is None or not path.exists():
        return None
    stat = path.stat()
    return (str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def _why(err: Exception) -> str:
    return f"{err.__class__.__name__}: {first_line(err, 200)}"


def _checked(config, spec: str, arrays: list, kind: str, description: str, details=None) -> Source:
    """Compare the arrays with a freshly built base of this config, tensor by tensor."""
    expected = [tuple(w.shape) for w in resnet50.build_base(config).weights]
    got = [tuple(a.shape) for a in arrays]
    arch = f"resnet50 of width {config.width:g} and stage_blocks {list(config.stage_blocks)}"
    if len(got) != len(expected):
        raise UsageError(f"model.weights {spec}: the weights do not fit this {arch}: "
                         f"{len(got)} weight tensors where it has {len(expected)}")
    for i, (g, e) in enumerate(zip(got, expected)):
        if g != e:
            raise UsageError(f"model.weights {spec}: the weights do not fit this {arch}: "
                             f"tensor {i} has shape {g} where it needs {e}")
    return Source(spec=spec, kind=kind, arrays=tuple(arrays), description=description, details=details or {})


def _imagenet(config) -> Source:
    import keras

    shape = (config.input_size, config.input_size, 3)
    try:
        # Keras prints its download progress on stdout, which carries our summary line.
        with contextlib.redirect_stdout(io.StringIO()):
            base = keras.applications.ResNet50(include_top=False, weights="imagenet", input_shape=shape)
    except Exception as err:  # no network: a URL fetch failure (the machines here have none)
        raise UsageError(
            f"model.weights imagenet: the ImageNet weights cannot be downloaded ({_why(err)}); "
            f"pass a weights file instead: --set model.weights=PATH (Keras's {IMAGENET_FILE}, "
            "a .keras model, an export folder or an MLflow run id)") from None
    return _checked(config, "imagenet", base.get_weights(), "imagenet", f"keras.applications ({IMAGENET_FILE})")


def _h5_file(config, path: Path) -> Source:
    """Weights of the base alone. Keras matches them to layers by position and only warns
    about parts it skips; any such warning means the file does not fit, so it is refused."""
    base = resnet50.build_base(config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            base.load_weights(path)
        except Exception as err:
            raise UsageError(f"model.weights {path}: the weights do not fit this resnet50 of width "
                             f"{config.width:g} and stage_blocks {list(config.stage_blocks)} "
                             f"({_why(err)[:160]})") from None
    skipped = [w for w in caught if "could not be loaded" in str(w.message) or "Skipping" in str(w.message)]
    if skipped:
        raise UsageError(f"model.weights {path}: the weights do not fit this resnet50 of width {config.width:g} "
                         f"and stage_blocks {list(config.stage_blocks)} (Keras skipped parts of the file)")
    return _checked(config, str(path), base.get_weights(), "h5", str(path))


def _keras_file(config, path: Path, kind: str, spec: Optional[str] = None, description: str = "",
                details=None) -> Source:
    from search.models import load_model

    from search.models.classifier import network

    spec = spec or config.weights
    try:
        model = load_model(path, compile=False)
    except Exception as err:
        raise UsageError(f"model.weights {spec}: cannot load {path} as a Keras model ({_why(err)})") from None
    try:
        base = network(model).get_layer(resnet50.BASE)  # a kept model wraps the network (raw pixels in)
    except ValueError:
        raise UsageError(f"model.weights {spec}: {path} is not a Blocksweep resnet50 classifier "
                         f"(it has no {resnet50.BASE!r} base layer)") from None
    return _checked(config, spec, base.get_weights(), kind, description or str(path), details)


def _run(config, tracking_uri: Optional[str]) -> Source:
    from search.tracking.tracker import fetch_kept_keras

    with tempfile.TemporaryDirectory() as tmp:
        path = fetch_kept_keras(config.weights, tmp, tracking_uri, what="model.weights")
        if path is None:
            raise UsageError(f"model.weights {config.weights}: the run kept no model "
                             "(a sweep keeps the best trials' models; see --keep-models)")
        return _keras_file(config, path, "run", description=f"run {config.weights} (its kept model)")


# --------------------------------------------------------------------------- the source task


def source_config(path: Path, config):
    """The source task's RunConfig: the space file's parameters at their defaults. It must
    train a resnet50 of the same width and stage_blocks from scratch."""
    from search.config import load_spec, resolve
    from search.config.space import DefaultSuggester

    where = f"model.weights {PRETRAIN}{path}"
    try:
        spec = load_spec(path)
        source = resolve(spec, spec.space.sample(DefaultSuggester()))
    except UsageError as err:
        raise UsageError(f"{where}: {err}") from None
    except ValueError as err:
        raise UsageError(f"{where}: the parameters' defaults do not fit together: {err}") from None
    m = source.model
    if m.family != "resnet50" or m.width != config.width or tuple(m.stage_blocks) != tuple(config.stage_blocks):
        described = f"family {m.family}" + (f", width {m.width:g}, stage_blocks {list(m.stage_blocks)}"
                                            if m.family == "resnet50" else "")
        raise UsageError(f"{where}: its model ({described}) does not fit this resnet50 of width "
                         f"{config.width:g} and stage_blocks {list(config.stage_blocks)}")
    if m.scheme != "scratch":
        raise UsageError(f"{where}: a source task trains from scratch (its model.scheme is {m.scheme})")
    return source


def _pretrained(config, path: Path, data_folder: Optional[str], announce: bool) -> Source:
    """Train the source task once per (source config, data split); reuse it afterwards."""
    import keras

    from search.config import config_dict
    from search.data import load_cifar10, prepare

    source = source_config(path, config)
    splits = prepare(load_cifar10(data_folder), source.data)
    key = key_of({"config": config_dict(source), "data": splits_digest(splits),
                  "backend": keras.backend.backend(), "keras": keras.__version__})
    folder = cache_dir("pretrained") / key
    model_path, summary_path = folder / KERAS_FILE, folder / "source.json"
    with locked(folder):
        if not summary_path.exists():
            _pretrain(source, splits, path, folder, key, announce)
    details = json.loads(summary_path.read_text())
    return _keras_file(config, model_path, "pretrain", spec=f"{PRETRAIN}{path}",
                       description=f"{PRETRAIN}{path} (cached as {folder})", details=details)


def _pretrain(source, splits, path: Path, folder: Path, key: str, announce: bool) -> None:
    from search.config import config_dict
    from search.training.loop import train_and_evaluate  # a source task is a scratch ResNet: the standard path
    from search.training.results import TrialState

    if announce:
        print(f"blocksweep: pre-training the source task {path} once ({splits.sizes()['train']} images, "
              f"{source.train.epochs} epochs); cached in {folder}", file=sys.stderr)
    started = time.perf_counter()
    result = train_and_evaluate(source, splits)
    if result.state is not TrialState.COMPLETE:
        raise RuntimeError(f"pre-training the source task {path} {result.state.value}: {result.reason}")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{KERAS_FILE}.tmp.keras"
    result.model.save(tmp)
    replace_atomically(tmp, folder / KERAS_FILE)
    summary = {"space": str(path), "key": key, "config": config_dict(source), "sizes": splits.sizes(),
               "classes": list(splits.label_names), "result": result.summary(),
               "seconds": round(time.perf_counter() - started, 1)}
    tmp = folder / "source.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    replace_atomically(tmp, folder / "source.json")  # written last: its presence means done

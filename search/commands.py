"""What each command does, as plain functions of plain arguments (cli.py parses flags and
prints). Every function validates all of its input (space file, flags, data, stores)
before it trains anything; bad input raises UsageError.
"""

from __future__ import annotations

from dataclasses import replace

from typing import Optional

from search import backend
from search.config import check_sweep, load_spec, parse_overrides
from search.errors import TrialFailed, UsageError


def _load_data(data_dir, data_config):
    from search.data import load_cifar10, prepare

    return prepare(load_cifar10(data_dir), data_config)


def _check_model(config, tracking_uri: Optional[str]) -> None:
    """Checks that need Keras (a ResNet's pre-trained weights exist and fit its
    architecture): bad input is refused before any data or run."""
    from search.training.weights import check

    check(config.model, tracking_uri=tracking_uri)


def _environment(spec, backend_name: str) -> dict:
    from search.backend import device_kind
    from search.tracking.tracker import environment_tags

    return environment_tags(spec.file.model.family, backend_name, device_kind())


def train(space: str, *, overrides: list[str] | None = None, data_dir: Optional[str] = None,
          backend_name: Optional[str] = None, tracking_uri: Optional[str] = None,
          experiment: Optional[str] = None, quiet: bool = False) -> dict:
    """`blocksweep train`: one configuration (fixed values, each parameter's default),
    logged as one MLflow run. Returns the summary; raises TrialFailed if training broke."""
    spec = load_spec(space, parse_overrides(overrides))
    from search.config import resolve
    from search.config.space import DefaultSuggester

    values = spec.space.sample(DefaultSuggester())
    try:
        config = resolve(spec, values)
    except ValueError as err:
        raise UsageError(f"{spec.path}: the parameters' defaults do not fit together: {err}") from None
    chosen = backend.select(backend_name)
    _check_model(config, tracking_uri)
    splits = _load_data(data_dir, config.data)

    from search.progress import EpochBar
    from search.tracking.tracker import Tracker
    from search.trials.tracked import train_tracked

    tracker = Tracker(tracking_uri)
    exp_id, _ = tracker.experiment(experiment or f"{spec.name}-train")
    run = tracker.start_run(exp_id, spec.name, {**_environment(spec, chosen), "blocksweep.role": "train",
                                                "blocksweep.space": spec.path})
    run.log_text(spec.text, "space.yaml")
    epochs = getattr(config.model, "trial_epochs", lambda e: e)(config.train.epoch_count)  # + a ResNet's head epochs
    bar = EpochBar(epochs, desc=spec.name, enabled=not quiet)
    try:
        result = train_tracked(config, splits, run, progress=bar, title=spec.name)
    finally:
        bar.close()
    summary = {"run_id": run.run_id, "experiment_id": exp_id, "backend": chosen,
               "metric": config.objective.metric, **result.summary()}
    if result.state.value != "completed":
        raise TrialFailed(f"run {run.run_id}: {result.reason}")
    return summary


def sweep(space: str, *, engine: Optional[str] = None, trials: Optional[int] = None,
          study_trials: Optional[int] = None, timeout: Optional[float] = None, study: Optional[str] = None,
          storage: Optional[str] = None, sampler: Optional[str] = None, pruner: Optional[str] = None,
          tuner: Optional[str] = None, seed: Optional[int] = None, max_failures: Optional[int] = None,
          keep_models: Optional[str] = None, heartbeat: float = 10.0, overrides: list[str] | None = None,
          data_dir: Optional[str] = None, backend_name: Optional[str] = None,
          tracking_uri: Optional[str] = None, quiet: bool = False):
    """`blocksweep run`: a tuning sweep; returns its SweepSummary."""
    from search.trials.sweep import Sweep, SweepOptions

    spec = load_spec(space, parse_overrides(overrides))
    check_sweep(spec)  # a sweep's objective never sees the test set
    d = spec.file.search
    engine = engine or d.engine
    _check_flags(engine, study=study, trials=trials, study_trials=study_trials, tuner=tuner, sampler=sampler,
                 pruner=pruner, storage=storage)
    # One study is one engine's: Keras Tuner's default study is named apart from Optuna's,
    # so the same space file runs under both engines without a --study.
    default_study = spec.name if engine == "optuna" else f"{spec.name}-{engine}"
    options = SweepOptions(
        engine=engine, study=study or default_study, storage=storage,
        trials=trials if trials is not None else (None if study_trials else d.trials),
        study_trials=study_trials, timeout=timeout if timeout is not None else d.timeout,
        sampler=sampler or d.sampler, pruner=pruner or d.pruner, tuner=tuner or d.tuner,
        seed=d.seed if seed is None else seed, max_failures=max_failures or d.max_failures,
        keep_models=keep_models or d.keep_models, heartbeat=heartbeat, quiet=quiet)
    _check_counts(options)
    if not spec.space.params:
        raise UsageError(f"{spec.path}: params: the space has no parameters to search (use `blocksweep train`)")
    chosen = backend.select(backend_name)
    _check_model(spec.base_config(), tracking_uri)

    from search.engines import get_engine
    from search.progress import SweepBar
    from search.tracking.tracker import Tracker

    eng = get_engine(options.engine)
    tracker = Tracker(tracking_uri)
    from search.data import load_cifar10

    # The data is checked before the study or the parent run is created.
    s = Sweep(spec=spec, dataset=load_cifar10(data_dir), tracker=tracker, options=options,
              tags=_environment(spec, chosen))
    s.splits_for(spec.base_config().data)
    eng.check(s)
    s.open(storage_kind=_storage_kind(options))
    total = options.trials if options.trials is not None else options.study_trials
    bar = SweepBar(total, s.metric, s.objective.better, enabled=not quiet)
    s.progress = bar
    try:
        return replace(eng.run(s), metric=s.metric)
    finally:
        bar.close()


def _check_flags(engine: str, *, study, trials, study_trials, tuner, sampler, pruner, storage) -> None:
    """Flags that contradict each other or the engine are refused, not ignored."""
    import re

    if study is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", study):
        raise UsageError(f"--study {study!r}: use letters, digits, '_', '.' and '-' (it names an MLflow "
                         "experiment and a folder under mlruns/)")
    if trials is not None and study_trials is not None:
        raise UsageError("--trials and --study-trials: give one (trials of this invocation, or of the whole study)")
    if engine == "optuna" and tuner is not None:
        raise UsageError(f"--tuner {tuner}: Keras Tuner's algorithm; with --engine optuna choose --sampler")
    if engine == "kerastuner":
        if storage is not None:
            raise UsageError("--storage is Optuna's study storage; Keras Tuner keeps its project in "
                             "mlruns/kerastuner/<study>/")
        if sampler is not None:
            raise UsageError(f"--sampler {sampler} is Optuna's; with --engine kerastuner choose "
                             "--tuner random|bayesian|hyperband")
        if pruner is not None:
            raise UsageError(f"--pruner {pruner} is Optuna's; Keras Tuner has no per-epoch pruner "
                             "(--tuner hyperband stops poor configurations early)")


def _check_counts(options) -> None:
    if options.trials is not None and options.trials < 1:
        raise UsageError(f"--trials {options.trials}: must be at least 1")
    if options.study_trials is not None and options.study_trials < 1:
        raise UsageError(f"--study-trials {options.study_trials}: must be at least 1")
    if options.timeout is not None and options.timeout <= 0:
        raise UsageError(f"--timeout {options.timeout:g}: must be positive seconds")
    if options.max_failures < 1:
        raise UsageError(f"--max-failures {options.max_failures}: must be at least 1")
    if options.heartbeat <= 0:
        raise UsageError(f"--heartbeat {options.heartbeat:g}: must be positive seconds")


def _storage_kind(options) -> str:
    from search.tracking.urls import kind

    if options.engine == "kerastuner":
        return "kerastuner-project"
    return kind(options.storage or "sqlite")


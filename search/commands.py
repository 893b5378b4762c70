"""What each command does, as plain functions of plain arguments (cli.py parses flags and
prints). Every function validates all of its input (space file, flags, data, stores)
before it trains anything; bad input raises UsageError.
"""

from __future__ import annotations

from dataclasses import replace

from typing import Mapping, Optional

from search import backend
from search.config import check_sweep, load_spec, parse_overrides
from search.errors import TrialFailed, UsageError


def _load_data(data_dir, data_config):
    from search.data import load_dataset, prepare

    return prepare(load_dataset(data_config, data_dir), data_config)


def _check_fits_images(model, input_shape) -> None:
    """Each VGG block halves the image: too many blocks for small images (a folder's
    data.image_size) would leave nothing to pool."""
    side = min(input_shape[:2])
    if model.family == "vgg" and side >> model.blocks < 1:
        raise UsageError(f"model.blocks {model.blocks}: each block halves the images, and at "
                         f"{input_shape[0]}x{input_shape[1]} (data.image_size) at most {side.bit_length() - 1} fit")


def _check_streamable(config, splits) -> None:
    """A folder too large for memory streams, which the airbench recipe and the transfer
    schemes cannot take (a sweep whose trials switch to them: those trials fail, saying why)."""
    if splits.streamed:
        from search.training import check_streamable

        check_streamable(config, splits)


def _check_data_not_searched(spec) -> None:
    """A sweep loads its images once: the settings that choose them are not searchable."""
    from search.data import DATASET_SETTINGS

    for name in spec.space.params:
        if name.split(".")[:2] in (["data", s] for s in DATASET_SETTINGS):
            raise UsageError(f"{spec.path}: params: {name} cannot be searched (a sweep loads its images once; "
                             "run one sweep per data source)")


def _check_model(config, tracking_uri: Optional[str]) -> None:
    """Checks that need Keras (a ResNet's pre-trained weights exist and fit its
    architecture): bad input is refused before any data or run."""
    from search.training.weights import check

    check(config.model, tracking_uri=tracking_uri)


def _environment(spec, backend_name: str) -> dict:
    from search.backend import device_kind
    from search.tracking.tracker import environment_tags

    return environment_tags(spec.file.model.family, backend_name, device_kind())


def _spec(space, overrides):
    """The space (a file, a mapping or a loaded Spec) with `--set` overrides, given as the
    command line's KEY=VALUE strings or as a {path: value} mapping."""
    return load_spec(space, dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides))


def train(space, *, overrides=None, data_dir: Optional[str] = None,
          backend_name: Optional[str] = None, tracking_uri: Optional[str] = None,
          experiment: Optional[str] = None, system_metrics: Optional[bool] = None, quiet: bool = False) -> dict:
    """`blocksweep train`: one configuration (fixed values, each parameter's default),
    logged as one MLflow run.

    Args:
        space: a space file's path, the same content as a dict, or a loaded `Spec`.
        overrides: fixed values, ``{"train.epochs": 1}`` or ``["train.epochs=1"]`` (``--set``).
        data_dir: the folder holding ``cifar-10-batches-py/`` (default: $BLOCKSWEEP_DATA_DIR,
            then Keras's cache or download).
        backend_name: ``tensorflow``, ``jax``, ``torch`` or ``auto`` (default: $KERAS_BACKEND, else auto).
        tracking_uri: the MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db).
        experiment: the MLflow experiment (default: ``<space name>-train``).
        system_metrics: log CPU, memory and GPU use into the run (MLflow's monitor; default:
            on when training on a GPU).
        quiet: no progress bar.

    Returns:
        The summary the command prints: run_id, experiment_id, backend, metric, objective,
        best_epoch, test_accuracy, train_seconds, images_per_second, ...

    Raises:
        UsageError: bad input (the command's one line); nothing ran.
        TrialFailed: the training broke (the run is recorded failed with the reason).
    """
    spec = _spec(space, overrides)
    from search.config import resolve
    from search.config.space import DefaultSuggester

    values = spec.space.sample(DefaultSuggester())
    try:
        config = resolve(spec, values)
    except ValueError as err:
        raise UsageError(f"{spec.path}: the parameters' defaults do not fit together: {err}") from None
    _check_stores(None, tracking_uri, engine="none")
    chosen = backend.select(backend_name)
    _check_model(config, tracking_uri)
    splits = _load_data(data_dir, config.data)
    _check_fits_images(config.model, splits.input_shape)
    _check_streamable(config, splits)

    from search.progress import EpochBar
    from search.tracking.tracker import Tracker
    from search.trials.tracked import train_tracked

    tracker = Tracker(tracking_uri)
    environment = _environment(spec, chosen)
    exp_id, _ = tracker.experiment(experiment or f"{spec.name}-train")
    run = tracker.start_run(exp_id, spec.name, {**environment, "blocksweep.role": "train",
                                                "blocksweep.space": spec.path})
    run.log_text(spec.text, "space.yaml")
    epochs = getattr(config.model, "trial_epochs", lambda e: e)(config.train.epoch_count)  # + a ResNet's head epochs
    bar = EpochBar(epochs, desc=spec.name, enabled=not quiet)
    try:
        result = train_tracked(config, splits, run, progress=bar, title=spec.name,
                               system_metrics=_system_metrics(system_metrics, environment))
    finally:
        bar.close()
    summary = {"run_id": run.run_id, "experiment_id": exp_id, "backend": chosen,
               "metric": config.objective.metric, **result.summary()}
    if result.state.value != "completed":
        raise TrialFailed(f"run {run.run_id}: {result.reason}")
    return summary


def sweep(space, *, engine: Optional[str] = None, trials: Optional[int] = None,
          study_trials: Optional[int] = None, timeout: Optional[float] = None, study: Optional[str] = None,
          storage: Optional[str] = None, sampler: Optional[str] = None, pruner: Optional[str] = None,
          tuner: Optional[str] = None, seed: Optional[int] = None, max_failures: Optional[int] = None,
          keep_models: Optional[str] = None, heartbeat: float = 10.0, overrides=None,
          data_dir: Optional[str] = None, backend_name: Optional[str] = None,
          tracking_uri: Optional[str] = None, system_metrics: Optional[bool] = None, quiet: bool = False):
    """`blocksweep run`: a tuning sweep, one MLflow parent run with a child run per trial.
    Rerunning with the same study adds trials to it (same parent, no duplicates).

    Args:
        space: a space file's path, the same content as a dict, or a loaded `Spec`.
        engine: ``optuna`` or ``kerastuner`` (default: the space's ``search.engine``).
        trials: trials this call runs (default: the space's ``search.trials``).
        study_trials: instead, run until the whole study has this many finished trials.
        timeout: seconds after which no new trial starts.
        study: the study (and MLflow experiment) name (default: the space's name).
        storage: Optuna's storage URL (default: sqlite:///mlruns/optuna.db).
        sampler, pruner: Optuna's (``tpe|random|cmaes|gp|grid``, ``median|hyperband|halving|none``).
        tuner: Keras Tuner's algorithm (``random|bayesian|hyperband``).
        seed, max_failures, keep_models, heartbeat: as the ``run`` flags of the same names.
        overrides, data_dir, backend_name, tracking_uri, system_metrics, quiet: as for `train`
            (system metrics go into each trial's run).

    Returns:
        A `SweepSummary`: study, engine, parent_run_id, ran (this call's counts),
        study_counts, best_trial, best_value, best_run_id, metric; ``.line()`` is what
        the command prints.

    Raises:
        UsageError: bad input; nothing was recorded.
        Interrupted: Ctrl-C or SIGTERM (the command line's handler); the running trial
            was recorded interrupted and enqueued again; ``.summary`` holds the counts so far.
    """
    from search.trials.sweep import Sweep, SweepOptions

    spec = _spec(space, overrides)
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
    _check_stores(options.storage, tracking_uri, options.engine)
    if not spec.space.params:
        raise UsageError(f"{spec.path}: params: the space has no parameters to search (use `blocksweep train`)")
    _check_data_not_searched(spec)
    chosen = backend.select(backend_name)
    _check_model(spec.base_config(), tracking_uri)

    from search.engines import get_engine
    from search.progress import SweepBar
    from search.tracking.tracker import Tracker

    eng = get_engine(options.engine)
    environment = _environment(spec, chosen)
    options = replace(options, system_metrics=_system_metrics(system_metrics, environment))
    from search.data import load_dataset

    # In this order, so that bad input leaves nothing behind: the data is checked before
    # any store is opened; the engine opens (or creates) its study, refusing one that does
    # not fit, before the MLflow store is opened (its database file created) and the
    # parent run found or created. The stores answered above (`_check_stores`).
    s = Sweep(spec=spec, dataset=load_dataset(spec.base_config().data, data_dir), tracker=None,
              options=options, tags=environment)
    _check_fits_images(spec.base_config().model, s.splits_for(spec.base_config().data).input_shape)
    _check_streamable(spec.base_config(), s.splits_for(spec.base_config().data))
    eng.check(s)
    s.tracker = Tracker(tracking_uri)
    s.open(storage_kind=_storage_kind(options))
    total = options.trials if options.trials is not None else options.study_trials
    bar = SweepBar(total, s.metric, s.objective.better, enabled=not quiet)
    s.progress = bar
    try:
        return replace(eng.run(s), metric=s.metric)
    finally:
        bar.close()


def _system_metrics(asked: Optional[bool], environment: dict) -> bool:
    """MLflow's system metrics: as asked, else on for GPU trials (utilisation and memory are
    what a GPU sweep is watched for; a CPU run is spared the monitor's thread)."""
    return asked if asked is not None else environment["blocksweep.device"] == "gpu"


def _check_flags(engine: str, *, study, trials, study_trials, tuner, sampler, pruner, storage) -> None:
    """Flags that contradict each other or the engine are refused, not ignored."""
    import re

    from search.config.records import MAX_NAME, NAME_PATTERN

    if study is not None and not re.fullmatch(NAME_PATTERN, study):
        raise UsageError(f"--study {study!r}: use letters, digits, '_', '.' and '-' (it names an MLflow "
                         "experiment and a folder under mlruns/)")
    if study is not None and len(study) > MAX_NAME:
        raise UsageError(f"--study {study[:20]}...: {len(study)} characters; at most {MAX_NAME} (it names an "
                         "MLflow experiment, 256 characters at most, and folders under mlruns/, 255 bytes at most)")
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
    from search.config.records import MAX_TRIALS

    for flag, count in (("--trials", options.trials), ("--study-trials", options.study_trials)):
        if count is not None and not 1 <= count <= MAX_TRIALS:
            raise UsageError(f"{flag} {count}: must be 1 to {MAX_TRIALS:,} (each trial is a training run; "
                             "more is a typo)")
    if options.timeout is not None and options.timeout <= 0:
        raise UsageError(f"--timeout {options.timeout:g}: must be positive seconds")
    if options.max_failures < 1:
        raise UsageError(f"--max-failures {options.max_failures}: must be at least 1")
    if options.heartbeat <= 0:
        raise UsageError(f"--heartbeat {options.heartbeat:g}: must be positive seconds")


def _check_stores(storage: Optional[str], tracking_uri: Optional[str], engine: str = "optuna") -> None:
    """The stores, checked before anything is created in them or beside them: a database
    URL's driver is installed (the [postgres] extra), a server or database answers within
    seconds, a local database's folder can be created. Nothing is written here."""
    from search.tracking import store, urls

    stores = [(tracking_uri or store.default_tracking_uri(), "--tracking-uri", "MLflow store")]
    if engine == "optuna":
        stores.append((storage or store.optuna_url(), "--storage", "study storage"))
    for url, flag, what in stores:
        urls.check_driver(url, flag)
        urls.check_reachable(url, flag, what)
        urls.check_local(url, flag)


def _storage_kind(options) -> str:
    from search.tracking.urls import kind

    if options.engine == "kerastuner":
        return "kerastuner-project"
    return kind(options.storage or "sqlite")


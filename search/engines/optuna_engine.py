"""Optuna as a sweep engine: the space as define-by-run suggestions, an ask/tell loop.

Why our own loop instead of `study.optimize`: the loop asks for each trial under a study
lock, so a study-wide budget (`--study-trials N`) is exact across any number of workers
(optimize's MaxTrialsCallback overshoots by up to workers-1), and it keeps our own
heartbeat thread so a worker killed mid-trial is noticed: its trial is failed by
`fail_stale_trials`, mirrored as failed in MLflow, and enqueued again with the same
parameters for whichever worker is free (Optuna's own loop does not rerun it by default).

Storage: SQLite under mlruns/ by default; any SQLAlchemy URL (PostgreSQL for many
workers, with a small connection pool per worker so that many workers stay under the server's
connection limit).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import math
import sys
import threading
import time
import warnings
from typing import Any, Optional

import optuna
from optuna.trial import TrialState as OptunaState

from search.config.space import CategoricalParam, Condition, DefaultSuggester, FloatParam, IntParam, ParamSpec, Space
from search.engines.optuna_storage import cannot_open, storage_url
from search.errors import StoreBusy, UsageError, first_line, interrupted
from search.tracking import urls
from search.training.results import TrialState
from search.trials.sweep import Sweep, SweepSummary

MAX_RETRIES = 3  # times a trial interrupted by a dead worker is run again

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --------------------------------------------------------------------------- the space


def suggest(trial: optuna.Trial, name: str, spec: ParamSpec) -> Any:
    """One parameter spec as Optuna's suggestion of the same distribution."""
    if isinstance(spec, FloatParam):
        return trial.suggest_float(name, spec.low, spec.high, log=spec.log, step=spec.step)
    if isinstance(spec, IntParam):
        return trial.suggest_int(name, spec.low, spec.high, step=spec.step, log=spec.log)
    if isinstance(spec, CategoricalParam):
        return trial.suggest_categorical(name, list(spec.choices))
    raise TypeError(f"unknown parameter spec {spec!r}")


def distribution(spec: ParamSpec) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution `suggest` asks for (to compare a space with a study's)."""
    if isinstance(spec, FloatParam):
        return optuna.distributions.FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
    if isinstance(spec, IntParam):
        return optuna.distributions.IntDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
    return optuna.distributions.CategoricalDistribution(list(spec.choices))


def check_space_fits(study: optuna.Study, space: Space) -> None:
    """A resumed study must keep each parameter's kind (and a categorical its choices):
    Optuna refuses the change mid-trial, leaving that trial half-sampled."""
    seen: dict[str, optuna.distributions.BaseDistribution] = {}
    for trial in study.get_trials(deepcopy=False):
        seen.update(trial.distributions)
    for path, spec in space.params.items():
        names = [n for n in seen if n == path or (spec.per_block and n.rsplit(".", 1)[0] == path)]
        for name in names:
            try:
                optuna.distributions.check_distribution_compatibility(seen[name], distribution(spec))
            except ValueError as err:
                raise UsageError(f"--study {study.study_name}: parameter {name} was sampled as {seen[name]} "
                                 f"there, and the space file now says {distribution(spec)} ({err}); "
                                 "use another --study") from None


class OptunaSuggester:
    """Define-by-run: Optuna is only asked for active parameters, so conditions need no
    translation here."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial

    def suggest(self, name: str, spec: ParamSpec, conditions: tuple[Condition, ...]) -> Any:
        return suggest(self.trial, name, spec)


def grid_values(spec: ParamSpec, name: str) -> list:
    """The finite values of a parameter for the grid sampler."""
    if isinstance(spec, CategoricalParam):
        return list(spec.choices)
    if isinstance(spec, IntParam):
        return spec.values()
    if spec.step is not None:
        n = int(round((spec.high - spec.low) / spec.step))
        return [spec.low + i * spec.step for i in range(n + 1)]
    raise UsageError(f"--sampler grid: parameter {name} is continuous; give it a step or use choices")


def grid_space(space: Space) -> dict[str, list]:
    grid: dict[str, list] = {}
    for path, spec in space.params.items():
        if spec.per_block:
            _, high = space.count_range(spec.per_block)
            for i in range(high):
                grid[f"{path}.{i}"] = grid_values(spec, path)
        else:
            grid[path] = grid_values(spec, path)
    return grid


# --------------------------------------------------------------------------- samplers, pruners


class AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler stops `study.optimize` when the grid is exhausted, which raises under
    ask/tell; our loop asks `is_exhausted` before each trial instead."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def _base_sampler(name: str, seed: int, space: Space) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # multivariate+group model the joint and conditional structure; constant_liar keeps
        # parallel workers from all sampling the same point.
        with _quiet_experimental():
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        if importlib.util.find_spec("cmaes") is None:
            raise UsageError("--sampler cmaes needs the 'cmaes' package: pip install 'blocksweep[cmaes]'")
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":
        if importlib.util.find_spec("torch") is None:
            raise UsageError("--sampler gp needs PyTorch: pip install 'blocksweep[torch]'")
        return optuna.samplers.GPSampler(seed=seed)
    if name == "grid":
        return AskTellGridSampler(grid_space(space), seed=seed)
    raise UsageError(f"--sampler: unknown sampler {name!r}")


class PerTrialSeed(optuna.samplers.BaseSampler):
    """A sampler re-seeded for every trial from (seed, trial number).

    Optuna's samplers draw from one RNG seeded once per process. A resumed sweep (a new
    process, same --seed) would replay the draws of its first invocation, and several
    workers started with the same seed would draw the same first trials. Trial numbers are
    unique within a study across processes, so a fresh inner sampler seeded from
    (seed, number) gives every trial its own draws, the same ones for the same seed and
    history (one worker still reproduces its sweep exactly). The samplers keep no state
    between trials but their RNG (TPE and GP read the history; CMA-ES and the grid keep
    theirs in the storage), so re-creating them per trial loses nothing."""

    def __init__(self, make, seed: int):
        self._make, self._seed = make, seed
        self.inner = make(seed)

    def _trial_seed(self, number: int) -> int:
        return int(hashlib.sha256(f"{self._seed}:{number}".encode()).hexdigest()[:8], 16)

    def before_trial(self, study, trial) -> None:
        self.inner = self._make(self._trial_seed(trial.number))
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def make_sampler(name: str, seed: int, space: Space) -> optuna.samplers.BaseSampler:
    """The --sampler, seeded per trial (see PerTrialSeed). Not the grid: its seed shuffles
    the grid once, and grid ids must mean the same points in every process, so it keeps
    one seed (it already never repeats a point: visited ids are read from the storage)."""
    if name == "grid":
        return _base_sampler(name, seed, space)
    return PerTrialSeed(lambda trial_seed: _base_sampler(name, trial_seed, space), seed)


def max_trial_epochs(spec) -> int:
    """The most epochs any trial of the space can run, and so report to a pruner: the
    largest train.epochs the space can sample (the file's when it is not searched), plus
    the head epochs of a fine-tuning transfer trial (which trains its head first)."""
    params = spec.space.params

    def largest(path: str, fixed):
        p = params.get(path)
        if p is None:
            return fixed
        return max(p.choices) if isinstance(p, CategoricalParam) else p.high

    epochs = math.ceil(largest("train.epochs", spec.file.train.epochs))
    model = spec.file.model
    if hasattr(model, "head_epochs"):
        schemes = params["model.scheme"].choices if "model.scheme" in params else (model.scheme,)
        if "finetune" in schemes:
            epochs += int(largest("model.head_epochs", model.head_epochs))
    return epochs


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """The --pruner; `epochs` is the most epochs a trial can report (Hyperband's budget)."""
    if name == "median":
        # Once two trials have finished, stop a trial whose epoch is below their median.
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UsageError(f"--pruner: unknown pruner {name!r}")


# --------------------------------------------------------------------------- storage


def make_storage(url: str, heartbeat: float, on_stale) -> optuna.storages.RDBStorage:
    if urls.kind(url) == "sqlite":
        # Several local workers may share the file: wait for locks rather than fail.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        # Many workers x small pools: each worker needs a connection for its trial loop
        # and one for its heartbeat; pre-ping survives server restarts.
        engine_kwargs = {"pool_size": 2, "max_overflow": 2, "pool_pre_ping": True, "pool_recycle": 300}
    interval = max(1, int(round(heartbeat)))
    # Optuna 4.9 renamed the stale-trial hook; accept both.
    hook = ("heartbeat_stale_trial_callback"
            if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
            else "failed_trial_callback")
    try:
        # Workers starting together on an empty database would all create the tables.
        with _quiet_experimental(), urls.exclusive(url, "optuna schema"):
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=interval,
                                              grace_period=3 * interval, **{hook: on_stale})
    except StoreBusy:  # reached, but its schema lock stays taken: says so itself
        raise
    except Exception as err:  # bad URL, unreachable server, missing driver
        raise cannot_open(url, err) from None


@contextlib.contextmanager
def _quiet_experimental():
    """Heartbeats are 'experimental' in Optuna and 'meant for Study.optimize'; we use them
    on purpose with ask/tell (our own heartbeat thread), so silence those two warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        yield


def study_lock(storage: optuna.storages.RDBStorage, url: str, study: str):
    """Mutual exclusion between all workers of a study, for the instant of deciding
    whether to start another trial: a PostgreSQL advisory lock, a MySQL named lock, or a
    file lock beside an SQLite database (see search/tracking/urls.py)."""
    return urls.exclusive(url, study, engine=storage.engine)


def trial_id(storage: optuna.storages.RDBStorage, study: optuna.Study, trial: optuna.Trial) -> int:
    """The storage's id of a trial (what heartbeats are recorded against), through the
    storage's public lookups: the trial object keeps it only in a private attribute."""
    study_id = storage.get_study_id_from_name(study.study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)


class Heartbeat:
    """Records a running trial's heartbeat every `interval` seconds on its own thread.

    A beat that fails (the database unreachable) must not kill the trial, but it must not
    pass silently either: once beats stop for 3 x --heartbeat another worker takes the
    trial over. The first failure is said on stderr, and every one is counted (`failures`,
    recorded with the trial)."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int, interval: float, number: int = -1):
        self.storage, self.trial_id, self.interval, self.number = storage, trial_id, interval, number
        self.failures = 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{trial_id}")

    def _beat(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as err:  # a transient database error must not kill the trial
                self.failures += 1
                if self.failures == 1:
                    print(f"blocksweep: warning: trial {self.number}: its heartbeat could not be recorded "
                          f"({err.__class__.__name__}: {first_line(err, 200)}); retrying every {self.interval:g} s "
                          f"(after 3 x --heartbeat without one, another worker takes the trial over)",
                          file=sys.stderr, flush=True)
            self.stop_event.wait(self.interval)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join(timeout=self.interval + 5)


# --------------------------------------------------------------------------- the engine


def _counts(study: optuna.Study) -> dict[str, int]:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {"completed": states.count(OptunaState.COMPLETE), "pruned": states.count(OptunaState.PRUNED),
            "failed": states.count(OptunaState.FAIL), "running": states.count(OptunaState.RUNNING),
            "waiting": states.count(OptunaState.WAITING)}


def _best(study: optuna.Study) -> tuple[Optional[int], Optional[float], Optional[str]]:
    try:
        best = study.best_trial
    except ValueError:  # no completed trial yet
        return None, None, None
    return best.number, best.value, best.user_attrs.get("mlflow_run_id")


class OptunaEngine:
    name = "optuna"

    def __init__(self):
        self._unmirrored: list[tuple[str, str]] = []  # (trial key, reason) to mirror into MLflow

    def check(self, sweep: Sweep) -> None:
        """Open (or create) the study before the MLflow parent exists, so that a bad
        --storage, a study of the other direction or of another space is refused before
        anything is recorded."""
        self._opened = self.open_study(sweep)

    def open_study(self, sweep: Sweep) -> tuple[optuna.Study, optuna.storages.RDBStorage, str]:
        o = sweep.options
        url = storage_url(o.storage)
        sampler = make_sampler(o.sampler, o.seed, sweep.spec.space)  # UsageError when it cannot run
        pruner = make_pruner(o.pruner, max_trial_epochs(sweep.spec))

        def on_stale(study: optuna.Study, failed: optuna.trial.FrozenTrial) -> None:
            # Called by fail_stale_trials, under the study lock (`_next_trial`).
            reason = self._enqueue_retry(study, failed, "its worker stopped sending heartbeats (killed or lost)")
            self._unmirrored.append((str(failed.number), reason))

        storage = make_storage(url, o.heartbeat, on_stale)
        study = optuna.create_study(study_name=o.study, storage=storage, load_if_exists=True,
                                    direction=sweep.objective.goal, sampler=sampler, pruner=pruner)
        if study.direction.name.lower() != sweep.objective.goal:
            raise UsageError(f"--study {o.study}: the existing study {study.direction.name.lower()}s, "
                             f"but the space file asks to {sweep.objective.goal} {sweep.metric}")
        check_space_fits(study, sweep.spec.space)
        if study.metric_names is None:  # optuna-dashboard and optuna.visualization name the axis by it
            with _quiet_experimental():
                study.set_metric_names([sweep.metric])
        return study, storage, url

    @staticmethod
    def _enqueue_retry(study: optuna.Study, failed: optuna.trial.FrozenTrial, why: str) -> str:
        """Enqueue an interrupted trial again (with the same parameters, up to MAX_RETRIES
        times) and note why in the study. Called under the study lock, and touches only the
        study: what MLflow must learn of it is mirrored once the lock is released
        (`_mirror`), so that a slow tracking server never holds every worker up.
        Returns the reason recorded."""
        retries = int(failed.user_attrs.get("retries", 0))
        again = retries < MAX_RETRIES
        reason = f"interrupted: {why}" + ("; retried with the same parameters" if again else
                                          f"; not retried (already retried {retries} times)")
        study.set_user_attr(f"interrupted_{failed.number}", reason)
        if again:
            study.enqueue_trial(failed.params, user_attrs={"retry_of": failed.number, "retries": retries + 1})
        return reason

    def _mirror(self, sweep: Sweep) -> None:
        """Mark the child runs of the trials failed under the lock as failed, with the reason."""
        while self._unmirrored:
            key, reason = self._unmirrored.pop(0)
            sweep.tracker.mark_interrupted(sweep.experiment_id, sweep.parent_run_id, key, reason)

    def _interrupt(self, sweep: Sweep, study: optuna.Study, storage, url: str, trial: optuna.Trial,
                   why: str) -> None:
        """This worker was stopped (Ctrl-C, SIGTERM) mid-trial: under the study lock, fail
        the trial and enqueue its retry, as one step to the other workers' budget check;
        then mirror it into MLflow. A trial another worker has already taken over (this
        one's heartbeats had stopped) keeps that verdict and its retry."""
        with study_lock(storage, url, sweep.options.study):
            if storage.get_trial(trial_id(storage, study, trial)).state is not OptunaState.RUNNING:
                return
            trial.set_user_attr("fail_reason", f"interrupted: {why}")
            frozen = study.tell(trial, state=OptunaState.FAIL, skip_if_finished=True)
            reason = self._enqueue_retry(study, frozen, why)
        self._unmirrored.append((str(trial.number), reason))
        self._mirror(sweep)

    def _enqueue_defaults(self, sweep: Sweep, study: optuna.Study) -> None:
        """A space whose parameters carry defaults starts with that configuration."""
        space = sweep.spec.space
        if not any(spec.default is not None for spec in space.params.values()):
            return
        if study.user_attrs.get("defaults_enqueued") or study.get_trials(deepcopy=False):
            return
        study.enqueue_trial(space.flat_names(space.sample(DefaultSuggester())))
        study.set_user_attr("defaults_enqueued", True)

    def _next_trial(self, sweep: Sweep, study: optuna.Study, storage, url: str, started: float,
                    ran: int) -> tuple[Optional[optuna.Trial], str]:
        """Under the study lock: ask for a trial, or say why this worker stops."""
        o = sweep.options
        while True:
            # As Optuna's optimize: the timeout is checked between trials (a running trial
            # is never cut short), and the first trial always starts.
            if o.timeout is not None and ran and time.monotonic() - started >= o.timeout:
                return None, f"timeout {o.timeout:g}s reached (--timeout or search.timeout)"
            if o.trials is not None and ran >= o.trials:
                return None, ""
            if sweep.counts.failed >= o.max_failures:
                return None, f"{sweep.counts.failed} trials failed (--max-failures {o.max_failures})"
            sampler = study.sampler
            if isinstance(sampler, AskTellGridSampler) and sampler.is_exhausted(study):
                return None, "the grid is exhausted"
            try:
                trial, why = self._ask_under_lock(sweep, study, storage, url)
            finally:
                self._mirror(sweep)  # the dead workers' trials, outside the lock
            if trial is not None or why:
                return trial, why
            # Budget taken but trials still run elsewhere: one may yet die and need us.
            time.sleep(min(2.0, o.heartbeat))

    def _ask_under_lock(self, sweep: Sweep, study: optuna.Study, storage,
                        url: str) -> tuple[Optional[optuna.Trial], str]:
        """(a trial, "") to run; (None, why) to stop; (None, "") to wait and ask again."""
        o = sweep.options
        with study_lock(storage, url, o.study):
            # Under the lock: failing a dead worker's trial and enqueueing its retry
            # must look like one step to the budget check below, or another worker
            # sees the budget short by one in between and starts a 13th trial.
            with _quiet_experimental():
                optuna.storages.fail_stale_trials(study)
            self._enqueue_defaults(sweep, study)
            if o.study_trials is None:
                return self._ask(study, storage), ""
            c = _counts(study)
            if c["completed"] + c["pruned"] + c["running"] + c["waiting"] < o.study_trials or c["waiting"]:
                return self._ask(study, storage), ""
            if c["running"] == 0:
                return None, f"the study has its {o.study_trials} trials"
        return None, ""

    @staticmethod
    def _ask(study: optuna.Study, storage) -> optuna.Trial:
        """A new (or waiting) trial with its first heartbeat already recorded: Optuna only
        calls a trial stale once it has a heartbeat, so a worker dying between the ask and
        its heartbeat thread's first beat would otherwise leave the trial RUNNING forever."""
        with _quiet_experimental():
            trial = study.ask()
        storage.record_heartbeat(trial_id(storage, study, trial))
        return trial

    def run(self, sweep: Sweep) -> SweepSummary:
        study, storage, url = getattr(self, "_opened", None) or self.open_study(sweep)
        started = time.monotonic()
        ran, stopped = 0, ""
        try:
            while True:
                trial, stopped = self._next_trial(sweep, study, storage, url, started, ran)
                if trial is None:
                    break
                ran += 1
                try:
                    self._run_one(sweep, study, storage, url, trial)
                except KeyboardInterrupt as err:
                    stop = interrupted(err)
                    try:
                        self._interrupt(sweep, study, storage, url, trial, f"stopped by {stop.by}")
                    except Exception as fail:  # noqa: BLE001 - the parent must still be closed below
                        # A busy lock or a store gone away: the trial keeps RUNNING with no
                        # heartbeat, so a later worker fails it and enqueues its retry.
                        print(f"blocksweep: could not record trial {trial.number} as interrupted "
                              f"({first_line(fail, 200)}); a later run retries it", file=sys.stderr)
                    raise stop from None
        except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: its trial is failed and enqueued again
            stop = interrupted(err)
            stop.summary = self._finish(sweep, study, stop.name, "killed")
            raise stop from None
        return self._finish(sweep, study, stopped, self._outcome(sweep, study, stopped))

    @staticmethod
    def _outcome(sweep: Sweep, study: optuna.Study, stopped: str) -> str:
        """How the parent closes when this worker stops on its own: "finished" only when
        the study's budget is done (--study-trials reached, or this invocation's --trials,
        --timeout or the grid) with no retry waiting; "failed" when failures stopped it."""
        o = sweep.options
        c = _counts(study)
        if (sweep.counts.failed and not sweep.counts.completed and not sweep.counts.pruned) or \
                stopped.endswith(f"(--max-failures {o.max_failures})"):
            return "failed"
        if c["waiting"] or (o.study_trials is not None and c["completed"] + c["pruned"] < o.study_trials):
            return "killed"
        return "finished"

    def _finish(self, sweep: Sweep, study: optuna.Study, stopped: str, outcome: str) -> SweepSummary:
        """Mirror the study's best and counts into the parent, close it unless a trial is
        still running elsewhere, and sum up."""
        counts = _counts(study)
        number, value, run_id = _best(study)
        sweep.record_best(number, value, run_id, latest=lambda: _best(study))
        sweep.record_counts(counts)
        sweep.close(counts, outcome)
        return SweepSummary(study=sweep.options.study, engine=self.name, experiment_id=sweep.experiment_id,
                            parent_run_id=sweep.parent_run_id, ran=vars(sweep.counts).copy(),
                            study_counts=counts, best_trial=number, best_value=value, best_run_id=run_id,
                            stopped_because=stopped, metric=sweep.metric, first_failure=sweep.first_failure)

    def _run_one(self, sweep: Sweep, study: optuna.Study, storage, url: str, trial: optuna.Trial) -> None:
        """Sample, train and tell one trial (Ctrl-C and SIGTERM are `run`'s to handle)."""
        def report(epoch: int, value: float) -> bool:
            trial.report(value, epoch)
            return trial.should_prune()

        def best_so_far() -> Optional[float]:
            return _best(study)[1]

        retry_of = trial.user_attrs.get("retry_of")
        extra = {"blocksweep.retry_of": retry_of} if retry_of is not None else {}
        with Heartbeat(storage, trial_id(storage, study, trial), sweep.options.heartbeat, trial.number) as beat:
            try:
                values = sweep.spec.space.sample(OptunaSuggester(trial))
            except Exception as err:  # Optuna refused a value: the trial fails, the sweep goes on
                reason = f"sampling failed: {err.__class__.__name__}: {str(err).strip()[:500]}"
                trial.set_user_attr("fail_reason", reason)
                study.tell(trial, state=OptunaState.FAIL, skip_if_finished=True)
                sweep.counted(trial.number, TrialState.FAILED, reason)
                return
            result, run_id = sweep.run_trial(trial.number, values, report=report, best_so_far=best_so_far,
                                             trial_key=str(trial.number), extra_tags=extra)
        try:
            if beat.failures:
                trial.set_user_attr("heartbeat_failures", beat.failures)
            trial.set_user_attr("mlflow_run_id", run_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            self._lost(sweep, run_id, result)
            return
        # A takeover in the milliseconds from here to `tell` keeps the other worker's
        # verdict (skip_if_finished) rather than crash this worker.
        if result.state is TrialState.COMPLETE:
            study.tell(trial, result.objective, skip_if_finished=True)
            sweep.record_best(*_best(study), latest=lambda: _best(study))
        elif result.state is TrialState.PRUNED:
            study.tell(trial, state=OptunaState.PRUNED, skip_if_finished=True)
        else:
            trial.set_user_attr("fail_reason", result.reason)
            study.tell(trial, state=OptunaState.FAIL, skip_if_finished=True)

    @staticmethod
    def _lost(sweep: Sweep, run_id: str, result) -> None:
        """This worker went silent for longer than the heartbeat grace (paused, swapped out,
        cut off from the database) and another worker failed its trial and enqueued a
        retry. That verdict stands: this result is discarded and its run says so. (Without
        this, the worker died on Optuna's "Trial#N has already finished" error, the race
        known from many-worker studies.)"""
        sweep.tracker.run(run_id).finish(
            "failed", "interrupted: this worker sent no heartbeat for longer than 3 x --heartbeat (paused or cut "
                      "off), so its trial was failed and retried by a worker; this late result was discarded")
        counts = sweep.counts  # this invocation ran a failed trial, not the result it counted
        name = {TrialState.COMPLETE: "completed", TrialState.PRUNED: "pruned"}.get(result.state, "failed")
        setattr(counts, name, getattr(counts, name) - 1)
        counts.failed += 1

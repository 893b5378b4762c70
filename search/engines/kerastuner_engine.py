"""Keras Tuner as a sweep engine: its oracles decide what to try, our trainer trains.

Keras Tuner's part: an Oracle (random search, Bayesian optimisation or Hyperband) picks
each trial's values from the same parsed space as Optuna (`hp_call` and `KTSuggester`
translate it; conditions become conditional scopes), keeps the study's state in a project
directory, `mlruns/kerastuner/<study>/`, so that rerunning the command resumes it, and in
its distributed mode serves one chief oracle to any number of workers over gRPC.

Not Keras Tuner's part: building and fitting models and saving checkpoints. `SweepTuner`
subclasses `BaseTuner` rather than `keras_tuner.Tuner` (whose `run_trial` builds the
hypermodel, fits it and saves a checkpoint every epoch) and overrides `run_trial` to call
`Sweep.run_trial`, the door every engine goes through: the same child runs, parameters,
per-epoch metrics, states, curves and kept best model as an Optuna trial.

What Keras Tuner still writes, a few kB per trial: `oracle.json` (the oracle's state:
space, seed state, Hyperband brackets, which trials are running), `<tuner id>.json` (an
empty tuner state, which marks the project as resumable), `trial_<id>/trial.json` (a
trial's values, score and status) and, from us, `blocksweep.json` (the tuner and objective
the project was started with) and `kerastuner-<tuner id>.log` (what Keras Tuner prints;
stdout carries only our summary).

Keras Tuner 1.4.8 facts this module relies on (read in its source; pinned <1.5):
* `Oracle.reload` moves every trial that was RUNNING when the project was last saved into
  its retry queue, and `create_trial` hands those out first, under the same trial id. A
  process killed mid-trial therefore gets that trial back on the rerun; `run_trial` finds
  the earlier attempt's MLflow child by the trial key, marks it failed ("interrupted...")
  and trains the same values again as a new child (tags `blocksweep.retry_of`,
  `blocksweep.attempt`), at most `MAX_RETRIES` times. A process stopped by Ctrl-C or SIGTERM
  leaves its trial the same way (so it is retried too), having closed its child run failed
  with the signal and the parent KILLED.
* Keras Tuner has no pruned state and no per-epoch pruner; early stopping is Hyperband's
  successive halving across trials. `--sampler` and `--pruner` are Optuna's.
* `Oracle(seed=0)` means "no seed" (`seed or random.randint(...)`), hence `kt_seed`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import keras_tuner as kt
from keras_tuner.engine import hyperparameters as kt_hp
from keras_tuner.engine.base_tuner import BaseTuner
from keras_tuner.engine.trial import TrialStatus

from search.config.space import CategoricalParam, Condition, DefaultSuggester, FloatParam, IntParam, ParamSpec, Space
from search.errors import UsageError, first_line, interrupted
from search.tracking import store
from search.training.results import TrialResult, TrialState
from search.trials.sweep import Sweep, SweepSummary

PROJECTS = store.STORE / "kerastuner"  # one project directory per study, relative to cwd
MAX_RETRIES = 3  # times an interrupted trial is run again (as in the Optuna engine)
HYPERBAND_FACTOR = 3  # Hyperband's reduction factor (Optuna's HyperbandPruner uses 3 too)
NEVER = 2**62  # Keras Tuner's own consecutive-failure limit raises out of end_trial; --max-failures decides
ALL_TRIALS = 2**31 - 1  # get_best_trials(n) pads the best with every other trial: all of them, over gRPC
CHIEF_TIMEOUT_S = 120  # a worker waits this long for the chief to answer (Keras Tuner's default: an hour)
WORKER_GRACE_S = 30  # the chief waits this long, once idle, for workers that may still ask for a trial
POLL_S = 0.5  # how often the chief looks at its oracle


# --------------------------------------------------------------------------- the space


def hp_call(name: str, spec: ParamSpec) -> tuple[str, dict[str, Any]]:
    """One parameter spec as the Keras Tuner `HyperParameters` method and its arguments
    that declare the same distribution: ("Float" | "Int" | "Choice", kwargs)."""
    if isinstance(spec, FloatParam):
        return "Float", {"name": name, "min_value": spec.low, "max_value": spec.high, "step": spec.step,
                         "sampling": "log" if spec.log else "linear", "default": spec.default}
    if isinstance(spec, IntParam):
        # With sampling="log", Keras Tuner's step is a factor, not a distance: a log-scale
        # int (always step 1 here) has no step there.
        return "Int", {"name": name, "min_value": spec.low, "max_value": spec.high,
                       "step": None if spec.log else spec.step,
                       "sampling": "log" if spec.log else "linear", "default": spec.default}
    if isinstance(spec, CategoricalParam):
        return "Choice", {"name": name, "values": list(spec.choices), "default": spec.default}
    raise TypeError(f"unknown parameter spec {spec!r}")


def hp_object(name: str, spec: ParamSpec, conditions: tuple[Condition, ...]) -> kt_hp.HyperParameter:
    """The Keras Tuner hyperparameter for one parameter spec, active only while every
    condition holds (a conjunction: `model.block` AND the block count `model.blocks`, say).

    Keras Tuner's `hp.conditional_scope` accepts a nested scope only when the inner parent
    was itself declared inside the outer scope (its nested-model style), which our
    conjunctions of parents declared elsewhere are not. Every hyperparameter's config
    carries its conditions, though: the object is built from that config (Keras Tuner's
    own serialisation format, `Parent` conditions included) and registered with
    `HyperParameters.merge`."""
    method, kwargs = hp_call(name, spec)
    config = {**kwargs, "conditions": [{"class_name": "Parent", "config": {"name": c.name, "values": list(c.values)}}
                                       for c in conditions]}
    if method == "Choice":
        config["ordered"] = None  # Keras Tuner decides (numbers are ordered, strings not)
    return getattr(kt_hp, method).from_config(config)


class KTSuggester:
    """Samples one trial's values from Keras Tuner's `HyperParameters`: each suggestion is
    registered (if new) with its conditions, then read back; an inactive one reads None."""

    def __init__(self, hp: kt.HyperParameters):
        self.hp = hp

    def suggest(self, name: str, spec: ParamSpec, conditions: tuple[Condition, ...]) -> Any:
        self.hp.merge([hp_object(name, spec, conditions)], overwrite=False)
        return self.hp.values.get(name)


def declare_space(space: Space) -> kt.HyperParameters:
    """The whole space as Keras Tuner hyperparameters, inactive branches included, in
    sampling order (parents before the parameters that depend on them)."""
    hp = kt.HyperParameters()
    suggester = KTSuggester(hp)
    for name, spec, conditions in space.declarations():
        suggester.suggest(name, spec, conditions)
    return hp


def check_space(space: Space) -> None:
    """Refuse what Keras Tuner's hyperparameters cannot express (UsageError)."""
    for path, spec in space.params.items():
        if isinstance(spec, CategoricalParam):
            kinds = sorted({type(v).__name__ for v in spec.choices})
            if len(kinds) > 1:
                raise UsageError(f"params.{path}: Keras Tuner's hp.Choice needs choices of one type "
                                 f"(int, float, str or bool), got {' and '.join(kinds)}")


# --------------------------------------------------------------------------- oracles


class _DefaultsFirst:
    """A new project's first trial is the space's defaults, as in the Optuna engine (when
    any parameter has a default). Every Keras Tuner oracle draws its random points, and
    Hyperband its new brackets' trials, through `_random_values`."""

    first_values: Optional[dict] = None

    def _random_values(self):
        if self.first_values and not self.trials:
            return dict(self.first_values)
        return super()._random_values()


class RandomOracle(_DefaultsFirst, kt.oracles.RandomSearchOracle):
    pass


class BayesianOracle(_DefaultsFirst, kt.oracles.BayesianOptimizationOracle):
    pass


class HyperbandOracle(_DefaultsFirst, kt.oracles.HyperbandOracle):
    pass


def kt_seed(seed: int) -> int:
    """Keras Tuner reads seed 0 as "no seed" and numpy needs 0 <= seed < 2**32: every
    --seed (0 and negatives included) maps to a fixed seed in [1, 2**32 - 1]."""
    return seed % (2**32 - 1) + 1


def make_oracle(tuner: str, sweep: Sweep) -> kt.Oracle:
    space = sweep.spec.space
    goal = "max" if sweep.objective.goal == "maximize" else "min"
    common = dict(objective=kt.Objective(sweep.metric, goal), seed=kt_seed(sweep.options.seed),
                  hyperparameters=declare_space(space), max_retries_per_trial=0,
                  max_consecutive_failed_trials=NEVER)
    if tuner == "random":
        oracle = RandomOracle(max_trials=None, **common)
    elif tuner == "bayesian":
        oracle = BayesianOracle(max_trials=None, **common)
    elif tuner == "hyperband":
        # The space's epochs budget is Hyperband's max_epochs; iterations are unbounded
        # (None) so that --trials, not Hyperband, ends the sweep.
        oracle = HyperbandOracle(max_epochs=sweep.spec.file.train.epoch_count, factor=HYPERBAND_FACTOR,
                                 hyperband_iterations=None, **common)
    else:
        raise UsageError(f"--tuner: unknown Keras Tuner algorithm {tuner!r}")
    if any(spec.default is not None for spec in space.params.values()):
        oracle.first_values = space.flat_names(space.sample(DefaultSuggester()))
    oracle.verbose = 0  # no trial tables on the terminal (our progress bar shows trials)
    return oracle


def kt_outcome(result: TrialResult, metric: str) -> tuple[str, Optional[dict], str]:
    """How a trial's result is told to Keras Tuner: (status, metrics for update_trial or
    None, message). This engine never passes a pruner to the trainer (Keras Tuner has no
    pruned state), so a trial either completed with an objective or failed."""
    if result.state is TrialState.FAILED or result.objective is None:
        return TrialStatus.FAILED, None, result.reason or "failed"
    return TrialStatus.COMPLETED, {metric: float(result.objective)}, ""


def waiting_retries(oracle: kt.Oracle) -> list:
    """Trials handed out before and not finished, which the oracle will hand out again: a
    reloaded project's interrupted trials keep status RUNNING but are no longer ongoing."""
    ongoing = {t.trial_id for t in oracle.ongoing_trials.values()}
    return [t for t in oracle.trials.values() if t.status == TrialStatus.RUNNING and t.trial_id not in ongoing]


# --------------------------------------------------------------------------- distributed mode


def role() -> str:
    """"single", "chief" or "worker", from Keras Tuner's environment variables (its rule:
    distributed when KERASTUNER_ORACLE_IP is set; the chief's tuner id contains "chief")."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "single"
    return "chief" if "chief" in os.environ.get("KERASTUNER_TUNER_ID", "") else "worker"


def check_distributed() -> None:
    if role() == "single":
        return
    missing = [v for v in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID") if not os.environ.get(v)]
    if missing:
        raise UsageError(f"KERASTUNER_ORACLE_IP is set (distributed mode) but {' and '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} not")
    port = os.environ["KERASTUNER_ORACLE_PORT"]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"KERASTUNER_ORACLE_PORT {port!r}: not a port number")


def chief_address() -> str:
    return f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"


# --------------------------------------------------------------------------- the tuner


@dataclass
class Budget:
    """This invocation's limits: --trials, --timeout, --max-failures."""

    trials: Optional[int]
    timeout: Optional[float]
    max_failures: int
    started: float
    ran: int = 0

    def timed_out(self) -> bool:
        return self.timeout is not None and time.monotonic() - self.started >= self.timeout

    def stop_reason(self, failed: int) -> Optional[str]:
        """Why this invocation stops now ("" for its --trials done), or None to go on."""
        if self.timed_out():
            return f"timeout {self.timeout:g}s reached (--timeout or search.timeout)"
        if self.trials is not None and self.ran >= self.trials:
            return ""
        if failed >= self.max_failures:
            return f"{failed} trials failed (--max-failures {self.max_failures})"
        return None


class SweepTuner(BaseTuner):
    """A Keras Tuner tuner whose trials are our tracked trainings (`Sweep.run_trial`)."""

    def __init__(self, oracle: kt.Oracle, sweep: Sweep, tuner: str, directory: Path):
        self.sweep = sweep
        self.tuner_name = tuner
        self.run_ids: dict[str, str] = {}  # trial key -> completed child run, as looked up
        self.last_best: tuple[Optional[int], Optional[float], Optional[str]] = (None, None, None)
        self.last_counts: dict[str, int] = {}
        self.current_key: Optional[str] = None  # the trial this process is running
        # overwrite=False: an existing project is reloaded (Keras Tuner's resume).
        super().__init__(oracle=oracle, hypermodel=None, directory=str(directory),
                         project_name=sweep.options.study, overwrite=False)

    # ------------------------------------------------------------ one trial

    def run_trial(self, trial, *args, **kwargs) -> TrialResult:
        """Train the trial's values through `Sweep.run_trial`. A trial that Keras Tuner
        hands out again (it was running when its process died) has MLflow children from
        the earlier attempts: they are marked failed ("interrupted...") and the same values
        train again as a new child, at most MAX_RETRIES times."""
        sweep, hp = self.sweep, trial.hyperparameters
        number = int(trial.trial_id)
        key = str(number)
        earlier = sweep.tracker.children(sweep.experiment_id, sweep.parent_run_id,
                                         f"tags.`blocksweep.trial_key` = '{key}'")
        extra = {"blocksweep.tuner": self.tuner_name, "blocksweep.kt_trial_id": trial.trial_id,
                 "blocksweep.kt_tuner_id": self.tuner_id}  # which worker ran it
        if earlier:
            again = len(earlier) <= MAX_RETRIES
            reason = ("interrupted: its worker stopped before finishing the trial (killed or lost); "
                      + ("retried with the same parameters" if again
                         else f"not retried (already retried {len(earlier) - 1} times)"))
            sweep.tracker.mark_interrupted(sweep.experiment_id, sweep.parent_run_id, key, reason)
            if not again:
                return TrialResult.failed(reason)
            extra.update({"blocksweep.retry_of": key, "blocksweep.attempt": len(earlier) + 1})
        values = sweep.spec.space.sample(KTSuggester(hp))
        if self.tuner_name == "hyperband":
            # Hyperband's budget for this trial: tuner/epochs epochs, trained from scratch
            # (tuner/initial_epoch is recorded, not resumed from: we keep no checkpoints).
            values["train.epochs"] = int(hp.values["tuner/epochs"])
            extra.update({"blocksweep.hyperband.bracket": hp.values.get("tuner/bracket"),
                          "blocksweep.hyperband.round": hp.values.get("tuner/round"),
                          "blocksweep.hyperband.epochs": hp.values["tuner/epochs"],
                          "blocksweep.hyperband.initial_epoch": hp.values.get("tuner/initial_epoch", 0)})
            if hp.values.get("tuner/trial_id"):
                extra["blocksweep.hyperband.promoted_from"] = int(hp.values["tuner/trial_id"])
        self.current_key = key
        result, run_id = sweep.run_trial(number, values, best_so_far=self.best_value, trial_key=key,
                                         extra_tags=extra)
        self.current_key = None
        if result.state is TrialState.COMPLETE:
            self.run_ids[key] = run_id
        return result

    def interrupt(self, by: str) -> None:
        """Ctrl-C or SIGTERM mid-trial: the trial stays RUNNING in the oracle's saved state,
        which Keras Tuner hands out again when the project is reloaded (its retry); its
        child run is closed failed with the reason now (the trainer does it when the
        signal came mid-training, this covers the moments around it)."""
        if self.current_key is None:
            return
        self.sweep.tracker.mark_interrupted(self.sweep.experiment_id, self.sweep.parent_run_id, self.current_key,
                                            f"interrupted: stopped by {by}; retried with the same parameters "
                                            f"when the project is resumed")

    def tell(self, trial, result: TrialResult) -> None:
        """Report the outcome to the oracle (status, score, reason) and end the trial."""
        status, metrics, message = kt_outcome(result, self.sweep.metric)
        if metrics is not None:
            self.oracle.update_trial(trial.trial_id, metrics, step=result.best_epoch or 0)
        trial.status, trial.message = status, message or None
        self.on_trial_end(trial)  # oracle.end_trial(trial), then save the tuner

    # ------------------------------------------------------------ the study, as the oracle sees it

    def study_trials(self) -> list:
        if self._is_worker():  # an OracleClient: ask the chief
            return self.oracle.get_best_trials(ALL_TRIALS)
        return list(self.oracle.trials.values())

    def best_value(self) -> Optional[float]:
        best = self.oracle.get_best_trials(1)
        if best and best[0].status == TrialStatus.COMPLETED and best[0].score is not None:
            return float(best[0].score)
        return None

    def refresh(self) -> None:
        """Read the study's counts and best trial from the oracle and mirror them into the
        parent run. A worker does this between trials, while the chief is sure to answer."""
        trials = self.study_trials()
        statuses = [t.status for t in trials]
        completed = [t for t in trials if t.status == TrialStatus.COMPLETED and t.score is not None]
        local = not self._is_worker()
        self.last_counts = {
            "completed": len(completed), "pruned": 0,
            "failed": statuses.count(TrialStatus.FAILED) + statuses.count(TrialStatus.INVALID),
            "running": len(self.oracle.ongoing_trials) if local else statuses.count(TrialStatus.RUNNING),
            "waiting": len(waiting_retries(self.oracle)) if local else 0}
        if completed:
            maximize = self.sweep.objective.goal == "maximize"
            best = sorted(completed, key=lambda t: t.score, reverse=maximize)[0]
            key = str(int(best.trial_id))
            self.last_best = (int(key), float(best.score), self._run_id(key))
            self.sweep.record_best(*self.last_best)
        self.sweep.record_counts(self.last_counts)

    def _run_id(self, key: str) -> Optional[str]:
        if key not in self.run_ids:
            runs = self.sweep.tracker.children(
                self.sweep.experiment_id, self.sweep.parent_run_id,
                f"tags.`blocksweep.trial_key` = '{key}' and tags.`blocksweep.state` = 'completed'")
            if runs:
                self.run_ids[key] = runs[0].info.run_id
        return self.run_ids.get(key)

    # ------------------------------------------------------------ the loops

    def search(self, budget: Budget) -> str:
        """Run trials until this invocation's budget or the oracle says stop; returns why
        it stopped ("" when --trials were done). The chief serves instead."""
        if role() == "chief":
            return self.serve(budget)
        self.save()  # from now on a rerun reloads the project, even if trial 0 is interrupted
        worker = self._is_worker()
        lost = _rpc_error() if worker else ()  # a worker's oracle calls go to the chief over gRPC
        while True:
            why = budget.stop_reason(self.sweep.counts.failed)
            if why is not None:
                return why
            try:
                trial = self.oracle.create_trial(self.tuner_id)
                if trial.status == TrialStatus.STOPPED:
                    return self._stopped_reason(worker)
                if trial.status == TrialStatus.IDLE:  # Hyperband waits for other workers' trials
                    time.sleep(1.0)
                    continue
                budget.ran += 1
                result = self.run_trial(trial)
                self.tell(trial, result)
                self.refresh()
            except lost as err:  # the chief is gone or never came up (after CHIEF_TIMEOUT_S)
                why = f"the chief oracle at {chief_address()} did not answer ({_rpc_code(err)})"
                if budget.ran == 0:
                    raise UsageError(f"KERASTUNER_ORACLE_IP/PORT: {why}; start the chief first") from None
                return why

    def _stopped_reason(self, worker: bool) -> str:
        if worker:
            return "the chief oracle has no more trials"
        o = self.oracle
        if o.max_trials and len(o.trials) >= o.max_trials:
            return "" if self.sweep.options.study_trials is None else \
                f"the study has its {self.sweep.options.study_trials} trials"
        return "Keras Tuner's oracle stopped (the search space is exhausted)"

    def serve(self, budget: Budget) -> str:
        """The chief: serve the oracle to the workers over gRPC until the budget is handed
        out and every trial has ended. Keras Tuner's own `start_server` does the same but
        polls every 20 s once stopping and waits forever for workers that left on their own
        (their --trials, --timeout, --max-failures, a kill): this one polls every POLL_S and
        stops once no trial is running and no worker has called for WORKER_GRACE_S.
        --timeout stops handing out new trials."""
        from concurrent import futures

        import grpc
        # Keras Tuner has no public API for serving its oracle over gRPC but the blocking
        # `start_server`, which never returns (see above): its service protos are private.
        from keras_tuner.src import protos

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))  # one RPC at a time, as Keras Tuner
        servicer = _servicer(self.oracle)
        protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
        address = chief_address()
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if not bound:
            raise UsageError(f"KERASTUNER_ORACLE_IP/PORT {address}: the chief cannot listen there (port in use?)")
        self.save()
        server.start()
        why, closed, started_with = "", False, len(self.oracle.start_order)
        try:
            while True:
                time.sleep(POLL_S)
                if not closed and budget.timed_out():
                    self.oracle.max_trials = len(self.oracle.trials)  # no new trials from now on
                    closed, why = True, f"timeout {budget.timeout:g}s reached (--timeout or search.timeout)"
                if self.oracle.ongoing_trials:
                    continue
                quiet = time.monotonic() - servicer.last_call > WORKER_GRACE_S
                if servicer.stop_triggered or closed:
                    if not self.oracle.tuner_ids or quiet:  # every worker told to stop, or gone
                        break
                elif quiet and len(self.oracle.start_order) > started_with:
                    why = "the workers left before the budget was handed out"
                    break
        finally:
            server.stop(grace=2)
        return why


def _servicer(oracle):
    """Keras Tuner's gRPC servicer for the oracle, noting when a worker last called."""
    # Private, for the same reason as `protos` in `serve`: no public servicer class.
    from keras_tuner.src.distribute.oracle_chief import OracleServicer

    class Servicer(OracleServicer):
        def __init__(self, oracle):
            super().__init__(oracle)
            self.last_call = time.monotonic()

        def _called(self, method, request, context):
            self.last_call = time.monotonic()
            try:
                return method(request, context)
            finally:
                self.last_call = time.monotonic()

        def CreateTrial(self, request, context):
            return self._called(super().CreateTrial, request, context)

        def UpdateTrial(self, request, context):
            return self._called(super().UpdateTrial, request, context)

        def EndTrial(self, request, context):
            return self._called(super().EndTrial, request, context)

        def GetBestTrials(self, request, context):
            return self._called(super().GetBestTrials, request, context)

    return Servicer(oracle)


def _rpc_error() -> tuple[type, ...]:
    import grpc

    return (grpc.RpcError,)


def _rpc_code(err: Exception) -> str:
    code = getattr(err, "code", None)
    return str(code()) if callable(code) else err.__class__.__name__


# --------------------------------------------------------------------------- the engine


class KerasTunerEngine:
    name = "kerastuner"

    def __init__(self):
        self._lock = None  # the project's lock file, held from check() to the end of run()

    def check(self, sweep: Sweep) -> None:
        # --sampler/--pruner/--storage on the command line are refused earlier
        # (commands._check_flags); the space file's Optuna defaults are simply not used.
        o, spec = sweep.options, sweep.spec
        if o.tuner == "hyperband" and "train.epochs" in spec.space.params:
            raise UsageError(f"{spec.path}: params.train.epochs: --tuner hyperband sets each trial's epochs "
                             f"itself (up to train.epochs); do not search it")
        check_space(spec.space)
        check_distributed()
        project = PROJECTS / o.study
        marker, wanted = _read_marker(project), _marker(sweep)
        for key, flag in (("tuner", "--tuner"), ("objective", "objective"), ("max_epochs", "train.epochs")):
            if marker and marker.get(key) != wanted.get(key):
                raise UsageError(f"{flag}: study {o.study} was started with {key} {marker.get(key)} "
                                 f"({project}), this run asks for {wanted.get(key)}; use another --study")
        if role() != "worker":  # one process owns the oracle's files: a single run, or the chief
            project.mkdir(parents=True, exist_ok=True)
            self._lock = _lock_project(project, o.study)

    def run(self, sweep: Sweep) -> SweepSummary:
        o = sweep.options
        project = PROJECTS / o.study
        project.mkdir(parents=True, exist_ok=True)
        who = role()
        # The parent's tags say what ran: the tuner is the sampler, and nothing prunes.
        sweep.tracker.run(sweep.parent_run_id).set_tags(
            {"blocksweep.sampler": o.tuner, "blocksweep.pruner": "none",
             "blocksweep.kerastuner_project": str(project.resolve())})
        tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "tuner0")
        with contextlib.ExitStack() as stack:
            if self._lock is not None:
                stack.callback(self._lock.close)  # taken in check(); closing the file unlocks
                _write_marker(project, _marker(sweep))
            log = stack.enter_context(open(project / f"kerastuner-{tuner_id}.log", "a"))
            stack.enter_context(contextlib.redirect_stdout(log))  # Keras Tuner prints; stdout is ours
            if who == "worker":
                # The client's timeout has no public setting (its default is an hour).
                from keras_tuner.src.distribute import oracle_client

                oracle_client.TIMEOUT = CHIEF_TIMEOUT_S  # read at each call
            try:
                tuner = SweepTuner(make_oracle(o.tuner, sweep), sweep, o.tuner, PROJECTS)
            except RuntimeError as err:  # Keras Tuner cannot reload the project's files
                raise UsageError(f"{project}: cannot reload the Keras Tuner project ({first_line(err)})") from None
            if who != "worker":
                oracle = tuner.oracle
                if o.study_trials is not None:
                    oracle.max_trials = o.study_trials
                elif o.trials is not None:
                    # --trials counts this invocation: Keras Tuner's max_trials counts the
                    # project's trials, and the retried ones are among this invocation's.
                    retries = len(waiting_retries(oracle))
                    oracle.max_trials = len(oracle.trials) + max(o.trials - retries, 0)
            trials = o.trials
            if who == "worker" and trials == sweep.spec.file.search.trials:
                trials = None  # a worker runs until the chief's budget is spent, unless told otherwise
            budget = Budget(trials=trials, timeout=o.timeout, max_failures=o.max_failures,
                            started=time.monotonic())
            try:
                stopped = tuner.search(budget)
            except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM
                stop = interrupted(err)
                tuner.interrupt(stop.by)
                stop.summary = self._finish(sweep, tuner, who, stop.name, signalled=True)
                raise stop from None
            return self._finish(sweep, tuner, who, stopped)

    def _finish(self, sweep: Sweep, tuner: SweepTuner, who: str, stopped: str,
                signalled: bool = False) -> SweepSummary:
        """Mirror the study into the parent and close it, and sum up. After Ctrl-C or
        SIGTERM (`signalled`), the trial this process was running waits for its retry
        and no longer runs. A worker never closes the parent: the chief does, once every
        trial has ended."""
        o = sweep.options
        if who != "worker":
            tuner.refresh()
        counts = dict(tuner.last_counts)
        if signalled and tuner.current_key is not None and who != "worker" and counts.get("running"):
            counts["running"] -= 1
            counts["waiting"] = counts.get("waiting", 0) + 1
        number, value, run_id = tuner.last_best
        ran = sweep.counts
        if signalled:
            outcome = "killed"
        elif (ran.failed and not ran.completed) or stopped.endswith(f"(--max-failures {o.max_failures})"):
            outcome = "failed"
        else:
            outcome = "killed" if counts.get("waiting") else "finished"
        sweep.close({"running": 1} if who == "worker" else counts, outcome)
        return SweepSummary(study=o.study, engine=self.name, experiment_id=sweep.experiment_id,
                            parent_run_id=sweep.parent_run_id, ran=vars(sweep.counts).copy(),
                            study_counts=counts, best_trial=number, best_value=value, best_run_id=run_id,
                            stopped_because=stopped, metric=sweep.metric, first_failure=sweep.first_failure)


# --------------------------------------------------------------------------- project files


def _lock_project(project: Path, study: str):
    """Keras Tuner's project files have one writer; a second process on the same study
    must be a distributed worker. Returns the open lock file (closing it unlocks); the
    lock goes with the process, kill -9 included."""
    handle = open(project / ".blocksweep.lock", "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UsageError(f"--study {study}: another process is running this Keras Tuner project ({project}); "
                         f"run more workers in Keras Tuner's distributed mode (see README)") from None
    return handle


def _marker(sweep: Sweep) -> dict:
    """What a project cannot change once started: the algorithm, the objective and, for
    Hyperband, its max_epochs (kept in the oracle's state)."""
    o = sweep.options
    marker = {"tuner": o.tuner, "objective": f"{sweep.objective.goal} {sweep.metric}"}
    if o.tuner == "hyperband":
        marker["max_epochs"] = sweep.spec.file.train.epoch_count
    return marker


def _read_marker(project: Path) -> dict:
    try:
        return json.loads((project / "blocksweep.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_marker(project: Path, marker: dict) -> None:
    if not (project / "blocksweep.json").exists():
        (project / "blocksweep.json").write_text(json.dumps(marker) + "\n")

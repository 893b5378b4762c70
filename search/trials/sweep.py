"""A sweep: one space, one study, one MLflow parent run, many trials.

The engine (Optuna, Keras Tuner) decides what to try next; the sweep turns each
configuration into a tracked trial. `Sweep.run_trial` is the one door every engine goes
through: it resolves the sampled values into a run config, opens the trial's child run
under the parent, trains through `tracked.train_tracked`, keeps the model when the trial is
the best so far, and updates the parent's best-so-far. Engines translate the space and
report back; they never touch MLflow or Keras training themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

from search.config import Augment, Spec, resolve
from search.data import prepare
from search.errors import UsageError
from search.training.results import TrialResult, TrialState


@dataclass(frozen=True)
class SweepOptions:
    """The `blocksweep run` flags, after the space file's `search:` defaults."""

    engine: str = "optuna"
    study: str = ""
    storage: Optional[str] = None  # SQLAlchemy URL; None: sqlite under mlruns/
    trials: Optional[int] = 10  # trials this invocation runs
    study_trials: Optional[int] = None  # stop when the study has this many finished trials
    timeout: Optional[float] = None  # seconds of wall time for this invocation
    sampler: str = "tpe"
    pruner: str = "median"
    tuner: str = "random"
    seed: int = 0
    max_failures: int = 5
    keep_models: str = "best"
    heartbeat: float = 10.0  # seconds between a running trial's heartbeats
    system_metrics: bool = False  # MLflow's CPU/memory/GPU monitor on each trial's run
    quiet: bool = False


@dataclass
class Counts:
    completed: int = 0
    pruned: int = 0
    failed: int = 0

    def add(self, state: TrialState) -> None:
        if state is TrialState.COMPLETE:
            self.completed += 1
        elif state is TrialState.PRUNED:
            self.pruned += 1
        else:
            self.failed += 1

    @property
    def total(self) -> int:
        return self.completed + self.pruned + self.failed


@dataclass(frozen=True)
class SweepSummary:
    study: str
    engine: str
    experiment_id: str
    parent_run_id: str
    ran: dict  # this invocation: completed / pruned / failed
    study_counts: dict  # the whole study, all workers
    best_trial: Optional[int]
    best_value: Optional[float]
    best_run_id: Optional[str]
    stopped_because: str = ""
    metric: str = ""  # the objective metric, as the sweep ran it (--set included)
    first_failure: str = ""  # "trial N: reason" of this invocation's first failed trial

    @property
    def all_failed(self) -> bool:
        """Every trial this invocation ran failed (the command exits 1)."""
        ran = self.ran
        return ran["failed"] > 0 and ran["completed"] == 0 and ran["pruned"] == 0

    def line(self) -> str:
        ran = self.ran
        best = (f"best trial {self.best_trial}: {self.metric} {self.best_value:.4f} (run {self.best_run_id})"
                if self.best_value is not None else "no completed trial yet")
        why = f"; stopped: {self.stopped_because}" if self.stopped_because else ""
        return (f"study {self.study} [{self.engine}]: ran {ran['completed']} completed, {ran['pruned']} pruned, "
                f"{ran['failed']} failed; {best}; parent run {self.parent_run_id}{why}")


@dataclass
class Sweep:
    """Everything the engines share: the space, the data, the tracker and the parent run."""

    spec: Spec
    dataset: Any  # data.Cifar10 or data.ImageFolder, as loaded; trials get splits by their own data config
    tracker: Any  # tracking.tracker.Tracker
    options: SweepOptions
    tags: dict = field(default_factory=dict)  # environment tags for every run
    experiment_id: str = ""
    parent_run_id: str = ""
    counts: Counts = field(default_factory=Counts)
    first_failure: str = ""  # "trial N: reason" of this invocation's first failed trial
    progress: Optional[Callable[["Sweep", int, TrialResult], None]] = None
    _splits: dict = field(default_factory=dict)
    _best_run_id: Optional[str] = None  # the trial whose values the parent carries

    @property
    def objective(self):
        return self.spec.file.objective

    @property
    def metric(self) -> str:
        return self.objective.metric

    def open(self, storage_kind: str) -> None:
        """Find or create the sweep's parent run (see tracking.Tracker.sweep_parent)."""
        o = self.options
        tags = {**self.tags, "blocksweep.engine": o.engine, "blocksweep.sampler": o.sampler,
                "blocksweep.pruner": o.pruner, "blocksweep.storage_kind": storage_kind,
                "blocksweep.space_sha256": self.spec.sha256, "blocksweep.space": self.spec.path,
                "blocksweep.objective": f"{self.objective.goal} {self.metric}"}
        if o.engine == "kerastuner":
            tags["blocksweep.tuner"] = o.tuner
        engine = self.tracker.existing_parent_tags(o.study).get("blocksweep.engine")
        if engine and engine != o.engine:  # one study, one engine: never mix their trials
            raise UsageError(f"--study {o.study}: that study was swept by {engine}; give the {o.engine} "
                             "sweep another --study")
        self.experiment_id, self.parent_run_id, created = self.tracker.sweep_parent(o.study, tags, self.spec.text)
        if created:  # the data the sweep's trials share, so the parent's row names it too
            self.tracker.run(self.parent_run_id).log_splits(self.splits_for(self.spec.base_config().data))
        else:
            # Same study, different space file: say so in the parent rather than mix silently.
            parent = self.tracker.client.get_run(self.parent_run_id)
            if parent.data.tags.get("blocksweep.space_sha256") not in (None, self.spec.sha256):
                self.tracker.run(self.parent_run_id).set_tags({"blocksweep.space_changed": "true"})

    # ---------------------------------------------------------------- trials

    def run_trial(self, number: int, values: dict[str, Any], *, report=None,
                  best_so_far: Callable[[], Optional[float]] = lambda: None,
                  trial_key: Optional[str] = None, extra_tags: Optional[dict] = None) -> tuple[TrialResult, str]:
        """Train one sampled configuration as a child run. Returns (result, child run id).

        `best_so_far()` gives the study's best objective before this trial (to decide
        whether this trial's model is kept); `trial_key` identifies the trial to the engine
        (for mirroring a retried trial's state)."""
        flat = self.spec.space.flat_names(values)
        # A worker that ended while this one was between trials may have closed the
        # parent; a trial under it makes it RUNNING again (as a resumed sweep does).
        self.tracker.reopen_parent(self.parent_run_id)
        tags = {**self.tags, "blocksweep.engine": self.options.engine,
                "blocksweep.trial_key": trial_key if trial_key is not None else str(number),
                "blocksweep.searched": ",".join(sorted(flat)), **(extra_tags or {})}
        child = self.tracker.start_trial(self.experiment_id, self.parent_run_id, self.options.study, number, tags)
        try:
            config = resolve(self.spec, values)
            splits = self.splits_for(config.data)
        except (ValueError, UsageError) as err:  # an impossible combination of values
            child.log_params({f"param.{k}": v for k, v in flat.items()})
            result = TrialResult.failed(str(err))
            child.finish("failed", result.reason)
        else:
            kept = []

            def keep(result: TrialResult) -> bool:
                if self.options.keep_models == "all":
                    return True
                best = best_so_far()
                kept.append(best is None or self.objective.better(result.objective, best))
                return kept[-1]

            result = self._train(config, splits, child, report, keep, number, flat)
            if any(kept):  # --keep-models best: the models of the trials this one beats go
                self.tracker.drop_worse_models(self.experiment_id, self.parent_run_id, child.run_id,
                                               result.objective, self.objective.goal)
        self.counted(number, result.state, result.reason)
        if self.progress is not None:
            self.progress(self, number, result)
        return result, child.run_id

    def counted(self, number: int, state: TrialState, reason: str = "") -> None:
        """Count a trial of this invocation (and keep the first failure's reason)."""
        self.counts.add(state)
        if state is TrialState.FAILED and not self.first_failure:
            self.first_failure = f"trial {number}: {reason or 'no reason recorded'}"

    def splits_for(self, data_config):
        """The splits for a trial's data config, prepared once per distinct config
        (augmentation runs inside the model, so it does not change the splits). Always
        with a validation split: the objective is never computed on the test set."""
        # config.check_sweep refused data.val_size 0, in the file and among the searched values.
        assert data_config.val_size != 0, "a sweep's trials select on a validation split"
        key = replace(data_config, augment=Augment())
        if key not in self._splits:
            if len(self._splits) >= 2:  # searched data options: keep memory bounded
                self._splits.pop(next(iter(self._splits)))
            self._splits[key] = prepare(self.dataset, data_config)
        return self._splits[key]

    def _train(self, config, splits, child, report, keep, number, flat) -> TrialResult:
        from search.trials.tracked import train_tracked  # imports Keras: only once a trial trains

        extra = {f"param.{k}": v for k, v in flat.items()}
        return train_tracked(config, splits, child, report=report, keep_model=keep,
                             title=f"{self.options.study} trial {number}", extra_params=extra,
                             system_metrics=self.options.system_metrics)

    def record_best(self, number: Optional[int], value: Optional[float], run_id: Optional[str],
                    latest: Optional[Callable[[], tuple]] = None) -> None:
        """Mirror the study's best-so-far (trial number, value, run id) into the parent run.
        When the best trial changes, the parent also takes on that trial's metrics (its
        latest values, under the same names, at step = trial number) and searched values
        (tags `best.<name>`: MLflow's parameters cannot change once logged), so the sweep's
        collapsed row in the UI already says which configuration won, and with what.

        Several workers write the same parent: compare-and-set, so that a worker holding a
        stale best never overwrites a better one. A value is written only when it beats
        the parent's (or is the same trial's); after writing, `latest()` (the study's best
        now) is read again, and if it moved meanwhile (a better trial finished elsewhere)
        it is written in turn. The study's best only improves, so every worker's last
        write is the study's best at that time. (MLflow has no conditional write.)"""
        for _ in range(5):  # another round only when a better trial finished meanwhile
            if value is None or not math.isfinite(value):
                return
            shown = self.tracker.get_run(self.parent_run_id).tags
            if shown.get("blocksweep.best_run_id") != (run_id or "") and not self._beats(value, shown):
                return  # the parent already shows a better trial
            self._write_best(number, value, run_id)
            if latest is None:
                return
            again = latest()
            if again[0] == number:
                return
            number, value, run_id = again

    def _beats(self, value: float, tags: dict) -> bool:
        try:
            shown = float(tags["blocksweep.best_value"])
        except (KeyError, ValueError):
            return True
        return self.objective.better(value, shown)

    def _write_best(self, number: Optional[int], value: float, run_id: Optional[str]) -> None:
        parent = self.tracker.run(self.parent_run_id)
        tags = {"blocksweep.best_trial": number, "blocksweep.best_run_id": run_id or "",
                "blocksweep.best_value": repr(float(value))}
        metrics = {"best_value": value}
        if run_id and run_id != self._best_run_id:
            best = self.tracker.get_run(run_id)
            metrics.update({k: v for k, v in best.metrics.items() if not k.startswith("system/")})
            tags.update({f"best.{name}": best.params.get(f"param.{name}", "")
                         for name in best.tags.get("blocksweep.searched", "").split(",") if name})
            # A conditional parameter the earlier best had and this one has not.
            parent.delete_tags([k for k in self.tracker.get_run(self.parent_run_id).tags
                                if k.startswith("best.") and k not in tags])
            self._best_run_id = run_id
        parent.log_metrics(metrics, step=number or 0)
        parent.set_tags(tags)

    def record_counts(self, counts: dict) -> None:
        """The study's trial counts by state, as parent tags (all workers write the same)."""
        self.tracker.run(self.parent_run_id).set_tags({f"blocksweep.trials_{k}": v for k, v in counts.items()})

    def close(self, counts: dict, outcome: str) -> None:
        """Close the parent run as `outcome` ("finished", "failed" or "killed", which the
        engine decides: FINISHED only when the study's budget is done), unless a trial of
        the study is still running: its worker closes the parent when it ends."""
        if counts.get("running", 0) == 0:
            self.tracker.finish_parent(self.parent_run_id, outcome)

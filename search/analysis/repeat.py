"""`compare --repeat K`: retrain the top N configurations with K seeds each, so that a
lucky seed does not win.

Which configuration is replayed: the trial's own `config.yaml` artifact, the resolved
RunConfig it trained, not its values replayed through the parent's `space.yaml`: the space
file logged on the parent is the file as written, without the `--set` overrides the sweep
ran with, so replaying through it could train a different configuration (another epoch
budget, another data size). The artifact is exact and engine-neutral (Keras Tuner trials
log it the same way). Only `train.seed` and `data.seed` change: seed s = 1..K sets both,
so seed s of every configuration trains on the same validation split with the same
initialisation and augmentation draws; the seeds differ from the sweep's (usually 0), so
the repeats are new evidence rather than a rerun of the number that won.

Each repeat trains through the same path as a trial (`search/trials/tracked.py`), as a child of
the study's parent tagged `blocksweep.role=repeat`, `blocksweep.repeat_of=<trial>` and
`blocksweep.repeat_seed=<s>`, so it never counts as a trial. A completed repeat is reused
by the next `compare --repeat` instead of trained again; a failed one is tried again.

Statistics, per configuration: mean over its seeds and a 95% confidence interval (mean
± t(0.975, n-1) * sd / sqrt(n)); the configurations are ranked by mean (ties: the sweep's
order). Each is compared with the best by a paired t-test over the seeds both completed
(`scipy.stats.ttest_rel`, two-sided): pairing by seed removes the split-to-split
variation both share. With identical values for every seed the test is undefined (NaN).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from typing import Optional

import pandas as pd

from search.errors import UsageError

ALPHA = 0.05  # 95% intervals


def check(k: int, n: int, data_dir: Optional[str], backend_name: Optional[str]) -> None:
    """Refuse what cannot run before anything is read or trained."""
    from search import backend
    from search.data import find_folder

    if k < 2:
        raise UsageError(f"--repeat {k}: needs at least 2 seeds for a confidence interval")
    if n < 1:
        raise UsageError(f"--repeat-top {n}: must be at least 1")
    backend.resolve(backend_name)
    find_folder(data_dir)


def seeds(k: int) -> list[int]:
    return list(range(1, k + 1))


def replay_config(tracker, run_id: str, seed: int):
    """The RunConfig a trial trained (its config.yaml artifact), with both seeds set to `seed`."""
    import yaml

    from search.config import run_config_from_dict

    tree = yaml.safe_load(tracker.artifact_text(run_id, "config.yaml"))
    tree["train"]["seed"] = seed
    tree["data"]["seed"] = seed
    return run_config_from_dict(tree)


def repeat_leaders(tracker, comparison, k: int, n: int, *, data_dir: Optional[str] = None,
                   backend_name: Optional[str] = None, quiet: bool = False) -> pd.DataFrame:
    """Train (or reuse) K seeds of each of the top N ranked runs; returns the summary
    table (`summarize`)."""
    leaders = comparison.ranked.head(n)
    if leaders.empty:
        raise UsageError("--repeat: no completed trial to repeat")
    done = _completed_repeats(comparison.repeats)
    todo = [(row, s) for row in leaders.itertuples() for s in seeds(k) if (row.study, row.trial, s) not in done]
    values: dict[tuple, float] = {key: v for key, v in done.items()}
    if todo:
        values.update(_train(tracker, comparison, todo, data_dir, backend_name, quiet))
    rows = [{"study": r.study, "trial": r.trial, "sweep_rank": r.rank, "sweep_value": getattr(r, comparison.column),
             "seed": s, "value": values.get((r.study, r.trial, s), math.nan)}
            for r in leaders.itertuples() for s in seeds(k)]
    return summarize(pd.DataFrame(rows), comparison.goal)


def _completed_repeats(repeats: pd.DataFrame) -> dict[tuple, float]:
    """{(study, trial, seed): value} of the repeats already logged and completed."""
    if repeats.empty:
        return {}
    ok = repeats[(repeats["state"] == "completed") & repeats["value"].notna()].sort_values("start_time")
    return {(r.study, r.trial, r.seed): float(r.value) for r in ok.itertuples()}


def _train(tracker, comparison, todo, data_dir, backend_name, quiet) -> dict[tuple, float]:
    from search import backend

    chosen = backend.select(backend_name)

    from search.backend import device_kind
    from search.config import Augment
    from search.data import load_dataset, prepare
    from search.progress import EpochBar
    from search.tracking.tracker import environment_tags
    from search.trials.tracked import train_tracked

    datasets: dict = {}  # by the settings that choose the images (studies may differ in source)
    splits_cache: dict = {}
    parents = {s.study: s for s in comparison.studies}
    values = {}
    for row, seed in todo:
        study = parents[row.study]
        config = replay_config(tracker, row.run_id, seed)
        key = replace(config.data, augment=Augment())  # augmentation runs in the model
        if key not in splits_cache:
            splits_cache.clear()  # one split at a time: memory stays one dataset's worth
            which = (config.data.source, config.data.label_mode, config.data.image_size, config.data.test,
                     config.data.test_fraction, config.data.on_bad_image)
            if which not in datasets:
                datasets.clear()
                datasets[which] = load_dataset(config.data, data_dir)
            splits_cache[key] = prepare(datasets[which], config.data)
        tags = {**environment_tags(config.model.family, chosen, device_kind()), "blocksweep.role": "repeat",
                "blocksweep.study": row.study, "blocksweep.engine": row.engine,
                "blocksweep.repeat_of": row.trial, "blocksweep.repeat_of_run": row.run_id,
                "blocksweep.repeat_seed": seed}
        run = tracker.start_run(study.experiment_id, f"repeat-{row.trial}-seed{seed}", tags,
                                parent_run_id=study.parent.run_id)
        bar = EpochBar(config.train.epoch_count, desc=f"{row.study} #{row.trial} seed {seed}", enabled=not quiet,
                       leave=False)
        try:
            result = train_tracked(config, splits_cache[key], run, progress=bar, keep_model=lambda result: False,
                                   title=f"{row.study} trial {row.trial}, seed {seed}")
        finally:
            bar.close()
        if result.state.value == "completed" and result.objective is not None:
            values[(row.study, row.trial, seed)] = _value_for(comparison, result)
    return values


def _value_for(comparison, result) -> float:
    """The repeat's value of what the comparison ranks by: the objective, or the --metric
    as the trials logged it (a per-epoch metric by its last epoch, as MLflow keeps it)."""
    if comparison.column == "objective":
        return float(result.objective)
    final = {**(result.history[-1] if result.history else {}), **result.test, "best_epoch": result.best_epoch,
             "train_seconds": result.train_seconds, "epochs_run": result.epochs_run,
             "images_per_second": result.images_per_second}
    value = final.get(comparison.column)
    return math.nan if value is None else float(value)


def summarize(rows: pd.DataFrame, goal: str) -> pd.DataFrame:
    """One row per configuration: seeds completed, mean, 95% interval, p-value of the
    paired t-test against the configuration with the best mean; ranked by mean."""
    from scipy import stats

    table = []
    for (study, trial), part in rows.groupby(["study", "trial"], sort=False):
        v = part["value"].dropna().to_numpy(dtype=float)
        mean = float(v.mean()) if len(v) else math.nan
        half = (float(stats.t.ppf(1 - ALPHA / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
                if len(v) >= 2 else math.nan)
        table.append({"study": study, "trial": trial, "sweep_rank": part["sweep_rank"].iloc[0],
                      "sweep_value": part["sweep_value"].iloc[0], "seeds": len(v), "mean": mean,
                      "ci95": half, "ci_low": mean - half, "ci_high": mean + half,
                      "values": " ".join(f"{x:.4g}" for x in part["value"])})
    summary = pd.DataFrame(table)
    summary = summary.sort_values(["mean", "sweep_rank"], ascending=[goal == "minimize", True],
                                  na_position="last", kind="mergesort").reset_index(drop=True)
    summary.insert(0, "repeat_rank", range(1, len(summary) + 1))
    top = summary.iloc[0]
    by_seed = rows.pivot_table(index="seed", columns=["study", "trial"], values="value", aggfunc="first")
    p_values = []
    for row in summary.itertuples():
        if (row.study, row.trial) == (top.study, top.trial):
            p_values.append(math.nan)
            continue
        pair = by_seed[[(top.study, top.trial), (row.study, row.trial)]].dropna()
        if len(pair) < 2:
            p_values.append(math.nan)
            continue
        with warnings.catch_warnings():  # identical pairs: NaN, said in the docstring
            warnings.simplefilter("ignore", RuntimeWarning)
            p = stats.ttest_rel(pair.iloc[:, 1], pair.iloc[:, 0]).pvalue
        p_values.append(float(p))
    summary["p_vs_best"] = p_values
    return summary

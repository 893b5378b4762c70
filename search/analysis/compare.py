"""`blocksweep compare`: rank the trials of one or more sweeps, show why, and check the
leaders against lucky seeds.

Read, only through `search.tracking` (one paged search per study's experiment; metric
histories only for the top K curves): every child run of each study's parent becomes one
row of a pandas DataFrame: engine, study, trial, state, the searched parameters (the
child's `param.<name>` for each name in its `blocksweep.searched` tag), the objective on
validation (the best epoch's value), best epoch, epochs run, training seconds, images/s,
and test accuracy for completed runs. Keras Tuner and Optuna sweeps share this layout, so
studies of both engines rank together.

Ranking rules (`rank`):
* Only completed runs with a finite value are ranked, best first by the study's direction
  (the parent's `blocksweep.objective` tag, e.g. "maximize val_accuracy"). Studies with
  different objectives rank together only by an explicit `--metric`.
* Ties: equal values (compared exactly as logged) share a rank ("1, 1, 3"), and the run
  that started first is listed first and counts as the best: the first to reach a value
  keeps it, as Optuna's `best_trial` does. `export` and `--repeat` use this order.
* Missing: a completed run without a finite value (NaN, or never logged) is not ranked;
  it is listed with pruned, failed and still-running runs, each in its own list.

`--repeat K` (see `search/analysis/repeat.py`) retrains the top N configurations with K seeds each
and ranks them by mean with a 95% confidence interval and a paired test against the best.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from search.errors import UsageError

FORMATS = ("table", "csv", "markdown", "json", "html")
DEFAULT_TOP = 10
DEFAULT_OUT = "compare"
# Table column <- metric logged by `search.trials.tracked.log_results` (final values, step 0).
RESULTS = {"objective": "objective", "best_epoch": "best_epoch", "epochs_run": "epochs_run",
           "train_seconds": "train_seconds", "images_per_second": "mean_images_per_second",
           "test_accuracy": "test_accuracy"}
STATES = ("completed", "pruned", "failed", "running")


@dataclass
class Comparison:
    """Everything `compare` read and decided, as DataFrames (one row per run)."""

    studies: list  # tracking.StudyRecord, in the order asked
    metric: str  # what ranks: the studies' objective metric, or --metric
    goal: str  # "maximize" or "minimize"
    column: str  # the frame column holding the ranked value
    params: list[str]  # searched parameter names (columns), union over the studies
    runs: pd.DataFrame  # every trial run, ranked ones first, with a `rank` column
    repeats: pd.DataFrame  # runs logged by `--repeat` (role=repeat), not trials
    notes: list[str] = field(default_factory=list)
    importances: dict = field(default_factory=dict)  # study -> {"method": ..., "values": {...}}

    @property
    def ranked(self) -> pd.DataFrame:
        return self.runs[self.runs["rank"].notna()]

    def unranked(self, state: str) -> pd.DataFrame:
        """Runs in `state` that are not ranked; "completed" gives those without a value."""
        rest = self.runs[self.runs["rank"].isna()]
        if state == "running":
            return rest[~rest["state"].isin(STATES[:3])]
        return rest[rest["state"] == state]

    @property
    def objective_metric(self) -> str:
        """The studies' objective metric (the validation curve that the top K plot shows)."""
        return objective_of(self.studies[0].parent)[1]


# --------------------------------------------------------------------------- reading


def objective_of(parent) -> tuple[str, str]:
    """(goal, metric) from the parent's `blocksweep.objective` tag, e.g. "maximize val_accuracy"."""
    goal, _, metric = parent.tags.get("blocksweep.objective", "maximize val_accuracy").partition(" ")
    return goal, metric or "val_accuracy"


def goal_of(metric: str) -> str:
    """The direction a metric other than the objective is ranked in: losses, times and
    epoch counts are better small, everything else (accuracies, images/s) large."""
    small = ("loss" in metric or metric.endswith("seconds") or metric in ("best_epoch", "epochs_run"))
    return "minimize" if small else "maximize"


def _value(text: Optional[str]):
    """A logged parameter back to its type: MLflow stores every value as a string."""
    if text is None:
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(text, text)


def _int(text: Optional[str]):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def searched(run) -> list[str]:
    """The flat names of the parameters a trial searched (its `blocksweep.searched` tag)."""
    return [n for n in run.tags.get("blocksweep.searched", "").split(",") if n]


def run_row(study, run, extra_metrics: tuple[str, ...] = ()) -> dict:
    """One child run as a table row: identity, state, results, searched parameters."""
    tags = run.tags
    state = tags.get("blocksweep.state") or ("running" if run.status == "RUNNING" else run.status.lower())
    row = {"study": study.study,
           "engine": tags.get("blocksweep.engine") or study.parent.tags.get("blocksweep.engine", ""),
           "trial": _int(tags.get("blocksweep.trial")), "state": state, "run_id": run.run_id,
           "start_time": run.start_time, "model_kept": tags.get("blocksweep.model") == "kept",
           "reason": tags.get("blocksweep.reason", "")}
    for column, metric in RESULTS.items():
        row[column] = run.metrics.get(metric, math.nan)
    for metric in extra_metrics:
        row[metric] = run.metrics.get(metric, math.nan)
    if state != "completed":  # the test set is evaluated for completed runs only
        row["test_accuracy"] = math.nan
    for name in searched(run):
        row[name] = _value(run.params.get(f"param.{name}"))
    return row


def repeat_row(study, run, metric_column: str) -> dict:
    tags = run.tags
    return {"study": study.study, "trial": _int(tags.get("blocksweep.repeat_of")),
            "seed": _int(tags.get("blocksweep.repeat_seed")), "state": tags.get("blocksweep.state", "running"),
            "value": run.metrics.get(metric_column, math.nan), "run_id": run.run_id,
            "start_time": run.start_time}


def read(tracker, studies: Optional[list[str]] = None, experiment: Optional[str] = None,
         metric: Optional[str] = None) -> Comparison:
    """Read the sweeps into a ranked Comparison. Raises UsageError for unknown studies,
    studies with different objectives (without --metric) and metrics no run logged."""
    found = tracker.studies(studies, experiment)
    goal, column, metric = _ranking_metric(found, metric)
    extra = (column,) if column not in RESULTS else ()
    rows, repeat_rows, params = [], [], []
    experiments: dict[str, list] = {}  # several sweeps of one --experiment are read once
    for study in found:
        if study.experiment_id not in experiments:
            experiments[study.experiment_id] = tracker.experiment_runs(study.experiment_id)
        for run in experiments[study.experiment_id]:
            if run.parent_id != study.parent.run_id:
                continue
            if run.role == "trial":
                row = run_row(study, run, extra)
                rows.append(row)
                params += [n for n in searched(run) if n not in params]
            elif run.role == "repeat":
                repeat_rows.append(repeat_row(study, run, RESULTS.get(column, column)))
    # Conditional parameters are absent from some rows: the columns are the union.
    base = ["study", "engine", "trial", "state", "run_id", "start_time", "model_kept", "reason", *RESULTS, *extra]
    frame = pd.DataFrame(rows, columns=base + params)
    if extra and not frame.empty and frame[column].isna().all():
        raise UsageError(f"--metric {metric}: no run of {', '.join(s.study for s in found)} logged it "
                         f"(try objective, {', '.join(k for k in RESULTS if k != 'objective')})")
    return Comparison(studies=found, metric=metric, goal=goal, column=column, params=params,
                      runs=rank(frame, column, goal), repeats=pd.DataFrame(repeat_rows))


def _ranking_metric(found, metric: Optional[str]) -> tuple[str, str, str]:
    """(goal, frame column, metric name) that the ranking uses."""
    objectives = {s.study: objective_of(s.parent) for s in found}
    metrics = {m for _, m in objectives.values()}
    if metric in (None, "objective") or (len(metrics) == 1 and metric in metrics):
        if len(set(objectives.values())) > 1:
            listed = "; ".join(f"{s}: {g} {m}" for s, (g, m) in objectives.items())
            raise UsageError(f"the studies have different objectives ({listed}); rank them by one --metric")
        goal, name = next(iter(objectives.values()))
        return goal, "objective", name
    return goal_of(metric), metric, metric


# --------------------------------------------------------------------------- ranking


def rank(frame: pd.DataFrame, column: str, goal: str) -> pd.DataFrame:
    """`frame` with a `rank` column: completed runs with a finite `column` value, best
    first (ties share the lowest rank; the earlier-started run is listed first), then the
    unranked runs by study and trial."""
    frame = frame.copy()
    value = pd.to_numeric(frame[column], errors="coerce") if column in frame else pd.Series(np.nan, frame.index)
    ok = (frame["state"] == "completed") & value.notna() & np.isfinite(value.astype(float))
    ascending = goal == "minimize"
    ranked = frame[ok].assign(_value=value[ok].astype(float))
    # Equal start times (same millisecond) fall back to study and trial, so the order is total.
    ranked = ranked.sort_values(["_value", "start_time", "study", "trial"], ascending=[ascending, True, True, True],
                                kind="mergesort")
    ranked["rank"] = ranked["_value"].rank(method="min", ascending=ascending).astype("Int64")
    rest = frame[~ok].sort_values(["study", "trial"], kind="mergesort").assign(rank=pd.NA)
    rest["rank"] = rest["rank"].astype("Int64")
    return pd.concat([ranked.drop(columns="_value"), rest], ignore_index=True)


def best(comparison: Comparison):
    """The first row of the ranking (the tie rule above), or None when nothing completed."""
    ranked = comparison.ranked
    return None if ranked.empty else ranked.iloc[0]


# --------------------------------------------------------------------------- figures


def draw_figures(tracker, comparison: Comparison, out: Path, top: int,
                 storage: Optional[str] = None, log: bool = True) -> list[Path]:
    """The figures into `out`: PNGs (matplotlib) of the top K's curves, the objective by
    trial and each study's importances; an interactive HTML page (plotly) per study, and
    one across the studies when several are compared. With `log`, each is logged under
    `compare/` into the parent run of every study it shows. Figures that cannot be drawn
    (too few runs) are skipped with a note in `comparison.notes`."""
    from search import plots

    out.mkdir(parents=True, exist_ok=True)
    metric, runs = comparison.objective_metric, comparison.runs
    written: list[tuple[Path, list]] = []  # (file, studies it belongs to)
    everyone = comparison.studies

    leaders = comparison.ranked.head(top)
    if not leaders.empty:
        train_metric = metric.removeprefix("val_")
        series = [(f"{r.study} #{r.trial}", tracker.metric_history(r.run_id, metric),
                   tracker.metric_history(r.run_id, train_metric)) for r in leaders.itertuples()]
        path = plots.top_curves(series, metric, train_metric, out / "curves_top.png",
                                title=f"top {len(leaders)} by {comparison.metric}")
        written.append((path, everyone))

    by_study = [(s.study, *objective_of(s.parent), runs[runs["study"] == s.study]) for s in everyone]
    if any(not part.empty for *_, part in by_study):
        written.append((plots.objective_by_trial(by_study, out / "objective_by_trial.png"), everyone))

    completed = runs[runs["rank"].notna()]
    if len(completed) < 2:
        comparison.notes.append("parallel coordinates and slices: fewer than 2 ranked runs")

    from search.analysis.importance import study_importances

    for study in everyone:
        mine = completed[completed["study"] == study.study]
        names = [n for n in comparison.params if mine[n].notna().any()] if not mine.empty else []
        engine = study.parent.tags.get("blocksweep.engine", "")
        try:
            values, method = study_importances(engine, study.study, storage, mine[names], mine["objective"])
        except ValueError as err:
            comparison.notes.append(f"importances of {study.study}: {err}")
            continue
        comparison.importances[study.study] = {"method": method, "values": values}
        path = plots.importances(values, out / f"importance_{_safe(study.study)}.png",
                                 title=f"{study.study}: parameter importance for {metric}\n{method}")
        written.append((path, [study]))

    from search.analysis import figures

    for study in everyone:
        path = out / f"figures_{_safe(study.study)}.html"
        path.write_text(figures.page(f"{study.study}: {comparison.metric}", *_study_figures(comparison, study,
                                                                                              storage)))
        written.append((path, [study]))
    if len(everyone) > 1:
        path = out / "figures.html"
        shown = [(s, goal, part[["trial", "state", "objective", "run_id"]]) for s, goal, _, part in by_study]
        pages = [("Objective by trial", figures.history(shown, metric))]
        if len(completed) >= 2 and comparison.params:
            pages += _table_figures(comparison, completed, comparison.params)
        path.write_text(figures.page(f"{len(everyone)} studies: {comparison.metric}", pages))
        written.append((path, everyone))

    if log:
        for path, studies in written:
            for study in studies:
                tracker.run(study.parent.run_id).log_file(path, "compare")
    return [path for path, _ in written]


def _study_figures(comparison: Comparison, study, storage: Optional[str]) -> tuple[list, list[str]]:
    """(figures, notes) of one study's interactive page: Optuna's own figures for an Optuna
    study in `storage`, else the same kinds drawn from its runs (Keras Tuner)."""
    from search.analysis import figures

    importance = comparison.importances.get(study.study)
    if study.parent.tags.get("blocksweep.engine") == "optuna":
        from search.engines.optuna_figures import study_figures

        try:
            return study_figures(study.study, storage, comparison.objective_metric,
                                 important=list(importance["values"]) if importance else [])
        except LookupError as err:  # not in this --storage: the run table still knows
            comparison.notes.append(f"figures of {study.study} from its MLflow runs ({err})")
    goal, metric = objective_of(study.parent)
    runs = comparison.runs[comparison.runs["study"] == study.study]
    shown = [(study.study, goal, runs[["trial", "state", "objective", "run_id"]])]
    pages = [("Objective by trial", figures.history(shown, metric))]
    completed = runs[runs["rank"].notna()]
    names = [n for n in comparison.params if completed[n].notna().any()]
    if len(completed) >= 2 and names:
        pages += _table_figures(comparison, completed, names)
    if importance:
        pages.append(("Parameter importances", figures.importances(importance["values"], importance["method"],
                                                                   metric)))
    return pages, []


def _table_figures(comparison: Comparison, completed: pd.DataFrame, names: list[str]) -> list:
    from search.analysis import figures

    return [("Parallel coordinates", figures.parallel_coordinates(completed[names], completed[comparison.column],
                                                                  comparison.metric, comparison.goal)),
            ("Slices", figures.slices(completed, names, comparison.column, comparison.metric))]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# --------------------------------------------------------------------------- output


def display_columns(comparison: Comparison) -> list[str]:
    value = [] if comparison.column == "objective" else [comparison.column]
    return ["rank", "study", "engine", "trial", "objective", *value, "best_epoch", "epochs_run", "train_seconds",
            "images_per_second", "test_accuracy", *comparison.params, "run_id"]


def sections(comparison: Comparison, top: Optional[int]) -> list[tuple[str, pd.DataFrame, int]]:
    """(title, rows shown, rows in all) per section: the ranking, then the unranked runs by
    state. `top` limits each section's rows (None: all)."""
    c = comparison
    label = f"{c.objective_metric}" if c.column == "objective" else c.metric
    where = ", ".join(f"{s.study} [{s.parent.tags.get('blocksweep.engine', '?')}]" for s in c.studies)
    ranked = c.ranked[display_columns(c)].rename(columns={"objective": label} if c.column == "objective" else {})
    out = [(f"Ranking by {c.metric} ({c.goal}) of {where}", ranked, len(ranked))]
    brief = ["study", "engine", "trial", "state", "objective", "epochs_run", "reason", "run_id"]
    for state, title in (("completed", f"Completed without a {c.metric} value"), ("pruned", "Pruned"),
                         ("failed", "Failed"), ("running", "Running or interrupted")):
        part = c.unranked(state)
        if not part.empty:
            out.append((title, part[brief].rename(columns={"objective": label}), len(part)))
    return [(title, frame.head(top) if top else frame, total) for title, frame, total in out]


def render(comparison: Comparison, fmt: str, top: int, figures: list[Path], repeats=None) -> str:
    """The comparison as text in `fmt`. csv and json hold every run (they are for
    programs); table, markdown and html show the top `top` of each section, and markdown
    and html show the figures too (by file name: the ranking file sits beside them)."""
    if fmt == "csv":
        runs = comparison.runs.drop(columns=["start_time"])
        return runs[["rank", *[c for c in runs.columns if c != "rank"]]].to_csv(index=False)
    if fmt == "json":
        return json.dumps(summary(comparison, figures, repeats), indent=2, default=str)
    blocks = []
    for title, frame, total in sections(comparison, top):
        blocks.append((title + (f" (top {len(frame)} of {total})" if len(frame) < total else f" ({total})"), frame))
    if repeats is not None and not repeats.empty:
        blocks.append(("Repeats: mean over seeds, 95% confidence interval, paired t-test against the best", repeats))
    tail = [f"ties share a rank; the earlier run is listed first. Figures: {', '.join(map(str, figures)) or 'none'}"]
    tail += [f"note: {n}" for n in comparison.notes]
    if fmt == "markdown":
        parts = [f"## {title}\n\n{_markdown(frame)}" for title, frame in blocks]
        parts += ["\n".join(f"![{f.stem}]({f.name})" if f.suffix == ".png" else f"- [{f.stem}]({f.name})"
                             for f in figures)] if figures else []
        parts.append("\n".join(f"- {t}" for t in tail))
    elif fmt == "html":
        from html import escape

        body = [f"<h2>{escape(title)}</h2>\n{frame.to_html(index=False, na_rep='', float_format=_fmt)}"
                for title, frame in blocks]
        body += [f'<img src="{escape(f.name)}" alt="{escape(f.stem)}">' if f.suffix == ".png" else
                 f'<p><a href="{escape(f.name)}">{escape(f.stem)} (interactive)</a></p>' for f in figures]
        body += [f"<p>{escape(t)}</p>" for t in tail]
        return ('<!doctype html>\n<html><head><meta charset="utf-8"><title>blocksweep compare</title></head>\n'
                "<body>\n" + "\n".join(body) + "\n</body></html>\n")
    else:
        parts = [f"{title}:\n{_table(frame)}" for title, frame in blocks] + ["\n".join(tail)]
    return "\n\n".join(parts) + "\n"


def summary(comparison: Comparison, figures: list[Path], repeats=None) -> dict:
    c = comparison
    return {"metric": c.metric, "goal": c.goal,
            "studies": [{"study": s.study, "engine": s.parent.tags.get("blocksweep.engine"),
                         "experiment_id": s.experiment_id, "parent_run_id": s.parent.run_id} for s in c.studies],
            "ranked": _records(c.ranked), "no_value": _records(c.unranked("completed")),
            **{state: _records(c.unranked(state)) for state in STATES[1:]},
            "figures": [str(p) for p in figures], "importances": c.importances, "notes": c.notes,
            "repeats": _records(repeats) if repeats is not None else None}


def _records(frame: pd.DataFrame) -> list[dict]:
    frame = frame.drop(columns=["start_time"], errors="ignore").astype(object)
    return [{k: (None if _missing(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]


def _missing(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _fmt(v) -> str:
    return f"{v:.4g}"


def _cell(v) -> str:
    if _missing(v):
        return ""
    if isinstance(v, float):
        return _fmt(v)
    return str(v)


def _table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(none)"
    return frame.to_string(index=False, na_rep="", formatters={c: _cell for c in frame.columns})


def _markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(none)"
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


# --------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class Report:
    text: str  # the comparison in the chosen format (what the command prints)
    summary: dict  # what --format json prints
    out: Path  # the folder holding the figures and ranking.<ext>
    runs: pd.DataFrame  # every trial run, one row each: the ranked ones first (column `rank`), then the rest


def compare(studies: Optional[list[str] | str] = None, *, experiment: Optional[str] = None, top: int = DEFAULT_TOP,
            metric: Optional[str] = None, fmt: str = "table", out: str | Path = DEFAULT_OUT,
            tracking_uri: Optional[str] = None, storage: Optional[str] = None, repeat: Optional[int] = None,
            repeat_top: Optional[int] = None, data_dir: Optional[str] = None, backend_name: Optional[str] = None,
            figures: bool = True, log: bool = True, quiet: bool = False) -> Report:
    """`blocksweep compare`: read, rank, draw (and with `repeat`, retrain the leaders).

    Args:
        studies: a study name or several (default: every sweep in the store); studies of
            both engines rank together.
        experiment: instead, every sweep in this MLflow experiment.
        top: rows shown per list, and runs in the curves figure.
        metric: rank by this metric instead of the studies' objective (e.g. ``test_accuracy``).
        fmt: ``table``, ``csv``, ``markdown``, ``json`` or ``html`` (the `text` returned).
        out: the folder for the figures and ``ranking.<ext>``.
        tracking_uri, storage: the MLflow store and the Optuna storage (for Optuna's figures).
        repeat, repeat_top, data_dir, backend_name: retrain the top `repeat_top`
            configurations with `repeat` seeds each (child runs of the parent).
        figures: draw the figures (PNG and interactive HTML).
        log: log the figures into each study's parent run; with False, compare writes
            nothing into MLflow (only into `out`).

    Returns:
        A `Report`: `runs` (a DataFrame, one row per trial run, ranked first), `text` (the
        ranking in `fmt`), `summary` (what ``--format json`` prints) and `out`.

    Example:
        >>> report = compare("quickstart", log=False)
        >>> report.runs[["rank", "trial", "objective"]].head(3)
    """
    if isinstance(studies, str):
        studies = [studies]
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if top < 1:
        raise UsageError(f"--top {top}: must be at least 1")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file; give a folder for the figures")
    if repeat_top is not None and repeat is None:
        raise UsageError(f"--repeat-top {repeat_top}: only with --repeat K (how many seeds per configuration)")
    if repeat is not None and not log:
        raise UsageError("--repeat logs its runs into MLflow; it cannot run with --no-log")
    repeat_top = 3 if repeat_top is None else repeat_top
    if repeat is not None:
        from search.analysis.repeat import check

        check(repeat, repeat_top, data_dir, backend_name)
    if storage is not None:
        from search.engines.optuna_storage import check_open

        check_open(storage)  # an unreachable --storage is bad input, not a silent fallback

    from search.tracking.tracker import Tracker

    tracker = Tracker(tracking_uri, create=False)
    comparison = read(tracker, studies, experiment, metric)
    if figures:
        drawn = draw_figures(tracker, comparison, out, top, storage, log=log)
    else:
        out.mkdir(parents=True, exist_ok=True)
        drawn = []
    repeats = None
    if repeat is not None:
        from search.analysis.repeat import repeat_leaders

        repeats = repeat_leaders(tracker, comparison, repeat, repeat_top, data_dir=data_dir,
                                 backend_name=backend_name, quiet=quiet)
    text = render(comparison, fmt, top, drawn, repeats)
    ext = {"table": "txt", "markdown": "md"}.get(fmt, fmt)
    (out / f"ranking.{ext}").write_text(text)
    return Report(text=text, summary=summary(comparison, drawn, repeats), out=out, runs=comparison.runs)

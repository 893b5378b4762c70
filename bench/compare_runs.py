"""How long `blocksweep compare` takes on a large sweep (MLflow's run searches slow down as runs grow).

    python bench/compare_runs.py [--runs 5000] [--epochs 10]

Makes one sweep of N trial runs in the parent/child layout in a temporary embedded SQLite
store: the parent and one template trial are logged through `search.tracking` exactly as
a sweep logs them (every config value as a parameter, per-epoch metrics, results, tags),
then the template is cloned N-1 times with SQL inserts (new ids, trial numbers, sampled
parameters, states and learning curves), which takes seconds instead of the minutes that
N real API calls would. Then it times:

* `compare.read`: reading every run and ranking them (what `compare` does before drawing),
* the whole command in a fresh process (`python -m search compare --format csv`),
  imports, figures, importances and artifact logging included,
* for reference, two other ways to read the same runs: the tag-filtered search with
  1,000-run pages that the sweeps use for their own bookkeeping, and
  `mlflow.search_runs` (a pandas DataFrame).

Prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STUDY = "bench"
BLOCKS = ["conv-bn-conv-pool-drop", "bn-conv-bn-conv-pool-drop", "conv-bn-conv-bn-pool", "conv-drop-conv-drop-pool"]


def make_sweep(tracker, runs: int, epochs: int, seed: int = 0) -> str:
    """The parent, one real template trial, and runs-1 clones; returns the experiment id."""
    from search.config import config_dict, flatten, load_spec

    spec = load_spec(ROOT / "spaces" / "vgg_blocks.yaml", {"train.epochs": epochs})
    tags = {"blocksweep.engine": "optuna", "blocksweep.objective": "maximize val_accuracy",
            "blocksweep.model_family": "vgg", "blocksweep.backend": "tensorflow", "blocksweep.device": "cpu"}
    exp_id, parent, _ = tracker.sweep_parent(STUDY, tags, spec.text)
    config = spec.base_config()
    searched = {"model.block": BLOCKS[0], "train.learning_rate": 0.02, "model.dropout.0": 0.2}
    child = tracker.start_trial(exp_id, parent, STUDY, 0, {**tags, "blocksweep.trial_key": "0",
                                                           "blocksweep.searched": ",".join(sorted(searched))})
    params = flatten(config_dict(config))
    params.update({f"data.size.{k}": v for k, v in {"train": 45000, "val": 5000, "test": 10000}.items()})
    params.update({f"param.{k}": v for k, v in searched.items()})
    child.log_params(params)
    for epoch in range(1, epochs + 1):
        child.log_epoch(epoch, {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5,
                                "epoch_seconds": 60.0, "images_per_second": 750.0, "learning_rate": 0.02},
                        [(epoch * 352 - 352 + b, 1.0) for b in range(20, 352, 20)])
    child.log_metrics({"epochs_run": epochs, "train_seconds": 600.0, "mean_images_per_second": 750.0,
                       "best_val_accuracy": 0.5, "objective": 0.5, "best_epoch": epochs,
                       "test_accuracy": 0.5, "test_loss": 1.0})
    child.finish("completed")
    clone(tracker.local_store / "mlflow.db", child.run_id, runs - 1, epochs, random.Random(seed))
    return exp_id


def clone(db: Path, template: str, count: int, epochs: int, rng: random.Random) -> None:
    """Copy the template run `count` times with varied trial numbers, parameters, states
    and curves, in one transaction."""
    con = sqlite3.connect(db)
    cur = con.cursor()

    def rows(table):
        columns = [c[1] for c in cur.execute(f"PRAGMA table_info({table})")]
        return columns, [dict(zip(columns, r)) for r in cur.execute(
            f"SELECT * FROM {table} WHERE run_uuid = ?", (template,))]

    tables = {t: rows(t) for t in ("runs", "tags", "params", "metrics", "latest_metrics")}
    out = {t: [] for t in tables}
    start = tables["runs"][1][0]["start_time"]
    for i in range(1, count + 1):
        rid = uuid.uuid4().hex
        state = rng.choices(["completed", "pruned", "failed"], [0.8, 0.15, 0.05])[0]
        ran = epochs if state == "completed" else rng.randint(1, epochs - 1) if state == "pruned" else rng.randint(0, 2)
        lr, block, drop = 10 ** rng.uniform(-3, -1), rng.choice(BLOCKS), round(rng.uniform(0, 0.5), 3)
        skill = 0.55 + 0.3 * rng.random() - 0.2 * abs(lr - 0.02) / 0.1 - (0.05 if block == BLOCKS[3] else 0)
        curve = [min(0.99, skill * (1 - 0.6 ** e) + rng.gauss(0, 0.01)) for e in range(1, ran + 1)]
        best = max(range(ran), key=lambda e: curve[e]) if ran else None
        values = {"param.train.learning_rate": lr, "train.learning_rate": lr, "param.model.block": block,
                  "model.block": block, "param.model.dropout.0": drop}
        final = {"objective": curve[best] if ran else None, "best_val_accuracy": curve[best] if ran else None,
                 "best_epoch": best + 1 if ran else None, "epochs_run": ran,
                 "test_accuracy": curve[best] - 0.01 if state == "completed" else None}
        status = {"completed": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}[state]
        for r in tables["runs"][1]:
            out["runs"].append({**r, "run_uuid": rid, "name": f"trial-{i}", "start_time": start + i,
                                "end_time": start + i + 1, "status": status,
                                "artifact_uri": r["artifact_uri"].replace(template, rid)})
        for r in tables["tags"][1]:
            value = {"blocksweep.trial": str(i), "blocksweep.trial_key": str(i), "blocksweep.state": state,
                     "mlflow.runName": f"trial-{i}"}.get(r["key"], r["value"])
            out["tags"].append({**r, "run_uuid": rid, "value": value})
        for r in tables["params"][1]:
            out["params"].append({**r, "run_uuid": rid, "value": str(values.get(r["key"], r["value"]))})
        latest = {}
        for r in tables["metrics"][1]:
            key, step = r["key"], r["step"]
            if key in final:
                if final[key] is None:
                    continue
                value = final[key]
            elif key == "train_loss_window":
                if step >= ran * 352:
                    continue
                value = r["value"]
            elif step > ran:
                continue
            else:
                value = curve[step - 1] if key == "val_accuracy" else r["value"]
            row = {**r, "run_uuid": rid, "value": value}
            out["metrics"].append(row)
            if key not in latest or (step, row["timestamp"]) >= (latest[key]["step"], latest[key]["timestamp"]):
                latest[key] = row
        for r in tables["latest_metrics"][1]:
            if r["key"] in latest:
                out["latest_metrics"].append({**r, "run_uuid": rid, "value": latest[r["key"]]["value"],
                                              "step": latest[r["key"]]["step"]})
    for table, (columns, _) in tables.items():
        marks = ", ".join("?" for _ in columns)
        cur.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
                        [tuple(r[c] for c in columns) for r in out[table]])
    con.commit()
    con.close()


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    os.chdir(work)
    try:
        run(args, work)
    finally:  # the store of 5,000 runs is ~350 MiB
        os.chdir(ROOT)
        shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path) -> None:
    from search.analysis import compare
    from search.tracking import Tracker

    uri = f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"
    tracker = Tracker(uri)
    exp_id, made = timed(lambda: make_sweep(tracker, args.runs, args.epochs))
    comparison, read = timed(lambda: compare.read(tracker, [STUDY]))
    ranked = len(comparison.ranked)

    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": uri}
    start = time.perf_counter()
    cli = subprocess.run([sys.executable, "-m", "search", "compare", "--study", STUDY, "--format", "csv",
                          "--out", str(work / "out")], env=env, capture_output=True, text=True)
    whole = time.perf_counter() - start
    if cli.returncode != 0:
        raise SystemExit(cli.stderr[-2000:])
    _, imports = timed(lambda: subprocess.run([sys.executable, "-c", "import search.compare, search.tracking, "
                                               "search.importance, search.plots, search.engines.optuna_importance"],
                                              env=env, check=True))

    parent = comparison.studies[0].parent.run_id
    _, filtered = timed(lambda: tracker.children(exp_id, parent))
    import mlflow

    frame, pandas_api = timed(lambda: mlflow.search_runs([exp_id], max_results=100_000))
    assert len(frame) == args.runs + 1

    print(f"{args.runs} trial runs ({ranked} ranked) x {args.epochs} epochs; made in {made:.1f} s; store "
          f"{(work / 'mlruns' / 'mlflow.db').stat().st_size / 2**20:.0f} MiB\n")
    print("| what | seconds |\n| --- | --- |")
    print(f"| `compare.read` (read {args.runs + 1} runs in 50,000-run pages, build the table, rank) | {read:.2f} |")
    print(f"| `blocksweep compare --format csv`, fresh process, all figures | {whole:.2f} |")
    print(f"| of which importing the modules | {imports:.2f} |")
    print(f"| reference: tag-filtered `search_runs`, 1,000-run pages (`Tracker.children`) | {filtered:.2f} |")
    print(f"| reference: `mlflow.search_runs` to pandas | {pandas_api:.2f} |")
    print(f"\nload average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()

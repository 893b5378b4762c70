"""Share of trial time spent in MLflow tracking, measured on a real sweep.

    python bench/tracking_overhead.py [--trials 4] [--epochs 5] [--data-dir DIR]

Runs an Optuna sweep of the quickstart space (small subset) into a temporary embedded
store, timing every call into `tracking.RunLog` (the only way trials reach MLflow) and the
tracker's run creation and look-ups, and prints, per trial and in total: trial wall time, time in tracking, and the share.
Without --data-dir it uses synthetic CIFAR-shaped data.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--data-dir")
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-tracking-"))
    os.chdir(work)
    data_dir = args.data_dir
    if data_dir is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import synthetic_cifar  # noqa: E402 - test helper reused for data

        from search.data import write_batches

        write_batches(work / "data", *synthetic_cifar(6000, 1000))
        data_dir = str(work / "data")

    from search.tracking import tracker as tracking

    spent: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    timed_methods = [(tracking.RunLog, name) for name in (
        "log_params", "set_tags", "delete_tags", "log_epoch", "log_metrics", "log_text", "log_file", "log_splits",
        "log_classifier", "finish")] + [(tracking.Tracker, name) for name in ("start_run", "get_run")]
    for cls, name in timed_methods:
        original = getattr(cls, name)

        @functools.wraps(original)
        def timed(self, *a, _original=original, _name=name, **k):
            start = time.perf_counter()
            try:
                return _original(self, *a, **k)
            finally:
                spent[_name] += time.perf_counter() - start
                calls[_name] += 1

        setattr(cls, name, timed)

    from search import commands

    start = time.perf_counter()
    summary = commands.sweep(str(ROOT / "spaces" / "quickstart.yaml"), trials=args.trials, pruner="none",
                             data_dir=data_dir, backend_name=args.backend, quiet=True,
                             overrides=[f"train.epochs={args.epochs}", "data.train_size=4000"])
    total = time.perf_counter() - start
    tracked = sum(spent.values())
    print(summary.line())
    print("| call | count | seconds |\n| --- | --- | --- |")
    for name in sorted(spent, key=spent.get, reverse=True):
        print(f"| {name} | {calls[name]} | {spent[name]:.3f} |")
    print(f"\nsweep wall time {total:.1f} s, in tracking {tracked:.2f} s = {100 * tracked / total:.1f}% "
          f"({args.trials} trials x {args.epochs} epochs; per epoch: one log_batch call)")


if __name__ == "__main__":
    main()

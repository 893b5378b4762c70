"""The transfer demo end to end, from an empty store: pre-train the source task (CIFAR-10
classes 0-4), then the three arms on classes 5-9 with 500 labels per class.

    python bench/transfer_demo.py --data-dir DIR [--backend auto] [--set KEY=VALUE ...] [--keep DIR]

Runs `blocksweep run spaces/transfer_demo.yaml` in a fresh temporary store (so the source
task really is pre-trained and the embeddings really computed), then reads the sweep back
from MLflow and prints, as a Markdown table: per arm the best validation accuracy, the
test accuracy, training seconds, the run's wall seconds (the first transfer arm's includes
pre-training the source), and where its embeddings came from; and the source task's own
results. --keep DIR keeps the store (mlruns/) there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--keep", help="copy the store (mlruns/) here afterwards")
    args = parser.parse_args()

    data_dir = str(Path(args.data_dir).resolve())
    work = Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    os.chdir(work)  # a fresh mlruns/: nothing cached
    source = ROOT / "spaces" / "transfer_source.yaml"
    from search import commands

    start = time.perf_counter()
    summary = commands.sweep(str(ROOT / "spaces" / "transfer_demo.yaml"), data_dir=data_dir, backend_name=args.backend,
                             quiet=True, overrides=[f"model.weights=pretrain:{source}", *args.set])
    total = time.perf_counter() - start
    print(summary.line())

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([summary.experiment_id], "tags.`blocksweep.role` = 'trial'",
                              order_by=["attributes.start_time ASC"])
    print(f"\nsweep wall time {total:.0f} s ({summary.parent_run_id})\n")
    print("| arm | best val acc | test acc | epochs | train s | run wall s | embeddings |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    for run in runs:
        m, p = run.data.metrics, run.data.params
        wall = (run.info.end_time - run.info.start_time) / 1000
        print(f"| {p['model.scheme']} | {m['objective']:.4f} | {m['test_accuracy']:.4f} | {m['epochs_run']:.0f} | "
              f"{m['train_seconds']:.0f} | {wall:.0f} | {p.get('transfer.embeddings', '-')} |")
    for folder in (work / "mlruns" / "pretrained").glob("*/source.json"):
        details = json.loads(folder.read_text())
        r = details["result"]
        print(f"\nsource task ({details['sizes']['train']} images, classes {details['classes']}): best val acc "
              f"{r['objective']:.4f}, test acc {r['test_accuracy']:.4f}, {details['seconds']:.0f} s, "
              f"{r['images_per_second']:.0f} img/s")
    if args.keep:
        shutil.copytree(work / "mlruns", Path(args.keep) / "mlruns", dirs_exist_ok=True)


if __name__ == "__main__":
    main()

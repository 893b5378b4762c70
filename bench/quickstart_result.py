"""What a quickstart sweep handed over, read back from the folder it ran in.

    python3 bench/quickstart_result.py DIR

DIR is where `blocksweep run spaces/quickstart.yaml --json > sweep.json` ran (its own
`mlruns/`, the default store). Prints the best trial's test accuracy (plain and with TTA,
on the whole test set) and every trial's state, objective and seconds, as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(folder: str) -> None:
    from mlflow.tracking import MlflowClient

    root = Path(folder).resolve()
    sweep = json.loads((root / "sweep.json").read_text())
    client = MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    best = client.get_run(sweep["best_run_id"])
    parent_id = best.data.tags["mlflow.parentRunId"]
    children = client.search_runs([best.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'",
                                  order_by=["attributes.start_time ASC"])
    trials = [{"state": c.data.tags.get("blocksweep.state"), "objective": c.data.metrics.get("objective"),
               "test_tta_accuracy": c.data.metrics.get("test_tta_accuracy"),
               "seconds": round(((c.info.end_time or c.info.start_time) - c.info.start_time) / 1000, 1)}
              for c in children]
    print(json.dumps({"ran": sweep.get("ran"), "best_value": sweep.get("best_value"),
                      "best_test_accuracy": best.data.metrics.get("test_accuracy"),
                      "best_test_tta_accuracy": best.data.metrics.get("test_tta_accuracy"),
                      "trials": trials}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])

"""How a sweep stops under faults: the exit code, the line it says, and how long it takes.

    python bench/fault_stops.py [--work DIR]

On the tiny synthetic data the tests use (1,000 training images), in a fresh folder
(default: a temporary one), each case a real `python -m search` process:

* `run` (Optuna), SIGTERM once trial 0 is past its first epoch;
* `run --workers 1`, SIGTERM to the launcher once trial 1 is past its first epoch;
* `run --engine kerastuner`, SIGTERM once trial 0 is past its first epoch;
* `run` whose every trial fails (learning rate 1e12: the loss becomes NaN);
* the study lock on PostgreSQL (127.0.0.1:5432, a fresh database) held by another
  connection: how long `exclusive(..., wait=W)` takes to give up (skipped without a server).

For the signals: seconds from the signal to the process's one line on stderr, and to its
exit (the rest is the interpreter's own shutdown: TensorFlow, MLflow's threads).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import TINY_SPACE, cli_env, synthetic_cifar  # noqa: E402


def mid_training(tracking_uri: str, study: str, trial: int, proc: subprocess.Popen) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        exp = client.get_experiment_by_name(study)
        runs = client.search_runs([exp.experiment_id], f"tags.`blocksweep.trial` = '{trial}'") if exp else []
        if runs and runs[0].info.status == "RUNNING" and client.get_metric_history(runs[0].info.run_id,
                                                                                   "val_accuracy"):
            return
        time.sleep(0.2)
    raise SystemExit(f"trial {trial} of {study} never got mid-training: {proc.stderr.read()[-2000:]}")


def signal_case(name: str, work: Path, args: list[str], study: str, trial: int) -> dict:
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "search", *args], cwd=work, env=cli_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    mid_training(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}", study, trial, proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    said, last = None, ""
    for line in proc.stderr:  # the worker's line comes through the launcher as "[w0] ..."
        if "blocksweep:" in line:
            said, last = said or time.monotonic() - sent, line.strip()
    proc.wait(120)
    return {"case": name, "exit": proc.returncode, "line_s": round(said, 2) if said else None,
            "exit_s": round(time.monotonic() - sent, 2), "wall_s": round(time.monotonic() - start, 1), "line": last}


def all_failed(work: Path, args: list[str]) -> dict:
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "search", *args], cwd=work, env=cli_env(), text=True,
                          capture_output=True, timeout=600)
    return {"case": "every trial fails (2 trials, --max-failures 2)", "exit": done.returncode,
            "wall_s": round(time.monotonic() - start, 1), "line": done.stderr.strip().splitlines()[-1]}


def lock_case(wait: float) -> dict:
    import psycopg

    from search.errors import StoreBusy
    from search.tracking import urls
    from tests.services import fresh_database

    with fresh_database("bs_bench_lock") as url, psycopg.connect(url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (urls.lock_key("study"),))
        start = time.monotonic()
        try:
            with urls.exclusive(url, "study", wait=wait):
                line = "granted (unexpected)"
        except StoreBusy as err:
            line = str(err)
        return {"case": f"PostgreSQL study lock held elsewhere, wait={wait:g} s", "exit": 1,
                "wall_s": round(time.monotonic() - start, 2), "line": line}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="folder to run in (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="fault-stops-"))
    (work / "mlruns").mkdir(parents=True, exist_ok=True)
    from search.data import write_batches

    write_batches(work / "data", *synthetic_cifar(1000, 200))
    (work / "tiny.yaml").write_text(TINY_SPACE)
    from mlflow.tracking import MlflowClient

    MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}").search_experiments()  # the store, made once
    run = ["run", "tiny.yaml", "--data-dir", "data", "--quiet"]
    long = ["--set", "train.epochs=8"]
    cases = [
        signal_case("run (Optuna), SIGTERM mid-trial", work, run + ["--study", "a", "--trials", "2", *long], "a", 0),
        signal_case("run --workers 1, SIGTERM to the launcher mid-trial 1", work,
                    run + ["--study", "b", "--trials", "3", "--workers", "1", *long], "b", 1),
        signal_case("run --engine kerastuner, SIGTERM mid-trial", work,
                    run + ["--engine", "kerastuner", "--study", "c", "--trials", "2", *long], "c", 0),
        all_failed(work, run + ["--study", "d", "--trials", "3", "--max-failures", "2",
                                "--set", "train.learning_rate=1e12", "--set", "train.loss_window=1"]),
    ]
    try:
        cases += [lock_case(0.5), lock_case(5.0)]
    except Exception as err:  # no PostgreSQL server here
        print(f"lock cases skipped: {err.__class__.__name__}: {err}", file=sys.stderr)
    for case in cases:
        print(json.dumps(case))


if __name__ == "__main__":
    main()

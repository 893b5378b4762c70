"""Helpers that read a sweep back from MLflow and Optuna, for the sweep tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.conftest import cli_env


def sweep_runs(tracking_uri: str, study: str):
    """(client, parents, children) of a study's experiment."""
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(study)
    assert exp is not None, f"no experiment {study!r}"
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    parents = [r for r in runs if r.data.tags.get("blocksweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("blocksweep.role") == "trial"]
    return client, parents, children


def kept_models(client, run) -> list:
    """The logged MLflow models named `model` whose source is `run` (a kept model: one)."""
    return [m for m in client.search_logged_models([run.info.experiment_id], filter_string="name = 'model'")
            if m.source_run_id == run.info.run_id]


def kept_keras(client, run_id: str, where) -> str:
    """Download a run's kept model.keras (raw pixels in) into `where`; its local path.
    From the logged model's own location: MLflow 3.17.2 would resolve runs:/<run>/model/...
    through the test process's global tracking URI (search/tracking/tracker.py: download_kept)."""
    import mlflow

    (logged,) = kept_models(client, client.get_run(run_id))
    uri = f"{logged.artifact_location}/data/classifier/model.keras"
    Path(where).mkdir(parents=True, exist_ok=True)
    return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(where), tracking_uri=client.tracking_uri)


def optuna_study(study: str, storage: str = "sqlite:///mlruns/optuna.db"):
    import optuna

    return optuna.load_study(study_name=study, storage=storage)


def wait_for(predicate, timeout: float, what: str):
    """Poll `predicate` until it returns something true; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def mid_training(tracking_uri: str, study: str, trial: int):
    """A predicate: trial `trial` is RUNNING in MLflow and past its first epoch."""
    client = MlflowClient(tracking_uri)

    def check():
        exp = client.get_experiment_by_name(study)
        if exp is None:
            return None
        runs = client.search_runs([exp.experiment_id], f"tags.`blocksweep.trial` = '{trial}'")
        if not runs:
            return None
        # A trial that ended before a poll saw it mid-training would make the wait time out
        # with no clue; the callers give it enough epochs that a poll lands inside it.
        assert runs[0].info.status == "RUNNING", f"trial {trial} ended ({runs[0].info.status}) before the signal"
        return client.get_metric_history(runs[0].info.run_id, "val_accuracy")

    return check


def kill_mid_trial(args: list[str], cwd, tracking_uri: str, study: str, trial: int = 1) -> None:
    """Start the sweep command `args` in its own process group and SIGKILL the group once
    trial `trial` is RUNNING in MLflow and past its first epoch (really mid-training)."""
    worker = subprocess.Popen(args, cwd=cwd, env=cli_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        training = mid_training(tracking_uri, study, trial)

        def still_running_and_mid_training():
            assert worker.poll() is None, f"the sweep exited ({worker.returncode}) before trial {trial} ran"
            return training()

        wait_for(still_running_and_mid_training, 180, f"trial {trial} to be mid-training")
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)


def signal_mid_trial(args: list[str], cwd, tracking_uri: str, study: str, trial: int,
                     signum: int) -> subprocess.CompletedProcess:
    """Start the command `args` in its own session, send `signum` to its first process
    (as `docker stop` or systemd do) once trial `trial` is mid-training, and wait for it
    to exit (60 s at most: it must stop on its own). Returns its exit code and output."""
    proc = subprocess.Popen(args, cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        training = mid_training(tracking_uri, study, trial)

        def ready():
            if proc.poll() is not None:
                raise AssertionError(f"exited ({proc.returncode}) before trial {trial} trained: "
                                     f"{proc.stderr.read()[-2000:]}")
            return training()

        wait_for(ready, 180, f"trial {trial} to be mid-training")
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
        return subprocess.CompletedProcess(args, proc.returncode, out, err)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

"""Distributed sweeps on the real services: workers in separate processes share one Optuna
study on PostgreSQL and log through a real MLflow server whose backend store is
PostgreSQL too (started with `blocksweep ui`). Everything talks to 127.0.0.1 only; every
wait is bounded; every process is killed in `finally`.

Each test gets a fresh study database; the MLflow server (and its database) is shared by
this module's tests, each under its own experiment: starting one costs ~20 s here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from tests.services import fresh_database, free_port, kill_group, postgres_or_skip, start_cli, wait_for_line
from tests.sweeps import sweep_runs, wait_for

pytestmark = pytest.mark.postgres

TRIALS = 12
WORKERS = 4
FINISHED = ("COMPLETE", "PRUNED")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow server (uvicorn, one worker) on a free loopback port, backend store
    in a fresh PostgreSQL database, artifacts in a temporary folder; its URL."""
    postgres_or_skip()
    home = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    with fresh_database("bs_mlflow") as db:
        log = home / "ui.log"
        with open(log, "w") as out:
            server = start_cli(["ui", "--port", port, "--backend-store-uri", db, "--artifacts-destination",
                                home / "artifacts"], home, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_line(log, "MLflow UI: http://127.0.0.1:", server, timeout=180)
            yield f"http://127.0.0.1:{port}"
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(30)
            finally:
                kill_group(server)


@pytest.fixture
def study_db():
    postgres_or_skip()
    with fresh_database("bs_optuna") as url:
        yield url


def sweep_args(space, data, study, storage, tracking, *extra):
    return ["run", space, "--data-dir", data, "--study", study, "--study-trials", TRIALS, "--storage", storage,
            "--tracking-uri", tracking, "--quiet", "--set", "data.train_size=200", *extra]


def finished(study) -> list:
    return [t for t in study.trials if t.state.name in FINISHED]


def test_four_workers_run_one_study_of_twelve_trials_exactly(workdir, write_space, tiny_cifar, mlflow_server,
                                                            study_db):
    import optuna

    args = sweep_args(write_space(), tiny_cifar, "four", study_db, mlflow_server, "--workers", WORKERS, "--json",
                      "--set", "train.epochs=1")
    launcher = start_cli(args, workdir)
    try:
        out, err = launcher.communicate(timeout=280)
    finally:
        kill_group(launcher)
    assert launcher.returncode == 0, err[-3000:]
    summary = json.loads(out)  # stdout is the JSON alone: nothing else printed there
    assert [w["exit_code"] for w in summary["workers"]] == [0] * WORKERS
    assert sum(summary["ran"].values()) == TRIALS  # each trial ran once, in some worker

    study = optuna.load_study(study_name="four", storage=study_db)
    assert len(study.trials) == TRIALS and len(finished(study)) == TRIALS

    _, parents, children = sweep_runs(mlflow_server, "four")
    assert len(parents) == 1 and len(children) == TRIALS
    parent = parents[0]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(int(c.data.tags["blocksweep.trial"]) for c in children) == list(range(TRIALS))
    assert {c.info.run_id for c in children} == {t.user_attrs["mlflow_run_id"] for t in study.trials}
    assert all(c.info.status in ("FINISHED", "KILLED") for c in children)
    assert len({c.data.tags["blocksweep.worker"] for c in children}) >= 2  # the work was shared
    for child in children:  # everything the workers logged in parallel arrived
        assert child.data.params["train.epochs"] == "1" and "model.block" in child.data.params
        if child.info.status == "FINISHED":
            assert {"objective", "test_accuracy", "val_accuracy", "epochs_run"} <= set(child.data.metrics)
    assert parent.info.status == "FINISHED"
    assert summary["parent_run_id"] == parent.info.run_id


def test_workers_lost_mid_trial_killed_or_paused_have_their_trials_retried(workdir, write_space, tiny_cifar,
                                                                         mlflow_server, study_db):
    """kill -9 one worker in the middle of a trial, and pause (SIGSTOP) another past its
    heartbeat grace until its trial is failed: both trials are retried with the same
    parameters, the paused worker carries on without crashing, and the study still ends
    with exactly twelve finished trials, each with one child run."""
    import optuna
    from mlflow.tracking import MlflowClient

    # Three epochs: a window to act on a worker after its trial's first epoch.
    args = sweep_args(write_space(), tiny_cifar, "crash", study_db, mlflow_server, "--heartbeat", 1,
                      "--set", "train.epochs=3", "--json")
    workers = [start_cli(args, workdir) for _ in range(WORKERS)]
    client = MlflowClient(mlflow_server)

    def mid_training(*not_on):
        """(run, its worker) for a trial past its first epoch, on a worker not in `not_on`."""
        exp = client.get_experiment_by_name("crash")
        for run in client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING' and "
                                                           "tags.`blocksweep.role` = 'trial'") if exp else []:
            pid = int(run.data.tags["blocksweep.worker"].rsplit(":", 1)[1])
            if pid not in not_on and client.get_metric_history(run.info.run_id, "val_accuracy"):
                return run, next(w for w in workers if w.pid == pid)
        return None

    def trial_state(number: int) -> str:
        return optuna.load_study(study_name="crash", storage=study_db).trials[number].state.name

    try:
        killed_run, killed = wait_for(mid_training, 180, "a trial past its first epoch")
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(10)
        paused_run, paused = wait_for(lambda: mid_training(killed.pid), 180, "another trial past its first epoch")
        paused_number = int(paused_run.data.tags["blocksweep.trial"])
        os.killpg(paused.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: trial_state(paused_number) == "FAIL", 120, "the paused worker's trial to be failed")
        finally:
            os.killpg(paused.pid, signal.SIGCONT)
        outputs = {w.pid: w.communicate(timeout=280) for w in workers if w is not killed}
    finally:
        for worker in workers:
            kill_group(worker)
    for pid, (out, err) in outputs.items():
        assert json.loads(out)["study"] == "crash", err[-3000:]
    assert all(w.returncode == 0 for w in workers if w is not killed)
    assert json.loads(outputs[paused.pid][0])["ran"]["failed"] >= 1  # it counts its lost trial as failed

    study = optuna.load_study(study_name="crash", storage=study_db)
    lost = {int(killed_run.data.tags["blocksweep.trial"]), paused_number}
    assert {t.number for t in study.trials if t.state.name == "FAIL"} == lost  # nothing else failed
    for number in lost:
        retries = [t for t in study.trials if t.user_attrs.get("retry_of") == number]
        assert len(retries) == 1 and retries[0].state.name in FINISHED
        assert retries[0].params == study.trials[number].params
    assert len(finished(study)) == TRIALS

    _, parents, children = sweep_runs(mlflow_server, "crash")
    assert len(parents) == 1 and len(children) == TRIALS + 2  # twelve finished, two interrupted
    numbers = [int(c.data.tags["blocksweep.trial"]) for c in children]
    assert sorted(numbers) == [t.number for t in study.trials]  # one child per trial, no duplicate
    by_id = {c.info.run_id: c for c in children}
    for run in (killed_run, paused_run):
        assert by_id[run.info.run_id].info.status == "FAILED"
        assert "interrupted" in by_id[run.info.run_id].data.tags["blocksweep.reason"]
    killed_number = int(killed_run.data.tags["blocksweep.trial"])
    retry = next(c for c in children if c.data.tags.get("blocksweep.retry_of") == str(killed_number))
    assert retry.data.tags["blocksweep.worker"] != killed_run.data.tags["blocksweep.worker"]
    assert sum(c.info.status in ("FINISHED", "KILLED") for c in children) == TRIALS

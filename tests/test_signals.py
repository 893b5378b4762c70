"""Signals into a real `blocksweep run`: SIGTERM (what `docker stop`, Kubernetes and systemd
send) is handled as Ctrl-C is. The running trial is recorded interrupted with the reason
and enqueued again, its child run and the parent are closed (the parent KILLED: the sweep
stopped before its budget), the process exits 143 with one line, and a rerun finishes the
study without duplicates. The `--workers` launcher passes SIGTERM on as SIGTERM and sums
up the true counts. Each test is one fresh process (the signal is the point), ~10 s of
TensorFlow import each."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from tests.conftest import cli_env
from tests.sweeps import optuna_study, signal_mid_trial, sweep_runs


def run_args(space, data, *extra) -> list[str]:
    return [sys.executable, "-m", "search", "run", str(space), "--data-dir", str(data), "--quiet", *map(str, extra)]


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def test_sigterm_mid_trial_fails_and_requeues_it_closes_the_runs_and_a_rerun_finishes(workdir, write_space,
                                                                                      tiny_cifar, tracking_uri):
    args = run_args(write_space(), tiny_cifar, "--study", "term", "--heartbeat", "1", "--set", "train.epochs=20")
    stopped = signal_mid_trial(args + ["--trials", "2"], workdir, tracking_uri, "term", 0, signal.SIGTERM)

    assert stopped.returncode == 143, stopped.stderr[-3000:]
    line = one_line(stopped.stderr)
    assert line.startswith("blocksweep: study term [optuna]: ran 0 completed") and "stopped: SIGTERM" in line
    study = optuna_study("term")
    [failed, waiting] = study.trials
    assert failed.state.name == "FAIL" and "SIGTERM" in study.user_attrs["interrupted_0"]
    assert waiting.state.name == "WAITING" and waiting.user_attrs["retry_of"] == 0
    _, [parent], [child] = sweep_runs(tracking_uri, "term")
    assert child.info.status == "FAILED" and child.data.tags["blocksweep.reason"] == "interrupted by SIGTERM"
    assert parent.info.status == "KILLED"  # no other worker runs: not left RUNNING

    rerun = subprocess.run(args + ["--trials", "1"], cwd=workdir, env=cli_env(), capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    study = optuna_study("term")
    assert [(t.number, t.state.name) for t in study.trials] in ([(0, "FAIL"), (1, "COMPLETE")],
                                                                [(0, "FAIL"), (1, "PRUNED")])
    assert study.trials[1].params == failed.params  # the same configuration, tried again
    _, [parent], children = sweep_runs(tracking_uri, "term")
    assert sorted(c.data.tags["blocksweep.trial"] for c in children) == ["0", "1"]  # no duplicate
    assert parent.info.status == "FINISHED"


def test_the_launcher_passes_sigterm_on_and_sums_up_the_true_counts(workdir, write_space, tiny_cifar,
                                                                    tracking_uri):
    args = run_args(write_space(), tiny_cifar, "--study", "launched", "--trials", "3", "--workers", "1",
                    "--json", "--set", "train.epochs=20")
    stopped = signal_mid_trial(args, workdir, tracking_uri, "launched", 1, signal.SIGTERM)

    assert stopped.returncode == 143, stopped.stderr[-3000:]
    summary = json.loads(stopped.stdout)
    counts = {state: [t.state.name for t in optuna_study("launched").trials].count(state)
              for state in ("COMPLETE", "PRUNED", "FAIL", "WAITING")}
    assert counts == {"COMPLETE": 1, "PRUNED": 0, "FAIL": 1, "WAITING": 1}
    assert summary["ran"] == {"completed": 1, "pruned": 0, "failed": 0}  # was all 0: no worker summary
    assert summary["study_counts"]["completed"] == 1 and summary["study_counts"]["waiting"] == 1
    assert [w["exit_code"] for w in summary["workers"]] == [143] and summary["workers"][0]["stopped_because"] == \
        "SIGTERM"
    worker_line = [line for line in stopped.stderr.splitlines() if line.startswith("[w0] blocksweep:")]
    assert len(worker_line) == 1 and "stopped: SIGTERM" in worker_line[0]
    _, [parent], children = sweep_runs(tracking_uri, "launched")
    interrupted = next(c for c in children if c.data.tags["blocksweep.trial"] == "1")
    assert interrupted.data.tags["blocksweep.reason"] == "interrupted by SIGTERM"  # not "Ctrl-C"
    assert parent.info.status == "KILLED"


def test_sigterm_stops_a_keras_tuner_sweep_the_same_way(workdir, write_space, tiny_cifar, tracking_uri):
    from tests.test_sweep_kerastuner import kt_trials

    args = run_args(write_space(), tiny_cifar, "--engine", "kerastuner", "--study", "kt-term", "--trials", "2",
                    "--set", "train.epochs=20")
    stopped = signal_mid_trial(args, workdir, tracking_uri, "kt-term", 0, signal.SIGTERM)

    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "stopped: SIGTERM" in one_line(stopped.stderr)
    assert kt_trials(workdir, "kt-term")[0]["status"] == "RUNNING"  # Keras Tuner hands it out again on reload
    _, [parent], [child] = sweep_runs(tracking_uri, "kt-term")
    assert child.info.status == "FAILED" and child.data.tags["blocksweep.reason"] == "interrupted by SIGTERM"
    assert parent.info.status == "KILLED"

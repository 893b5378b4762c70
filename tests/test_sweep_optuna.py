"""Optuna sweeps: pruning, failures, seeds, and a worker killed mid-trial."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import TINY_SPACE, cli_env
from tests.sweeps import kill_mid_trial, optuna_study, sweep_runs


def test_pruner_prunes_a_trial_that_does_not_learn(cli, write_space, tiny_cifar, tracking_uri):
    space = write_space()
    common = ["run", space, "--data-dir", tiny_cifar, "--quiet", "--study", "prune", "--pruner", "median",
              "--set", "train.epochs=4"]
    assert cli(*common, "--trials", "2", "--set", "train.learning_rate=0.05") == 0
    assert cli(*common, "--trials", "1", "--set", "train.learning_rate=1e-7") == 0
    study = optuna_study("prune")
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"]
    _, _, children = sweep_runs(tracking_uri, "prune")
    pruned = [c for c in children if c.data.tags["blocksweep.state"] == "pruned"]
    assert len(pruned) == 1 and pruned[0].data.metrics["epochs_run"] < 4
    assert pruned[0].info.status == "KILLED"


def test_failing_trials_are_recorded_and_the_sweep_stops_at_max_failures(cli, capsys, write_space, tiny_cifar,
                                                                        tracking_uri):
    code = cli("run", write_space(), "--data-dir", tiny_cifar, "--quiet", "--study", "nan", "--trials", "5",
               "--max-failures", "2", "--set", "train.learning_rate=1e12", "--set", "train.loss_window=1")
    out, err = capsys.readouterr()
    assert "2 trials failed (--max-failures 2)" in out
    # Every trial failed: exit 1, the count and the first reason (it exited 0).
    assert code == 1 and err.startswith("blocksweep: all 2 trials of this run failed; the first: trial 0: ")
    assert "loss became" in err and len(err.strip().splitlines()) == 1
    assert [t.state.name for t in optuna_study("nan").trials] == ["FAIL", "FAIL"]
    _, [parent], children = sweep_runs(tracking_uri, "nan")
    assert len(children) == 2 and parent.info.status == "FAILED"
    for child in children:
        assert child.info.status == "FAILED" and "loss became" in child.data.tags["blocksweep.reason"]


def test_an_impossible_combination_fails_that_trial_and_the_sweep_goes_on(cli, write_space, tiny_cifar,
                                                                          tracking_uri):
    space = write_space("""\
        name: combo
        model: {family: vgg, blocks: 1, filters: 4, dense_units: 8}
        data: {train_size: 300, val_size: 100, test_size: 100, augment: {flip: false, translate: 0}}
        train: {epochs: 1, batch_size: 50}
        params:
          data.train_size: {type: categorical, choices: [300, 950]}
          data.val_size: {type: categorical, choices: [50, 100]}
        """, "combo.yaml")
    # 950 + 100 exceed the 1,000 training images; every other pair fits.
    assert cli("run", space, "--data-dir", tiny_cifar, "--quiet", "--trials", "4", "--sampler", "grid",
               "--max-failures", "4") == 0
    study = optuna_study("combo")
    states = {(t.params["data.train_size"], t.params["data.val_size"]): t.state.name for t in study.trials}
    assert states == {(300, 50): "COMPLETE", (300, 100): "COMPLETE", (950, 50): "COMPLETE", (950, 100): "FAIL"}
    failed = next(t for t in study.trials if t.state.name == "FAIL")
    assert "exceed the 1000 training images" in failed.user_attrs["fail_reason"]
    _, _, children = sweep_runs(tracking_uri, "combo")
    sizes = {c.data.params.get("data.size.train") for c in children if c.data.tags["blocksweep.state"] == "completed"}
    assert sizes == {"300", "950"}  # each trial trained on its own split


def test_same_seed_gives_the_same_sequence_of_trials(cli, write_space, tiny_cifar, tracking_uri):
    space = write_space()
    for study in ("seed-a", "seed-b"):
        assert cli("run", space, "--data-dir", tiny_cifar, "--quiet", "--study", study, "--trials", "3",
                   "--sampler", "tpe", "--seed", "7", "--set", "train.epochs=1") == 0
    a = [t.params for t in optuna_study("seed-a").trials]
    b = [t.params for t in optuna_study("seed-b").trials]
    assert a == b and len({str(p) for p in a}) == 3


def test_kill_9_mid_trial_then_rerun_retries_it_and_keeps_the_rest(workdir, write_space, tiny_cifar, tracking_uri):
    space = write_space()
    args = [sys.executable, "-m", "search", "run", str(space), "--data-dir", str(tiny_cifar), "--quiet",
            "--study", "crash", "--heartbeat", "1", "--set", "train.epochs=30"]
    kill_mid_trial(args + ["--trials", "3"], workdir, tracking_uri, "crash")
    _, _, before = sweep_runs(tracking_uri, "crash")
    trial0 = next(c for c in before if c.data.tags["blocksweep.trial"] == "0")

    # --trials 1: the retried trial is this invocation's one trial (no new trial 2)
    rerun = subprocess.run(args + ["--trials", "1"], cwd=workdir, env=cli_env(), capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]

    study = optuna_study("crash")
    by_number = {t.number: t for t in study.trials}
    assert by_number[0].state.name == "COMPLETE"
    assert by_number[1].state.name == "FAIL"  # the interrupted trial...
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == 1]
    assert len(retries) == 1 and retries[0].state.name in ("COMPLETE", "PRUNED")  # ...ran again
    assert retries[0].params == by_number[1].params
    assert [t.state.name for t in study.trials].count("COMPLETE") + [t.state.name for t in study.trials].count(
        "PRUNED") == 2

    _, parents, children = sweep_runs(tracking_uri, "crash")
    assert len(parents) == 1
    assert len(children) == len(study.trials)
    interrupted = next(c for c in children if c.data.tags["blocksweep.trial"] == "1")
    assert interrupted.info.status == "FAILED"
    assert "interrupted" in interrupted.data.tags["blocksweep.reason"]
    retried = next(c for c in children if c.data.tags.get("blocksweep.retry_of") == "1")
    assert retried.data.tags["blocksweep.state"] in ("completed", "pruned")
    again0 = next(c for c in children if c.data.tags["blocksweep.trial"] == "0")
    assert again0.info.run_id == trial0.info.run_id and again0.data.metrics == trial0.data.metrics


def test_timeout_bounds_the_invocation(cli, capsys, write_space, tiny_cifar, tracking_uri):
    # The timeout is checked between trials and the first always starts: a tiny one runs one.
    assert cli("run", write_space(), "--data-dir", tiny_cifar, "--quiet", "--study", "short", "--trials", "5",
               "--timeout", "0.001") == 0
    out = capsys.readouterr().out
    assert "stopped: timeout 0.001s reached (--timeout or search.timeout)" in out
    assert len(optuna_study("short").trials) == 1


def test_the_parent_is_finished_only_once_the_study_budget_is_done(cli, write_space, tiny_cifar, tracking_uri):
    space = write_space()
    common = ["run", space, "--data-dir", tiny_cifar, "--quiet", "--study", "budget", "--study-trials", "2",
              "--set", "train.epochs=1"]
    assert cli(*common, "--timeout", "0.001") == 0  # one trial of the two, then the timeout
    _, [parent], _ = sweep_runs(tracking_uri, "budget")
    assert parent.info.status == "KILLED"  # was FINISHED with half the budget
    assert cli(*common) == 0
    _, [parent], children = sweep_runs(tracking_uri, "budget")
    assert parent.info.status == "FINISHED" and len(children) == 2


def test_a_keras_tuner_study_is_not_resumed_by_optuna(cli, capsys, write_space, tiny_cifar, tracking_uri):
    space = write_space()
    assert cli("run", space, "--data-dir", tiny_cifar, "--quiet", "--engine", "kerastuner", "--study", "kt",
               "--trials", "1", "--set", "train.epochs=1") == 0
    assert cli("run", space, "--data-dir", tiny_cifar, "--quiet", "--engine", "optuna", "--study", "kt",
               "--trials", "1") == 2
    err = capsys.readouterr().err
    assert "that study was swept by kerastuner" in err and len(err.strip().splitlines()) == 1
    _, parents, children = sweep_runs(tracking_uri, "kt")
    assert len(parents) == 1 and len(children) == 1


def refused_rerun(cli, capsys, tracking_uri, first, second, words):
    """Run `first` (one trial), then `second` on the same study: refused in one line, and
    neither MLflow nor Optuna changed."""
    assert cli("run", *first, "--quiet", "--study", "fit", "--trials", "1") == 0
    _, parents, _ = sweep_runs(tracking_uri, "fit")
    assert cli("run", *second, "--quiet", "--study", "fit", "--trials", "1") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(word in err for word in words), err
    _, after, children = sweep_runs(tracking_uri, "fit")
    assert after[0].info.status == parents[0].info.status == "FINISHED" and len(children) == 1
    assert [t.state.name for t in optuna_study("fit").trials] == ["COMPLETE"]


def test_a_rerun_with_the_other_direction_is_refused_before_touching_mlflow(cli, capsys, write_space, tiny_cifar,
                                                                            tracking_uri):
    space = [write_space(), "--data-dir", tiny_cifar, "--set", "train.epochs=1"]
    refused_rerun(cli, capsys, tracking_uri, space, space + ["--set", "objective.metric=val_loss"],
                  ["the existing study maximizes"])


def test_a_rerun_with_another_kind_of_parameter_is_refused_before_touching_mlflow(cli, capsys, write_space,
                                                                                  tiny_cifar, tracking_uri):
    changed = write_space(TINY_SPACE.replace(
        "train.learning_rate: {type: float, low: 0.01, high: 0.1, log: true}",
        "train.learning_rate: {type: categorical, choices: [0.01, 0.1]}"), "changed.yaml")
    refused_rerun(cli, capsys, tracking_uri, [write_space(), "--data-dir", tiny_cifar, "--set", "train.epochs=1"],
                  [changed, "--data-dir", tiny_cifar, "--set", "train.epochs=1"],
                  ["parameter train.learning_rate was sampled as", "use another --study"])


def test_hyperband_budget_is_the_most_epochs_any_trial_can_run(workdir):
    import yaml

    from search.config import load_spec
    from search.engines.optuna_engine import OptunaEngine, max_trial_epochs
    from search.trials.sweep import Sweep, SweepOptions
    from tests.conftest import REPO

    tiny = yaml.safe_load(TINY_SPACE)  # train.epochs 2, not searched
    assert max_trial_epochs(load_spec(tiny)) == 2
    searched = {**tiny, "params": {**tiny["params"], "train.epochs": {"type": "int", "low": 1, "high": 6}}}
    assert max_trial_epochs(load_spec(searched)) == 6  # was the file's 2: Hyperband cut every trial at 2
    chosen = {**tiny, "params": {**tiny["params"], "train.epochs": {"type": "categorical", "choices": [3, 9]}}}
    assert max_trial_epochs(load_spec(chosen)) == 9
    # Fine-tuning runs its head epochs (5) first, then train.epochs (12).
    assert max_trial_epochs(load_spec(str(REPO / "spaces" / "transfer_demo.yaml"))) == 17
    options = SweepOptions(study="hb", pruner="hyperband", storage=f"sqlite:///{workdir / 'hb.db'}")
    study, _, _ = OptunaEngine().open_study(Sweep(spec=load_spec(searched), dataset=None, tracker=None,
                                                  options=options))
    assert study.pruner._max_resource == 6  # the study's pruner gets it (Optuna has no public getter)

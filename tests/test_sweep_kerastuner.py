"""Keras Tuner sweeps: the space as Keras Tuner hyperparameters, each tuner, failures,
a process killed mid-trial, distributed mode on loopback, and the JAX backend.

The random tuner's 4-trial sweep and the rerun-resumes case are the engine contract's
(tests/test_engine_contract.py runs them for every engine)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import keras_tuner as kt
import pytest

from search.engines.kerastuner_engine import KTSuggester, declare_space, hp_call
from search.config.space import CategoricalParam, FloatParam, IntParam, Space
from tests.conftest import cli_env
from tests.sweeps import kill_mid_trial, sweep_runs
from tests.test_backend_jax import tripwire

# --------------------------------------------------------------------------- the space


@pytest.mark.parametrize("spec, expected", [
    (FloatParam(low=0.0, high=0.5),
     ("Float", {"name": "p", "min_value": 0.0, "max_value": 0.5, "step": None, "sampling": "linear", "default": None})),
    (FloatParam(low=1e-3, high=0.3, log=True, default=0.05),
     ("Float", {"name": "p", "min_value": 1e-3, "max_value": 0.3, "step": None, "sampling": "log", "default": 0.05})),
    (FloatParam(low=0.0, high=1.0, step=0.25),
     ("Float", {"name": "p", "min_value": 0.0, "max_value": 1.0, "step": 0.25, "sampling": "linear", "default": None})),
    (IntParam(low=2, high=4, default=3),
     ("Int", {"name": "p", "min_value": 2, "max_value": 4, "step": 1, "sampling": "linear", "default": 3})),
    (IntParam(low=8, high=64, step=8),
     ("Int", {"name": "p", "min_value": 8, "max_value": 64, "step": 8, "sampling": "linear", "default": None})),
    # Keras Tuner's step is a factor under log sampling: a log int has none.
    (IntParam(low=1, high=128, log=True),
     ("Int", {"name": "p", "min_value": 1, "max_value": 128, "step": None, "sampling": "log", "default": None})),
    (CategoricalParam(choices=("conv-bn", "gap"), default="gap"),
     ("Choice", {"name": "p", "values": ["conv-bn", "gap"], "default": "gap"})),
    (CategoricalParam(choices=(32, 64, 128)),
     ("Choice", {"name": "p", "values": [32, 64, 128], "default": None})),
])
def test_each_param_spec_maps_to_the_same_keras_tuner_hyperparameter(spec, expected):
    assert hp_call("p", spec) == expected


@pytest.mark.parametrize("spec", [FloatParam(low=0.0, high=1.0, step=0.25), FloatParam(low=1e-3, high=0.3, log=True),
                                  IntParam(low=8, high=64, step=8), IntParam(low=1, high=128, log=True),
                                  CategoricalParam(choices=(32, 64, 128))])
def test_keras_tuner_draws_only_values_the_spec_allows(spec):
    hp = kt.HyperParameters()
    method, kwargs = hp_call("p", spec)
    getattr(hp, method)(**kwargs)
    draws = [hp.space[0].random_sample(seed) for seed in range(200)]
    if isinstance(spec, CategoricalParam):
        assert set(draws) == set(spec.choices)
        return
    assert all(spec.low <= v <= spec.high for v in draws)
    if isinstance(spec, IntParam):
        assert all(isinstance(v, int) and v in spec.values() for v in draws)
    if spec.step:
        assert all(abs((v - spec.low) / spec.step - round((v - spec.low) / spec.step)) < 1e-9 for v in draws)
    if getattr(spec, "log", False):  # log-uniform: about half the draws below the geometric mean
        below = sum(v < (spec.low * spec.high) ** 0.5 for v in draws) / len(draws)
        assert 0.35 < below < 0.65


DROP = "conv-drop-conv-drop-pool"
SPACE = Space(params={
    "model.block": CategoricalParam(choices=("conv-bn-conv-pool-drop", DROP)),
    "model.blocks": IntParam(low=2, high=4),
    "model.inner_dropout": FloatParam(low=0.0, high=0.5, when={"model.block": (DROP,)}),
    "model.dropout": FloatParam(low=0.0, high=0.5, per_block="model.blocks"),
    # conditional AND per-block: blocks 2 and 3 carry two conditions (nested scopes)
    "model.extra": FloatParam(low=0.0, high=0.5, per_block="model.blocks", when={"model.block": (DROP,)}),
    # conditional on a parameter that is itself conditional
    "model.head": CategoricalParam(choices=("dense-drop", "gap"), when={"model.block": (DROP,)}),
    "model.head_dropout": FloatParam(low=0.0, high=0.5, when={"model.head": ("dense-drop",)}),
})


def test_conditional_scopes_make_a_parameter_inactive_in_the_other_branch():
    hp = declare_space(SPACE)
    hp.values = {"model.block": "conv-bn-conv-pool-drop", "model.blocks": 4}
    assert not hp.is_active("model.inner_dropout") and not hp.is_active("model.extra.3")
    assert hp.is_active("model.dropout.3")
    hp.values = {"model.block": DROP, "model.blocks": 2}
    assert hp.is_active("model.inner_dropout") and hp.is_active("model.extra.1")
    assert not hp.is_active("model.dropout.2") and not hp.is_active("model.extra.2")
    hp.values = {"model.block": DROP, "model.blocks": 3}
    assert hp.is_active("model.extra.2") and not hp.is_active("model.extra.3")


def test_keras_tuner_samples_exactly_the_active_parameters_and_the_space_walk_reads_them_back():
    oracle = kt.oracles.RandomSearchOracle(objective=kt.Objective("val_accuracy", "max"),
                                           hyperparameters=declare_space(SPACE), max_trials=100, seed=3)
    seen, heads = set(), set()
    for i in range(40):
        values = oracle.populate_space(str(i))["values"]
        block, blocks = values["model.block"], values["model.blocks"]
        seen.add((block, blocks))
        assert ("model.inner_dropout" in values) == (block == DROP) == ("model.head" in values)
        assert ("model.head_dropout" in values) == (values.get("model.head") == "dense-drop")
        for b in range(4):
            assert (f"model.dropout.{b}" in values) == (b < blocks)
            assert (f"model.extra.{b}" in values) == (b < blocks and block == DROP)
        hp = oracle.get_space()
        hp.values = dict(values)
        assert SPACE.flat_names(SPACE.sample(KTSuggester(hp))) == values
        heads.add(values.get("model.head"))
    assert len(seen) == 6 and heads == {None, "dense-drop", "gap"}  # every branch was drawn


# --------------------------------------------------------------------------- sweeps


def kt_trials(workdir: Path, study: str) -> dict[int, dict]:
    """Keras Tuner's own record of a study: {trial number: trial.json}."""
    trials = {}
    for path in (workdir / "mlruns" / "kerastuner" / study).glob("trial_*/trial.json"):
        state = json.loads(path.read_text())
        trials[int(state["trial_id"])] = state
    return trials


def kt_run(cli, space, data, *extra):
    return cli("run", space, "--engine", "kerastuner", "--data-dir", data, "--quiet", *extra)


def test_bayesian_tuner_starts_from_the_defaults_and_mirrors_each_trial(cli, workdir, write_space, tiny_cifar,
                                                                       tracking_uri):
    # One parameter: Keras Tuner's Bayesian oracle draws 3 random points, then the GP picks the 4th.
    space = write_space("""\
        name: bayes
        model: {family: vgg, blocks: 1, filters: 4, dense_units: 16, dropout: 0.0, head_dropout: 0.0}
        data: {train_size: 300, val_size: 100, test_size: 100, augment: {flip: false, translate: 0}}
        train: {epochs: 1, batch_size: 50, loss_window: 2}
        params:
          train.learning_rate: {type: float, low: 0.005, high: 0.2, log: true, default: 0.05}
        """, "bayes.yaml")
    assert kt_run(cli, space, tiny_cifar, "--tuner", "bayesian", "--trials", "4") == 0
    _, parents, children = sweep_runs(tracking_uri, "bayes-kerastuner")  # the default study name
    assert len(parents) == 1 and len(children) == 4
    assert parents[0].data.tags["blocksweep.tuner"] == parents[0].data.tags["blocksweep.sampler"] == "bayesian"
    by_number = {int(c.data.tags["blocksweep.trial"]): c for c in children}
    assert sorted(by_number) == [0, 1, 2, 3]
    assert float(by_number[0].data.params["param.train.learning_rate"]) == 0.05  # the default comes first
    kt_state = kt_trials(workdir, "bayes-kerastuner")
    for number, child in by_number.items():
        assert 0.005 <= float(child.data.params["train.learning_rate"]) <= 0.2
        assert child.data.tags["blocksweep.state"] == "completed" and kt_state[number]["status"] == "COMPLETED"
        assert kt_state[number]["score"] == pytest.approx(child.data.metrics["objective"])
        assert kt_state[number]["hyperparameters"]["values"]["train.learning_rate"] == pytest.approx(
            float(child.data.params["param.train.learning_rate"]))
    best = next(c for c in children if c.info.run_id == parents[0].data.tags["blocksweep.best_run_id"])
    assert best.data.metrics["objective"] == max(c.data.metrics["objective"] for c in children)


def test_hyperband_trains_round_zero_briefly_and_promotes_the_best(cli, workdir, write_space, tiny_cifar,
                                                                   tracking_uri):
    # max_epochs 3, factor 3: the first bracket runs 3 trials of 1 epoch, then the best for 3 epochs.
    assert kt_run(cli, write_space(), tiny_cifar, "--tuner", "hyperband", "--trials", "4", "--study", "hb",
                  "--set", "train.epochs=3") == 0
    _, parents, children = sweep_runs(tracking_uri, "hb")
    assert len(parents) == 1 and len(children) == 4
    first = [c for c in children if c.data.tags["blocksweep.hyperband.round"] == "0"]
    promoted = [c for c in children if c.data.tags["blocksweep.hyperband.round"] == "1"]
    assert len(first) == 3 and len(promoted) == 1
    for child in first:
        assert child.data.params["train.epochs"] == "1" and child.data.metrics["epochs_run"] == 1
    child = promoted[0]
    assert child.data.params["train.epochs"] == "3" and child.data.metrics["epochs_run"] == 3
    assert child.data.tags["blocksweep.hyperband.initial_epoch"] == "1"  # recorded; retrained from scratch
    source = next(c for c in first
                  if c.data.tags["blocksweep.trial"] == child.data.tags["blocksweep.hyperband.promoted_from"])
    assert source.data.metrics["objective"] == max(c.data.metrics["objective"] for c in first)  # the best
    searched = {k: v for k, v in child.data.params.items() if k.startswith("param.") and k != "param.train.epochs"}
    assert searched == {k: v for k, v in source.data.params.items()
                        if k.startswith("param.") and k != "param.train.epochs"}


def test_failing_trials_are_failed_in_keras_tuner_with_the_reason_up_to_max_failures(cli, capsys, workdir,
                                                                                    write_space, tiny_cifar,
                                                                                    tracking_uri):
    code = kt_run(cli, write_space(), tiny_cifar, "--study", "nan", "--trials", "5", "--max-failures", "2",
                  "--set", "train.learning_rate=1e12", "--set", "train.loss_window=1")
    out, err = capsys.readouterr()
    assert "2 trials failed (--max-failures 2)" in out
    assert code == 1 and err.startswith("blocksweep: all 2 trials of this run failed; the first: trial 0: ")
    kt_state = kt_trials(workdir, "nan")
    assert [kt_state[n]["status"] for n in sorted(kt_state)] == ["FAILED", "FAILED"]
    assert all("loss became" in t["message"] for t in kt_state.values())
    _, [parent], children = sweep_runs(tracking_uri, "nan")
    assert len(children) == 2 and parent.info.status == "FAILED"
    assert all(c.info.status == "FAILED" and "loss became" in c.data.tags["blocksweep.reason"] for c in children)


@pytest.mark.parametrize("flag, value, says", [("--sampler", "tpe", "is Optuna's"),
                                               ("--pruner", "median", "is Optuna's"),
                                               ("--storage", "sqlite:///other.db", "Optuna's study storage")])
def test_optuna_only_flags_are_refused_with_one_line(cli, capsys, write_space, tiny_cifar, flag, value, says):
    assert kt_run(cli, write_space(), tiny_cifar, "--trials", "1", flag, value) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1


def test_a_study_of_another_engine_is_not_mixed_with_keras_tuner_trials(cli, capsys, write_space, tiny_cifar,
                                                                        tracking_uri):
    from search.tracking import Tracker

    Tracker(tracking_uri).sweep_parent("mixed", {"blocksweep.engine": "optuna"}, "name: mixed\n")
    assert kt_run(cli, write_space(), tiny_cifar, "--trials", "1", "--study", "mixed") == 2
    assert "was swept by optuna" in capsys.readouterr().err
    _, _, children = sweep_runs(tracking_uri, "mixed")
    assert children == []


def test_a_study_keeps_its_tuner(cli, capsys, write_space, tiny_cifar, tracking_uri):
    space = write_space()
    assert kt_run(cli, space, tiny_cifar, "--trials", "1", "--study", "keep", "--set", "train.epochs=1") == 0
    assert kt_run(cli, space, tiny_cifar, "--trials", "1", "--study", "keep", "--set", "train.epochs=1",
                  "--tuner", "bayesian") == 2
    assert "started with tuner random" in capsys.readouterr().err
    assert len(sweep_runs(tracking_uri, "keep")[2]) == 1


def test_a_second_process_on_the_same_project_is_refused(cli, capsys, workdir, write_space, tiny_cifar):
    import fcntl

    project = workdir / "mlruns" / "kerastuner" / "busy"
    project.mkdir(parents=True)
    with open(project / ".blocksweep.lock", "a") as other:  # as another process holding the project
        fcntl.flock(other, fcntl.LOCK_EX)
        assert kt_run(cli, write_space(), tiny_cifar, "--trials", "1", "--study", "busy") == 2
    assert "another process is running this Keras Tuner project" in capsys.readouterr().err
    assert not (project / "oracle.json").exists()


# --------------------------------------------------------------------------- processes


def test_kill_9_mid_trial_then_rerun_retries_it_and_keeps_the_rest(workdir, write_space, tiny_cifar, tracking_uri):
    space = write_space()
    args = [sys.executable, "-m", "search", "run", str(space), "--engine", "kerastuner", "--data-dir",
            str(tiny_cifar), "--quiet", "--study", "crash", "--set", "train.epochs=24"]
    kill_mid_trial(args + ["--trials", "3"], workdir, tracking_uri, "crash")
    assert kt_trials(workdir, "crash")[1]["status"] == "RUNNING"  # what Keras Tuner was left with
    _, _, before = sweep_runs(tracking_uri, "crash")
    trial0 = next(c for c in before if c.data.tags["blocksweep.trial"] == "0")

    # --trials 1: the retried trial is this invocation's one trial (no new trial 2)
    rerun = subprocess.run(args + ["--trials", "1"], cwd=workdir, env=cli_env(), capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]

    kt_state = kt_trials(workdir, "crash")
    assert {n: t["status"] for n, t in kt_state.items()} == {0: "COMPLETED", 1: "COMPLETED"}
    _, parents, children = sweep_runs(tracking_uri, "crash")
    assert len(parents) == 1 and len(children) == 3
    attempts = sorted((c for c in children if c.data.tags["blocksweep.trial"] == "1"),
                      key=lambda c: c.info.start_time)
    assert attempts[0].info.status == "FAILED" and "interrupted" in attempts[0].data.tags["blocksweep.reason"]
    assert attempts[1].data.tags["blocksweep.state"] == "completed"
    assert attempts[1].data.tags["blocksweep.retry_of"] == "1" and attempts[1].data.tags["blocksweep.attempt"] == "2"
    params = lambda run: {k: v for k, v in run.data.params.items() if k.startswith("param.")}  # noqa: E731
    assert params(attempts[1]) == params(attempts[0])  # the same configuration, tried again
    again0 = next(c for c in children if c.data.tags["blocksweep.trial"] == "0")
    assert again0.info.run_id == trial0.info.run_id and again0.data.metrics == trial0.data.metrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_chief_and_two_workers_on_loopback_share_one_parent(workdir, write_space, tiny_cifar,
                                                                       tracking_uri):
    space = write_space()
    args = [sys.executable, "-m", "search", "run", str(space), "--engine", "kerastuner", "--data-dir",
            str(tiny_cifar), "--quiet", "--json", "--study", "dist", "--set", "train.epochs=1"]
    port = free_port()

    def start(tuner_id, *extra):
        env = cli_env(KERASTUNER_TUNER_ID=tuner_id, KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=port)
        return subprocess.Popen(args + list(extra), cwd=workdir, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    procs = {"chief": start("chief", "--trials", "4")}
    try:
        procs.update({w: start(w) for w in ("tuner0", "tuner1")})
        out = {}
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=300)  # each stops by itself
            assert proc.returncode == 0, f"{name}: {stderr[-2000:]}"
            out[name] = json.loads(stdout)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    _, parents, children = sweep_runs(tracking_uri, "dist")
    assert len(parents) == 1 and {s["parent_run_id"] for s in out.values()} == {parents[0].info.run_id}
    assert sorted(int(c.data.tags["blocksweep.trial"]) for c in children) == [0, 1, 2, 3]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert sum(out["chief"]["ran"].values()) == 0 and out["chief"]["study_counts"]["completed"] == 4
    for worker in ("tuner0", "tuner1"):  # each worker's summary matches the children it logged
        mine = [c for c in children if c.data.tags["blocksweep.kt_tuner_id"] == worker]
        assert sum(out[worker]["ran"].values()) == len(mine)
    assert parents[0].info.status == "FINISHED"


JAX_CHECK = """\
import json, sys
from search import backend
backend.select("jax")
import keras
from search.engines.kerastuner_engine import declare_space, make_oracle  # imports keras_tuner
from tests.test_sweep_kerastuner import SPACE
hp = declare_space(SPACE)
print(json.dumps({"backend": keras.backend.backend(), "tensorflow": "tensorflow" in sys.modules,
                  "declared": len(hp.space)}))
"""


def test_keras_tuner_engine_imports_under_jax_with_tensorflow_unimportable(tmp_path):
    # Keras Tuner imports TensorFlow only when it is Keras's backend (it needs grpc and
    # protobuf, not TensorFlow); a whole sweep under JAX was run by hand (see README).
    pytest.importorskip("jax")
    blocker, log = tripwire(tmp_path)
    result = subprocess.run([sys.executable, "-c", JAX_CHECK], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env=cli_env(PYTHONPATH_EXTRA=blocker, KERAS_BACKEND="jax",
                                                     TF_TRIPWIRE_LOG=log))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not log.exists(), f"tensorflow import attempted: {log.read_text()}"
    assert json.loads(result.stdout.splitlines()[-1]) == {"backend": "jax", "tensorflow": False,
                                                         "declared": len(SPACE.declarations())}

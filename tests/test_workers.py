"""`blocksweep run --workers N [--gpus ...]`: the placement plan (a pure function), the
command each worker runs, and how the workers' results add up. The real processes run in
tests/test_distributed.py."""

from __future__ import annotations

import pytest

from search.cli import build_parser, worker_argv
from search.errors import UsageError
from search.services.workers import Outcome, Placement, parse_gpus, plan, summarize, visible_gpus


def gpus_of(placements):
    return [p.env.get("CUDA_VISIBLE_DEVICES") for p in placements]


def test_workers_go_round_robin_over_the_gpus():
    placements = plan(5, ["0", "1", "2"])
    assert gpus_of(placements) == ["0", "1", "2", "0", "1"]
    assert [p.gpu for p in placements] == ["0", "1", "2", "0", "1"]


def test_one_worker_per_gpu_gets_the_whole_gpu():
    placements = plan(2, ["0", "1", "2", "3"])
    assert gpus_of(placements) == ["0", "1"]
    assert all(set(p.env) == {"CUDA_VISIBLE_DEVICES"} for p in placements)


def test_workers_sharing_a_gpu_split_its_memory():
    placements = plan(4, ["0", "1"])  # two per GPU
    for p in placements:
        assert p.env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.45"  # 0.9 / 2: JAX would take 0.75 each
        assert p.env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"


def test_an_explicit_memory_fraction_is_used_and_checked():
    assert {p.env["XLA_PYTHON_CLIENT_MEM_FRACTION"] for p in plan(3, ["0"], 0.3)} == {"0.3"}
    with pytest.raises(UsageError, match="3 workers share a GPU"):
        plan(3, ["0"], 0.5)  # 1.5 GPUs' worth of memory


def test_without_gpus_workers_run_on_the_cpu_with_nothing_set():
    placements = plan(3, [])
    assert [p.gpu for p in placements] == [None, None, None]
    assert all(p.env == {} for p in placements)
    with pytest.raises(UsageError, match="no GPU to share"):
        plan(2, [], 0.5)


@pytest.mark.parametrize("text, gpus", [("0,1", ["0", "1"]), (" 3 ", ["3"]), ("GPU-8d2f,MIG-1a", ["GPU-8d2f", "MIG-1a"]),
                                        ("none", [])])
def test_gpus_are_indices_or_uuids(text, gpus):
    assert parse_gpus(text) == gpus


@pytest.mark.parametrize("text, problem", [("0,0", "listed twice"), ("cuda:0", "not a GPU index")])
def test_bad_gpu_lists_are_refused(text, problem):
    with pytest.raises(UsageError, match=problem):
        parse_gpus(text)


def test_visible_gpus_follow_cuda_visible_devices():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_each_worker_runs_the_same_command_minus_the_launcher_flags():
    parser = build_parser()
    argv = ["run", "spaces/quickstart.yaml", "--workers", "4", "--gpus", "0,1", "--gpu-memory-fraction", "0.4",
            "--study", "vgg-a", "--study-tr", "12", "--seed=-3", "--set", "train.epochs=2", "--set",
            "model.blocks=2", "--quiet", "--json", "--storage", "postgresql://sweeper@db:5432/sweeps"]
    original = vars(parser.parse_args(argv))
    command = worker_argv(argv, parser.parse_args(argv))
    again = vars(parser.parse_args(command))
    assert not {"--workers", "--gpus", "--gpu-memory-fraction", "--json"} & {a.split("=")[0] for a in command}
    for key in ("workers", "gpus", "gpu_memory_fraction", "json", "noted"):  # noted: the flags as typed
        original.pop(key, None), again.pop(key, None)
    assert again == original


def outcome(worker, code, ran=None, order=1, **summary):
    body = {"study": "s", "ran": ran, **summary} if ran is not None else None
    return Outcome(Placement(worker, None), exit_code=code, summary=body, order=order,
                   last_lines=[f"worker {worker} said goodbye"])


def test_the_summary_adds_up_the_workers_and_takes_the_study_from_the_last():
    code, summary, line = summarize([
        outcome(0, 0, {"completed": 2, "pruned": 1, "failed": 0}, order=2, best_value=0.5, best_trial=1,
                study_counts={"completed": 5, "pruned": 1}),
        outcome(1, 0, {"completed": 3, "pruned": 0, "failed": 1}, order=1, best_value=0.4, best_trial=0,
                study_counts={"completed": 3}),
    ], "val_accuracy")
    assert code == 0
    assert summary["ran"] == {"completed": 5, "pruned": 1, "failed": 1}
    assert summary["best_value"] == 0.5 and summary["study_counts"] == {"completed": 5, "pruned": 1}
    assert "2 workers" in line and "ran 5 completed, 1 pruned, 1 failed" in line


def test_a_failed_worker_fails_the_launch_and_is_named():
    code, summary, line = summarize([outcome(0, 0, {"completed": 1, "pruned": 0, "failed": 0}),
                                     outcome(1, -9, order=2)], "val_accuracy")
    assert code == 1
    assert [w["exit_code"] for w in summary["workers"]] == [0, -9]
    assert "worker w1 failed (exit -9: worker 1 said goodbye)" in line


def test_bad_input_in_every_worker_is_bad_input():
    code, _, _ = summarize([outcome(0, 2), outcome(1, 2)], "val_accuracy")
    assert code == 2


def test_a_bad_space_file_stops_the_launch_before_any_worker_starts(cli, capsys, workdir):
    assert cli("run", "missing.yaml", "--workers", 3) == 2
    assert capsys.readouterr().err.count("no such space file") == 1


def test_keras_tuner_sweeps_are_refused_before_any_worker_starts(cli, capsys, write_space):
    assert cli("run", write_space(), "--workers", 2, "--engine", "kerastuner") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "its own distributed mode" in err
    assert not (write_space().parent / "mlruns" / "kerastuner").exists()

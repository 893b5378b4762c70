"""`blocksweep compare`: the ranking rules (ties, missing values, pruned and failed runs
apart) on runs made in the parent/child layout, studies of both engines together, the
figures and importances, and `--repeat` after a real sweep."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.layout import Trial, make_study

PNG = b"\x89PNG\r\n\x1a\n"


def compare_json(cli, capsys, *args) -> dict:
    code = cli("compare", "--format", "json", *args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def plotly_figures(page: Path) -> list[dict]:
    """The figures on a page `compare` wrote, as plotly's JSON ({"data": [traces], "layout": ...}),
    read back from each `Plotly.newPlot(id, data, layout, config)` call; plotly.js is
    embedded in the page (it must show without a network)."""
    text = page.read_text()
    assert not re.search(r"<script[^>]+src=", text) and text.count("Plotly.newPlot(") >= 1
    decoder, figures = json.JSONDecoder(), []
    for call in text.split("Plotly.newPlot(")[1:]:
        rest = call.split(",", 1)[1].lstrip()  # after the div id
        data, end = decoder.raw_decode(rest)
        layout, _ = decoder.raw_decode(rest[end:].lstrip(", \n"))
        figures.append({"data": _arrays(data), "layout": layout})
    return figures


def _arrays(tree):
    """plotly's JSON with its base64 typed arrays ({"dtype": "f8", "bdata": ...}) as lists."""
    import base64

    if isinstance(tree, dict):
        if set(tree) <= {"dtype", "bdata", "shape"} and "bdata" in tree:
            return np.frombuffer(base64.b64decode(tree["bdata"]), dtype=tree["dtype"]).tolist()
        return {k: _arrays(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_arrays(v) for v in tree]
    return tree


def trials_of(rows) -> list:
    return [r["trial"] for r in rows]


def test_ties_share_a_rank_and_the_earlier_run_is_listed_first(cli, capsys, tracking_uri, tmp_path):
    values = [0.5, 0.7, 0.6, 0.7]
    make_study(tracking_uri, "ties", [Trial(objective=v, params={"train.learning_rate": 0.01 * (i + 1)})
                                      for i, v in enumerate(values)])
    out = compare_json(cli, capsys, "--study", "ties", "--out", tmp_path / "o", "--no-figures")
    assert [(r["trial"], r["rank"]) for r in out["ranked"]] == [(1, 1), (3, 1), (2, 3), (0, 4)]
    assert out["ranked"][0]["train.learning_rate"] == 0.02  # parameters come back as numbers


def test_a_minimized_objective_ranks_the_smallest_first(cli, capsys, tracking_uri, tmp_path):
    make_study(tracking_uri, "losses", [Trial(objective=v) for v in (0.9, 0.3, 0.5)], objective="minimize val_loss")
    out = compare_json(cli, capsys, "--out", tmp_path / "o", "--no-figures")
    assert out["goal"] == "minimize" and out["metric"] == "val_loss"
    assert trials_of(out["ranked"]) == [1, 2, 0]


def test_missing_values_pruned_failed_and_running_runs_are_listed_apart(cli, capsys, tracking_uri, tmp_path):
    make_study(tracking_uri, "mixed", [
        Trial(objective=0.6), Trial(objective=math.nan), Trial(objective=None),
        Trial(state="pruned", objective=0.9), Trial(state="failed"), Trial(state="running", objective=0.95)])
    out = compare_json(cli, capsys, "--study", "mixed", "--out", tmp_path / "o", "--no-figures")
    assert trials_of(out["ranked"]) == [0]  # the better pruned and running runs do not win
    assert trials_of(out["no_value"]) == [1, 2]  # completed, but no finite objective
    assert trials_of(out["pruned"]) == [3] and trials_of(out["failed"]) == [4] and trials_of(out["running"]) == [5]
    assert out["failed"][0]["reason"] == "failed on purpose"
    assert cli("compare", "--study", "mixed", "--out", tmp_path / "o", "--no-figures") == 0
    table = capsys.readouterr().out
    for title in ("Ranking by val_accuracy (maximize) of mixed [optuna] (1)",
                  "Completed without a val_accuracy value (2)", "Pruned (1)", "Failed (1)",
                  "Running or interrupted (1)"):
        assert title in table


def test_studies_of_both_engines_rank_together_with_the_union_of_their_parameters(cli, capsys, tracking_uri,
                                                                                  tmp_path):
    make_study(tracking_uri, "opt", [Trial(objective=0.6, params={"model.block": "a", "train.learning_rate": 0.01}),
                                     Trial(objective=0.8, params={"model.block": "b", "train.learning_rate": 0.02})])
    make_study(tracking_uri, "kt", [Trial(objective=0.7, params={"model.block": "b", "model.filters": 16})],
               engine="kerastuner")
    out = compare_json(cli, capsys, "--study", "opt", "--study", "kt", "--out", tmp_path / "o", "--no-figures")
    assert [(r["study"], r["engine"], r["trial"]) for r in out["ranked"]] == [
        ("opt", "optuna", 1), ("kt", "kerastuner", 0), ("opt", "optuna", 0)]
    assert out["ranked"][1]["model.filters"] == 16 and out["ranked"][1]["train.learning_rate"] is None
    everything = compare_json(cli, capsys, "--out", tmp_path / "o", "--no-figures")  # no --study: every sweep
    assert [r["run_id"] for r in everything["ranked"]] == [r["run_id"] for r in out["ranked"]]


def test_different_objectives_rank_together_only_by_an_explicit_metric(cli, capsys, tracking_uri, tmp_path):
    make_study(tracking_uri, "acc", [Trial(objective=0.7, test_accuracy=0.65)])
    make_study(tracking_uri, "loss", [Trial(objective=0.4, test_accuracy=0.7)], objective="minimize val_loss")
    assert cli("compare", "--out", tmp_path / "o", "--no-figures") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different objectives" in err and "loss: minimize val_loss" in err
    out = compare_json(cli, capsys, "--metric", "test_accuracy", "--out", tmp_path / "o", "--no-figures")
    assert out["goal"] == "maximize" and [r["study"] for r in out["ranked"]] == ["loss", "acc"]


@pytest.mark.parametrize("setup,args,words", [
    (False, [], ["no sweeps in", "blocksweep run"]),
    (True, ["--study", "nope"], ["--study nope: no such study", "studies here: known"]),
    (True, ["--experiment", "nope"], ["--experiment nope: no such MLflow experiment"]),
    (True, ["--metric", "made_up"], ["--metric made_up: no run of known logged it"]),
    (True, ["--repeat", "1", "--data-dir", "{data}"], ["--repeat 1: needs at least 2 seeds"]),
    (True, ["--repeat-top", "2"], ["--repeat-top 2: only with --repeat"]),
    (True, ["--storage", "postgresql://postgres@127.0.0.1:1/none"], ["--storage", "cannot open the study storage"]),
    (True, ["--storage", "sqlite:///{data}/no.db"], ["--storage", "no such study database"]),
])
def test_unknown_studies_and_metrics_are_one_line_and_exit_2(cli, capsys, tracking_uri, tiny_cifar, tmp_path,
                                                             setup, args, words):
    if setup:
        make_study(tracking_uri, "known", [Trial(objective=0.5)])
    code = cli("compare", "--out", tmp_path / "o", "--no-figures", *[a.format(data=tiny_cifar) for a in args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("blocksweep: error:")
    for word in words:
        assert word in err


@pytest.mark.parametrize("command", [["compare", "--no-figures"], ["export", "--out", "e"],
                                     ["evaluate", "--model", "0123456789abcdef0123456789abcdef"]])
def test_reading_commands_in_a_folder_without_a_store_leave_nothing_behind(cli, capsys, workdir, monkeypatch,
                                                                           command):
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli(*command) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{elsewhere}/mlruns/mlflow.db: no such MLflow database" in err
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("fmt,marker", [("csv", "rank,study,engine,trial"), ("markdown", "| rank | study |"),
                                        ("html", "<table"), ("table", "rank study")])
def test_every_format_holds_the_ranking_and_is_written_to_out(cli, capsys, tracking_uri, tmp_path, fmt, marker):
    _, ids = make_study(tracking_uri, "fmt", [Trial(objective=0.4), Trial(objective=0.9)])
    assert cli("compare", "--format", fmt, "--out", tmp_path / "o", "--no-figures") == 0
    text = capsys.readouterr().out
    assert marker in re.sub(" +", " ", text) and text.index(ids[1]) < text.index(ids[0])
    ext = {"table": "txt", "markdown": "md"}.get(fmt, fmt)
    assert (tmp_path / "o" / f"ranking.{ext}").read_text() == text


def test_figures_are_written_and_logged_to_the_parent_run(cli, capsys, tracking_uri, tmp_path):
    # The objective follows the learning rate alone; the block alternates.
    trials = [Trial(objective=0.5 + 0.05 * i, curve=(0.3, 0.5 + 0.05 * i),
                    params={"train.learning_rate": 0.01 * (i + 1), "model.block": "ab"[i % 2]}) for i in range(6)]
    parent, _ = make_study(tracking_uri, "kt", trials, engine="kerastuner")
    out = compare_json(cli, capsys, "--study", "kt", "--out", tmp_path / "figs", "--top", "3")
    pngs = {"curves_top.png", "objective_by_trial.png", "importance_kt.png"}
    assert {Path(f).name for f in out["figures"]} == pngs | {"figures_kt.html"}
    for name in pngs:
        assert (tmp_path / "figs" / name).read_bytes()[:8] == PNG
    logged = {a.path for a in MlflowClient(tracking_uri).list_artifacts(parent, "compare")}
    assert logged == {f"compare/{n}" for n in pngs | {"figures_kt.html"}}
    # The Keras Tuner study's interactive page: the same kinds of figure as Optuna's, from its runs.
    page = plotly_figures(tmp_path / "figs" / "figures_kt.html")
    assert [f["data"][0]["type"] for f in page] == ["scatter", "parcoords", "scatter", "bar"]
    parcoords = page[1]["data"][0]
    block, rate, value = parcoords["dimensions"]
    assert (block["label"], rate["label"], value["label"]) == ("model.block", "train.learning_rate", "val_accuracy")
    assert block["ticktext"] == ["a", "b"] and sorted(block["values"]) == [0, 0, 0, 1, 1, 1]
    assert sorted(value["values"]) == pytest.approx([0.5 + 0.05 * i for i in range(6)])
    importance = out["importances"]["kt"]
    assert importance["method"].startswith("random-forest permutation importance")
    assert set(importance["values"]) == {"train.learning_rate", "model.block"}
    assert sum(importance["values"].values()) == pytest.approx(1.0)
    assert max(importance["values"], key=importance["values"].get) == "train.learning_rate"


def test_studies_of_both_engines_share_one_interactive_page_logged_into_both_parents(cli, capsys, tracking_uri,
                                                                                     tmp_path):
    def trials(first: float, rate: float) -> list:
        return [Trial(objective=first + 0.1 * i, params={"train.learning_rate": rate * 4 ** i}) for i in range(3)]

    opt, _ = make_study(tracking_uri, "opt", trials(0.5, 0.01))
    kt, _ = make_study(tracking_uri, "kt", trials(0.55, 0.02), engine="kerastuner")
    out = compare_json(cli, capsys, "--study", "opt", "--study", "kt", "--out", tmp_path / "o")
    assert {"figures_opt.html", "figures_kt.html", "figures.html"} <= {Path(f).name for f in out["figures"]}
    # No Optuna storage holds "opt" here: its page is drawn from its MLflow runs, and says so.
    assert any(n.startswith("figures of opt from its MLflow runs") for n in out["notes"])
    history, parcoords, slices = plotly_figures(tmp_path / "o" / "figures.html")
    assert {t["name"] for t in history["data"]} >= {"opt: completed", "kt: completed"}
    rate = parcoords["data"][0]["dimensions"][0]
    assert rate["label"] == "train.learning_rate (log)"  # 0.01 .. 0.32 spans more than 20x
    assert sorted(rate["values"]) == pytest.approx(sorted(np.log10([0.01, 0.04, 0.16, 0.02, 0.08, 0.32])))
    assert {t["name"] for t in slices["data"]} == {"opt", "kt"}
    client = MlflowClient(tracking_uri)
    for parent, own in ((opt, "figures_opt.html"), (kt, "figures_kt.html")):
        logged = {a.path for a in client.list_artifacts(parent, "compare")}
        assert {"compare/figures.html", f"compare/{own}"} <= logged


def test_compare_no_log_writes_nothing_into_mlflow(cli, capsys, tracking_uri, workdir, tmp_path):
    import hashlib

    parent, _ = make_study(tracking_uri, "quiet", [Trial(objective=0.5 + 0.1 * i, curve=(0.4, 0.5 + 0.1 * i),
                                                        params={"train.learning_rate": 0.01 * (i + 1)})
                                                  for i in range(4)], engine="kerastuner")

    def store_state():
        files = sorted(p for p in (workdir / "mlruns").rglob("*") if p.is_file())
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    before = store_state()
    out = compare_json(cli, capsys, "--study", "quiet", "--out", tmp_path / "o", "--no-log")
    assert store_state() == before  # the database and the artifacts, byte for byte
    assert {"curves_top.png", "figures_quiet.html"} <= {Path(f).name for f in out["figures"]}
    assert all(Path(f).exists() for f in out["figures"])
    assert MlflowClient(tracking_uri).list_artifacts(parent, "compare") == []
    assert cli("compare", "--study", "quiet", "--no-log", "--repeat", "2") == 2
    assert "cannot run with --no-log" in capsys.readouterr().err


def test_after_a_real_sweep_the_ranking_agrees_with_optuna_and_uses_its_importances(cli, capsys, tiny_sweep,
                                                                                    tmp_path):
    args = ["--study", tiny_sweep.study, "--tracking-uri", tiny_sweep.tracking_uri, "--storage", tiny_sweep.storage,
            "--out", tmp_path / "o"]
    out = compare_json(cli, capsys, *args)
    parent = MlflowClient(tiny_sweep.tracking_uri).get_run(out["studies"][0]["parent_run_id"])
    assert out["ranked"][0]["run_id"] == parent.data.tags["blocksweep.best_run_id"]
    values = [r["objective"] for r in out["ranked"]]
    assert values == sorted(values, reverse=True)
    assert sum(len(out[k]) for k in ("ranked", "no_value", "pruned", "failed", "running")) == 4
    assert out["importances"][tiny_sweep.study]["method"].startswith("Optuna fANOVA")
    assert cli(*["compare", *args]) == 0  # the table: the best run's row comes first
    rows = [line for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert parent.data.tags["blocksweep.best_run_id"] in rows[0]
    # Optuna's own interactive figures, their objective axis named by the study's metric,
    # logged into the parent beside the PNGs.
    page = plotly_figures(tmp_path / "o" / f"figures_{tiny_sweep.study}.html")
    titles = [f["layout"]["title"]["text"] for f in page]
    assert titles == ["Optimization History Plot", "Parallel Coordinate Plot", "Hyperparameter Importances",
                      "Slice Plot", "Contour Plot"]
    assert page[0]["layout"]["yaxis"]["title"]["text"] == "val_accuracy"
    assert page[4]["data"][0]["colorbar"]["title"]["text"] == "val_accuracy"  # the contour's colour scale
    logged = {a.path for a in MlflowClient(tiny_sweep.tracking_uri).list_artifacts(parent.info.run_id, "compare")}
    assert f"compare/figures_{tiny_sweep.study}.html" in logged and "compare/objective_by_trial.png" in logged


def test_repeat_retrains_the_leaders_with_seeds_under_the_parent_and_tests_them(cli, capsys, tiny_sweep, tmp_path):
    from scipy import stats

    args = ["--study", tiny_sweep.study, "--tracking-uri", tiny_sweep.tracking_uri, "--storage", tiny_sweep.storage,
            "--out", tmp_path / "o", "--repeat", "2", "--repeat-top", "2", "--data-dir", tiny_sweep.data, "--quiet",
            "--no-figures"]
    out = compare_json(cli, capsys, *args)
    client = MlflowClient(tiny_sweep.tracking_uri)
    exp = client.get_experiment_by_name(tiny_sweep.study)
    repeats = client.search_runs([exp.experiment_id], "tags.`blocksweep.role` = 'repeat'")
    leaders = {r["trial"]: r for r in out["ranked"][:2]}
    assert {(int(r.data.tags["blocksweep.repeat_of"]), int(r.data.tags["blocksweep.repeat_seed"]))
            for r in repeats} == {(t, s) for t in leaders for s in (1, 2)}
    values = {}
    for run in repeats:
        tags, params = run.data.tags, run.data.params
        trial, seed = int(tags["blocksweep.repeat_of"]), int(tags["blocksweep.repeat_seed"])
        assert tags["mlflow.parentRunId"] == out["studies"][0]["parent_run_id"] and "blocksweep.trial" not in tags
        assert params["train.seed"] == params["data.seed"] == str(seed)
        original = client.get_run(leaders[trial]["run_id"]).data.params
        assert params["train.learning_rate"] == original["train.learning_rate"]
        assert params["model.block"] == original["model.block"] and tags["blocksweep.state"] == "completed"
        values[trial, seed] = run.data.metrics["objective"]
    rows = sorted(out["repeats"], key=lambda r: r["repeat_rank"])
    for row in rows:
        v = np.array([values[row["trial"], 1], values[row["trial"], 2]])
        assert row["mean"] == pytest.approx(v.mean())
        assert row["ci95"] == pytest.approx(stats.t.ppf(0.975, 1) * v.std(ddof=1) / math.sqrt(2))
    best, other = rows
    assert best["mean"] >= other["mean"] and best["p_vs_best"] is None
    pairs = ([values[other["trial"], s] for s in (1, 2)], [values[best["trial"], s] for s in (1, 2)])
    p = stats.ttest_rel(*pairs).pvalue
    assert (other["p_vs_best"] is None and math.isnan(p)) or other["p_vs_best"] == pytest.approx(p)
    assert sum(len(out[k]) for k in ("ranked", "no_value", "pruned", "failed", "running")) == 4  # not trials
    compare_json(cli, capsys, *args)  # the same command again reuses the completed repeats
    assert len(client.search_runs([exp.experiment_id], "tags.`blocksweep.role` = 'repeat'")) == 4

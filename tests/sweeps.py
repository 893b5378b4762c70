"""Helpers that read a sweep back from MLflow and Optuna, for the sweep tests."""

from __future__ import annotations

from mlflow.tracking import MlflowClient


def sweep_runs(tracking_uri: str, study: str):
    """(client, parents, children) of a study's experiment."""
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(study)
    assert exp is not None, f"no experiment {study!r}"
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    parents = [r for r in runs if r.data.tags.get("blocksweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("blocksweep.role") == "trial"]
    return client, parents, children


def optuna_study(study: str, storage: str = "sqlite:///mlruns/optuna.db"):
    import optuna

    return optuna.load_study(study_name=study, storage=storage)

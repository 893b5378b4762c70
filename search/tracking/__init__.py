"""Tracking: everything Blocksweep records, and where. The only package that imports mlflow.

    tracker.py  MLflow: experiments, the sweep's one parent run, child runs from any
                process, mirrored states, reading back, the model registry
    store.py    the local store `mlruns/` (default URLs, cache folders, file locks)
    urls.py     database URLs shared by MLflow and Optuna: kind, password redaction,
                cross-process locks
"""

import re

RUN_ID = re.compile(r"^[0-9a-f]{32}$")  # what MLflow's run ids look like (32 hex digits)

# Importing the package is light (store.py and urls.py never import mlflow): the tracker's
# names load MLflow on first use (PEP 562), so `blocksweep ui` and the data cache do not.
_TRACKER = ("PARENT_TAG", "RunLog", "RunRecord", "StudyRecord", "Tracker", "current_uri",
            "default_tracking_uri", "environment_tags", "fetch_run_files")
__all__ = ["RUN_ID", *_TRACKER]


def __getattr__(name: str):
    if name in _TRACKER:
        from search.tracking import tracker

        return getattr(tracker, name)
    raise AttributeError(f"module 'search.tracking' has no attribute {name!r}")

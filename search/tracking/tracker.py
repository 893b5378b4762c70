"""MLflow tracking: experiments, the sweep's parent run, child runs, reading back.

Layout, correct by construction:

* `blocksweep train` logs one run into the experiment `<space name>-train`.
* A sweep has one experiment per study (named after the study) holding exactly one parent
  run (tag ``blocksweep.role=parent``), and one child run per trial (``mlflow.parentRunId``
  set, ``blocksweep.role=trial``), created by whichever process runs that trial.
* The parent is found, never duplicated: creating the experiment is atomic in MLflow
  (names are unique), so the process that creates it creates the parent and records the
  parent's id as an experiment tag; everyone else reads that tag. Resuming a sweep finds
  the same tag and reuses the same parent run.
* States are mirrored: completed -> FINISHED, pruned -> KILLED, failed -> FAILED, each with
  a ``blocksweep.state`` tag and, where there is one, ``blocksweep.reason``.

MLflow's own conventions, so its UI shows what it shows for any training run: experiments
carry `mlflow.experimentKind = custom_model_development` (MLflow's mark of a model-training
experiment; the 3.17 UI picks its first view by its own switch instead, see
search/services/ui.py); every run carries MLflow's standard tags
(user, source name and type, git commit: `run_context_tags`); trained runs log their data
split as dataset inputs named CIFAR-10 with digests and train/validation/test contexts
(`dataset_inputs`), and, when asked, system metrics through MLflow's own monitor
(`RunLog.system_metrics`).

Everything goes through `MlflowClient` with explicit run ids (no global active run), so
children can be logged from any thread or process. Each epoch is one `log_batch` call.

A kept model is an MLflow model named `model` of its run (MLflow 3's logged model, with a
signature and pinned requirements; its layout is in pyfunc_model.py), so MLflow's own
`mlflow.register_model(f"runs:/{run_id}/model", name)`, the UI's "Register model" and
`mlflow models serve` work on any kept run. MLflow 3 resolves `runs:/<run>/model` to the
logged model of that name whose source run is `<run>`, searched in the run's experiment
(mlflow/tracking/_model_registry/fluent.py: `register_model`).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import io
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional
from urllib.parse import urlparse

import mlflow
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_GIT_COMMIT

from search.errors import UsageError, first_line
from search.progress import quiet_logger
from search.tracking import store, urls
from search.tracking.store import default_tracking_uri
from search.version import __version__

# MLflow announces every schema migration of a new SQLite store at INFO; keep the
# terminal for our own progress display.
logging.getLogger("mlflow").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)
# Artifact downloads (compare, export) draw a progress bar per file; ours are small files.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# With a tracking server, MLflow prints "View run ... at: URL" to stdout whenever a run ends;
# stdout carries our summary line or JSON (and a worker's JSON for `run --workers`).
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

PARENT_TAG = "blocksweep.parent_run_id"  # experiment tag: the sweep's one parent run
# The experiment tag that says what kind of work an experiment holds in MLflow 3; its UI code
# names the values (enum ExperimentKind: genai_development, custom_model_development, ...);
# MLflow's Python package has no constant for it. Model training is the second.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
DATASET_NAME = "CIFAR-10"
SPLITS = (("train", "x_train", "y_train"), ("validation", "x_val", "y_val"), ("test", "x_test", "y_test"))
MODEL = "model"  # a kept model's name: runs:/<run id>/model
CLASSIFIER = "data/classifier"  # in a kept model: model.keras and classifier.json
LEGACY_MODEL = "model/model.keras"  # a kept model before models were MLflow models: a run's plain file
STATE_TO_STATUS = {"completed": "FINISHED", "pruned": "KILLED", "failed": "FAILED", "running": "RUNNING"}
MAX_PARAM_VALUE = 6000  # MLflow's limit on a parameter value's length
BATCH_LIMIT = 100  # MLflow's limit on params per log_batch (metrics: 1000)
SEARCH_PAGE = 50_000  # MLflow's SQL store returns at most 50,000 runs per search page


# --------------------------------------------------------------------------- where


def _local_store(uri: str) -> Optional[Path]:
    """The folder holding a local SQLite database (artifacts go beside it); None for servers."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        db = uri.split("sqlite:///", 1)[-1]
        return Path(db).resolve().parent if db and db != ":memory:" else None
    if parsed.scheme in ("", "file"):
        return Path(parsed.path or uri).resolve()
    return None


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment_tags(family: str, backend: str, device: str) -> dict[str, str]:
    return {"blocksweep.model_family": family, "blocksweep.backend": backend,
            "blocksweep.device": device, "blocksweep.version": __version__,
            # which process ran a run: with many workers on many machines, where to look
            "blocksweep.worker": f"{socket.gethostname()}:{os.getpid()}"}


@functools.cache
def run_context_tags() -> dict[str, str]:
    """MLflow's standard tags for every run of this process: mlflow.user,
    mlflow.source.name and .type, and mlflow.source.git.commit (and branch), as
    `mlflow.start_run` resolves them, through MLflow's run-context registry (its plugins
    included). Our runs are made by `MlflowClient.create_run`, which sets none of them.
    MLflow reads the commit from the entry point's checkout; an installed `blocksweep`
    script lives outside one, so the commit of this package's checkout fills in."""
    from mlflow.tracking.context.registry import resolve_tags

    tags = dict(resolve_tags())
    if MLFLOW_GIT_COMMIT not in tags:
        commit = _git_commit()
        if commit:
            tags[MLFLOW_GIT_COMMIT] = commit
    return tags


_INPUTS: dict[int, tuple] = {}  # id(splits) -> (weak reference, dataset inputs)


def dataset_inputs(splits) -> list[DatasetInput]:
    """A data split as MLflow dataset inputs, one per part: named after the data (CIFAR-10,
    or an image folder's name), its source the folder the images were read from, the context tag (`mlflow.data.context`) train,
    validation or test, and its digest the first 8 hex digits (as long as MLflow's own)
    of the SHA-256 of that part's images and labels as the model saw them (after the class
    filter, subsets and normalisation). Hashing the full training split takes about a
    second, so the inputs are kept per Splits object: a sweep hands the same one to every
    trial. `splits` is a `search.data.Splits` (x_train, y_train, ..., source). A streamed
    folder's parts (too large for memory) are digested from their file lists instead."""
    import mlflow.data

    entry = _INPUTS.get(id(splits))
    if entry is not None and entry[0]() is splits:
        return entry[1]
    source = Path(splits.source).resolve().as_uri() if splits.source else ""
    inputs = []
    for context, x, y in SPLITS:
        features, targets = getattr(splits, x), getattr(splits, y)
        if not len(features):  # no validation split (airbench's benchmark mode, data.val_size 0)
            continue
        with warnings.catch_warnings():  # MLflow registers two local-file sources and says so
            warnings.simplefilter("ignore", UserWarning)
            if hasattr(features, "files"):  # streamed: the digest of the file list, not of arrays
                data = _streamed_dataset(features, targets, source, getattr(splits, "name", DATASET_NAME))
            else:
                data = mlflow.data.from_numpy(features, source=source, targets=targets,
                                              name=getattr(splits, "name", DATASET_NAME),
                                              digest=store.digest_arrays([features, targets])[:8])
        inputs.append(DatasetInput(Dataset(**data.to_dict()), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    _INPUTS.clear()  # one split at a time is what sweeps use; keep memory flat
    _INPUTS[id(splits)] = (weakref.ref(splits), inputs)
    return inputs


def _streamed_dataset(images, labels, source: str, name: str):
    """A streamed part (files decoded batch by batch) as an MLflow dataset: MLflow's
    `MetaDataset` (name, source, digest, no arrays), its digest the SHA-256 of the file
    list, image size and constants (`StreamedImages.digest`) and of the labels."""
    import hashlib

    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    digest = hashlib.sha256((images.digest() + store.digest_arrays([labels])).encode()).hexdigest()[:8]
    return MetaDataset(source=LocalArtifactDatasetSource(source), name=name, digest=digest)


def current_uri() -> str:
    """The store this process logs to: the one a `Tracker` set, else the default."""
    return mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else default_tracking_uri()


def fetch_run_files(run_id: str, paths: Iterable[str], dst: str | Path, uri: Optional[str] = None,
                    what: str = "run") -> dict[str, Optional[Path]]:
    """Download artifacts of a run (e.g. `model/model.keras`, `preprocessing.json`) into
    `dst`: {artifact path: local path, or None when the run has no such artifact}. A run
    that does not exist is a UsageError naming `what` (the flag or key that gave the id)."""
    uri = uri or current_uri()
    client = MlflowClient(tracking_uri=uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise UsageError(f"{what} {run_id}: no such MLflow run in {uri}") from None
    except Exception as err:  # unreachable server, bad database file
        raise UsageError(f"{what} {run_id}: cannot read the MLflow store {uri} ({err.__class__.__name__})") from None
    found: dict[str, Optional[Path]] = {}
    for path in paths:
        try:
            found[path] = Path(client.download_artifacts(run_id, path, str(dst)))
        except (MlflowException, OSError):
            found[path] = None
    return found


def logged_models(client: MlflowClient, exp_id: str, run_id: str) -> list:
    """A run's (undeleted) logged models named `model`: its kept model, or nothing."""
    query = f"name = '{MODEL}' AND source_run_id = '{run_id}'"
    found, token = [], None
    while True:
        page = client.search_logged_models([exp_id], filter_string=query, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def download_kept(client: MlflowClient, run, dst: str | Path) -> Optional[Path]:
    """The kept model's data/classifier folder (model.keras, classifier.json) of an MLflow
    run, downloaded into `dst`; None when the run has no MLflow model.

    Read from the logged model's own artifact location: MLflow 3.17.2 resolves
    `runs:/<run>/model/...` through a client of the process's global tracking URI
    (mlflow/store/artifact/models_artifact_repo.py: `_get_model_uri_infos`), not the
    client's, so a process reading another store would not find the model."""
    found = logged_models(client, run.info.experiment_id, run.info.run_id)
    if not found:
        return None
    Path(dst).mkdir(parents=True, exist_ok=True)
    uri = f"{found[0].artifact_location.rstrip('/')}/{CLASSIFIER}"
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=client.tracking_uri))


def fetch_kept_keras(run_id: str, dst: str | Path, uri: Optional[str] = None, what: str = "run") -> Optional[Path]:
    """The kept model.keras of a run (its MLflow model's, or the plain file of a run kept
    before models were MLflow models), downloaded into `dst`; None when it kept none."""
    uri = uri or current_uri()
    fetch_run_files(run_id, [], dst, uri, what)  # the run exists, or a UsageError naming `what`
    client = MlflowClient(tracking_uri=uri)
    folder = download_kept(client, client.get_run(run_id), Path(dst) / "kept")
    if folder is not None:
        return folder / "model.keras"
    return fetch_run_files(run_id, [LEGACY_MODEL], dst, uri, what)[LEGACY_MODEL]


# --------------------------------------------------------------------------- one run


class RunLog:
    """Logging into one existing MLflow run."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client = client
        self.run_id = run_id

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), BATCH_LIMIT):
            self.client.log_batch(self.run_id, params=items[i:i + BATCH_LIMIT])

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def delete_tags(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.client.delete_tag(self.run_id, key)

    def log_epoch(self, epoch: int, metrics: dict[str, float], points: Iterable[tuple[int, float]] = ()) -> None:
        """One epoch's metrics (step = epoch) and the running-loss points (step = batch),
        in a single call."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items()]
        batch += [Metric("train_loss_window", float(v), now, step) for step, v in points]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_file(self, path: str | Path, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_splits(self, splits) -> None:
        """The data split the run trained on, as dataset inputs (`dataset_inputs`)."""
        self.client.log_inputs(self.run_id, datasets=dataset_inputs(splits))

    @contextlib.contextmanager
    def system_metrics(self, enabled: bool = True):
        """While the block runs, MLflow's own system-metrics monitor logs into this run:
        CPU and memory (psutil), disk and network, and per GPU its utilisation, memory and
        power (NVML, from nvidia-ml-py, where a GPU is present), as `system/*` metrics every
        $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL seconds (MLflow's default: 10)."""
        if not enabled:
            yield
            return
        # The monitor `mlflow.start_run(log_system_metrics=True)` starts; that switch needs
        # a fluent active run, which runs made by MlflowClient are not.
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(self.run_id, tracking_uri=self.client.tracking_uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()

    def log_classifier(self, model, info: dict, layers_file: str | Path) -> str:
        """Log `model` (raw pixels in, probabilities out) as this run's MLflow model `model`:
        a pyfunc (pyfunc_model.py) with `info` (label_names, input_shape, the metric it
        answers with) and `layers_file` (the module registering its custom layers) shipped
        inside it. Returns the logged model's id.

        The logged model is created in the run's experiment first: `Model.log` given only a
        run id would create it in the default experiment (it reads the active experiment),
        where `runs:/` does not look. Requirements are given, so MLflow does not load the
        model in a subprocess to infer them; no input example, so it does not load it again
        to validate one (together seconds per trial)."""
        import mlflow.pyfunc
        from mlflow.models import Model

        run = self.client.get_run(self.run_id)
        logged = self.client.create_logged_model(run.info.experiment_id, name=MODEL, source_run_id=self.run_id)
        mlflow.set_tracking_uri(self.client.tracking_uri)  # Model.log writes through the global URI
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "classifier"
            data.mkdir()
            model.save(data / "model.keras")
            (data / "classifier.json").write_text(json.dumps(info, indent=2))
            code = Path(tmp) / "code"
            code.mkdir()
            shutil.copy(Path(__file__).with_name("pyfunc_model.py"), code / "blocksweep_pyfunc.py")
            shutil.copy(layers_file, code / "blocksweep_layers.py")
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*input_example.*")  # none on purpose (above)
                Model.log(artifact_path=None, name=MODEL, flavor=mlflow.pyfunc, run_id=self.run_id,
                          model_id=logged.model_id, loader_module="blocksweep_pyfunc", data_path=str(data),
                          code_paths=[str(code / "blocksweep_pyfunc.py"), str(code / "blocksweep_layers.py")],
                          signature=_signature(info),
                          pip_requirements=requirements(pillow=bool(info.get("resize"))))
        return logged.model_id

    def finish(self, state: str, reason: str = "") -> None:
        tags = {"blocksweep.state": state}
        if reason:
            tags["blocksweep.reason"] = reason[:5000]
        self.set_tags(tags)
        self.client.set_terminated(self.run_id, STATE_TO_STATUS[state])


def _param_value(value: Any) -> str:
    text = str(list(value)) if isinstance(value, tuple) else str(value)
    return text if len(text) <= MAX_PARAM_VALUE else text[: MAX_PARAM_VALUE - 3] + "..."


def _signature(info: dict):
    """Images (n, h, w, 3) of float32 pixels 0..255 -> label, probability, one column per
    class. A model that resizes (classifier.json's `resize`) takes any height and width."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    shape = (-1, -1, info["input_shape"][-1]) if info.get("resize") else tuple(info["input_shape"])
    images = TensorSpec(np.dtype(np.float32), (-1, *shape))
    answer = [ColSpec("string", "label"), ColSpec("double", "probability")]
    return ModelSignature(Schema([images]), Schema(answer + [ColSpec("double", n) for n in info["label_names"]]))


def requirements(pillow: bool = False) -> list[str]:
    """What the model needs, pinned to what this process runs: MLflow, Keras and its backend,
    numpy and pandas (the pyfunc's answer), and Pillow where it resizes images."""
    import keras

    names = ("mlflow", "keras", keras.backend.backend(), "numpy", "pandas") + (("pillow",) * pillow)
    return [f"{name}=={_version(name)}" for name in names]


# --------------------------------------------------------------------------- read back


@dataclass(frozen=True)
class RunRecord:
    """One run as `compare` and `export` read it back: plain values, so no MLflow object
    leaves this module. `metrics` holds each metric's latest value (MLflow's summary)."""

    run_id: str
    experiment_id: str
    name: str
    status: str  # RUNNING, FINISHED, KILLED, FAILED
    start_time: int  # milliseconds since the epoch
    tags: dict
    params: dict
    metrics: dict

    @property
    def role(self) -> str:
        return self.tags.get("blocksweep.role", "")

    @property
    def parent_id(self) -> str:
        return self.tags.get("mlflow.parentRunId", "")


@dataclass(frozen=True)
class StudyRecord:
    """A sweep as found in the store: its experiment and its one parent run."""

    study: str
    experiment_id: str
    parent: RunRecord


def _record(run) -> RunRecord:
    return RunRecord(run_id=run.info.run_id, experiment_id=run.info.experiment_id,
                     name=run.info.run_name or "", status=run.info.status,
                     start_time=run.info.start_time or 0, tags=dict(run.data.tags),
                     params=dict(run.data.params), metrics=dict(run.data.metrics))


# --------------------------------------------------------------------------- the tracker


class Tracker:
    """An MLflow store: experiments, parent runs, child runs."""

    def __init__(self, uri: Optional[str] = None, create: bool = True):
        """`create=False` for the commands that only read (compare, export, evaluate): a
        local database that does not exist is refused instead of created empty, so a
        command run in the wrong folder leaves no mlruns/ behind."""
        self.uri = uri or default_tracking_uri()
        urls.check_driver(self.uri, "--tracking-uri")
        urls.check_reachable(self.uri, "--tracking-uri", "MLflow store")  # seconds, not MLflow's minutes of retries
        db = urls.sqlite_path(self.uri)
        if not create and db is not None and not db.exists():
            raise UsageError(f"no sweeps in {self.uri}: no such MLflow database; run `blocksweep run SPACE.yaml` "
                             "first, or point --tracking-uri at the store")
        self.local_store = _local_store(self.uri)
        if self.local_store is not None:
            try:
                self.local_store.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise UsageError(f"--tracking-uri {self.uri}: cannot create {self.local_store} "
                                 f"({err.strerror})") from None
        mlflow.set_tracking_uri(self.uri)
        try:
            # The client opens (and on first use creates or migrates) a database store;
            # workers opening a new store together would all migrate it (see urls.py).
            with urls.exclusive(self.uri, "mlflow schema"):
                self.client = MlflowClient(tracking_uri=self.uri)
        except Exception as err:  # unreachable server, missing database, bad file
            raise self._store_error(err) from None

    # experiments ---------------------------------------------------------------

    def _artifact_location(self, name: str) -> Optional[str]:
        if self.local_store is None:
            return None  # a server decides (and proxies) where artifacts go
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        return (self.local_store / "artifacts" / safe).as_uri()

    def experiment(self, name: str, tags: Optional[dict] = None) -> tuple[str, bool]:
        """(experiment id, created by this call). Creation is atomic: of several processes
        racing to create the same name, exactly one gets created=True."""
        try:
            exp_id = self.client.create_experiment(name, artifact_location=self._artifact_location(name),
                                                   tags={**(tags or {}), EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            return exp_id, True
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS" and "already exists" not in str(err).lower() \
                    and "unique constraint" not in str(err).lower():
                raise self._store_error(err) from None
        except Exception as err:  # unreachable server, bad database file
            raise self._store_error(err) from None
        exp = self.client.get_experiment_by_name(name)
        if exp is None:  # lost a race with a deletion; rare enough to report plainly
            raise UsageError(f"MLflow experiment {name!r} vanished while being opened; try again")
        if exp.lifecycle_stage == "deleted":
            raise UsageError(f"MLflow experiment {name!r} is deleted; restore it "
                             f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or pick another name")
        if EXPERIMENT_KIND_TAG not in exp.tags:  # made before Blocksweep set it, or by hand
            self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id, False

    def _store_error(self, err: Exception) -> UsageError:
        return UsageError(f"--tracking-uri {urls.redact(self.uri)}: cannot use the MLflow store ({first_line(err)})")

    # single runs ----------------------------------------------------------------

    def start_run(self, experiment_id: str, name: str, tags: dict[str, Any],
                  parent_run_id: Optional[str] = None) -> RunLog:
        tags = {**run_context_tags(), **tags}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(experiment_id, run_name=name, tags={k: str(v) for k, v in tags.items()})
        return RunLog(self.client, run.info.run_id)

    def run(self, run_id: str) -> RunLog:
        return RunLog(self.client, run_id)

    # sweeps ---------------------------------------------------------------------

    def sweep_parent(self, study: str, tags: dict[str, Any], space_text: str,
                     wait_seconds: float = 30.0) -> tuple[str, str, bool]:
        """(experiment id, parent run id, created now) for a study's sweep: created once
        by the process that creates the experiment, found by every other process and by
        every resumed run. The parent is set RUNNING again on resume."""
        exp_id, created = self.experiment(study, tags={"blocksweep.study": study})
        if created:
            parent = self._create_parent(exp_id, study, tags, space_text)
            return exp_id, parent, True
        deadline = time.monotonic() + wait_seconds
        while True:
            exp = self.client.get_experiment(exp_id)
            parent = exp.tags.get(PARENT_TAG)
            if parent:
                self.client.update_run(parent, status="RUNNING")
                self.run(parent).set_tags({"blocksweep.resumed": "true"})
                return exp_id, parent, False
            # The creator is between creating the experiment and tagging it, or the
            # experiment predates any sweep (or its creator died): adopt or create.
            found = self.client.search_runs([exp_id], "tags.`blocksweep.role` = 'parent'",
                                            order_by=["attributes.start_time ASC"], max_results=1)
            if found:
                parent = found[0].info.run_id
                self.client.set_experiment_tag(exp_id, PARENT_TAG, parent)
                continue
            if time.monotonic() > deadline:
                parent = self._create_parent(exp_id, study, tags, space_text)
                return exp_id, parent, True
            time.sleep(0.5)

    def existing_parent_tags(self, study: str) -> dict:
        """The tags of a study's parent run when the sweep exists already, else {}.
        The first call of a sweep into the store: an unreachable store is one line."""
        try:
            exp = self.client.get_experiment_by_name(study)
            parent = exp.tags.get(PARENT_TAG) if exp is not None else None
            return dict(self.client.get_run(parent).data.tags) if parent else {}
        except Exception as err:  # unreachable server, bad database file
            raise self._store_error(err) from None

    def _create_parent(self, exp_id: str, study: str, tags: dict[str, Any], space_text: str) -> str:
        run = self.start_run(exp_id, f"sweep-{study}", {**tags, "blocksweep.role": "parent",
                                                        "blocksweep.study": study})
        run.log_text(space_text, "space.yaml")
        self.client.set_experiment_tag(exp_id, PARENT_TAG, run.run_id)
        return run.run_id

    def start_trial(self, exp_id: str, parent_run_id: str, study: str, number: int,
                    tags: dict[str, Any]) -> RunLog:
        return self.start_run(exp_id, f"trial-{number}", {
            **tags, "blocksweep.role": "trial", "blocksweep.study": study,
            "blocksweep.trial": number}, parent_run_id=parent_run_id)

    def children(self, exp_id: str, parent_run_id: str, extra_filter: str = "") -> list:
        """All child runs of a parent (every page)."""
        query = f"tags.`mlflow.parentRunId` = '{parent_run_id}'" + (f" and {extra_filter}" if extra_filter else "")
        runs, token = [], None
        while True:
            page = self.client.search_runs([exp_id], query, run_view_type=ViewType.ACTIVE_ONLY,
                                           max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def mark_interrupted(self, exp_id: str, parent_run_id: str, trial_key: str, reason: str) -> int:
        """Mirror a trial whose worker died: its child run (still RUNNING, or FINISHED by a
        worker killed after logging) becomes FAILED with the reason. Returns runs changed."""
        changed = 0
        for run in self.children(exp_id, parent_run_id, f"tags.`blocksweep.trial_key` = '{trial_key}'"):
            if run.data.tags.get("blocksweep.state") == "failed":
                continue
            self.run(run.info.run_id).finish("failed", reason)
            changed += 1
        return changed

    def drop_worse_models(self, exp_id: str, parent_run_id: str, best_run_id: str, objective: float,
                          goal: str) -> int:
        """With --keep-models best, a new best trial's model replaces the earlier ones: the
        `model/` artifacts of kept trials with a worse objective are deleted and their tag
        says why. Several workers may do this at once; each only deletes what is worse
        than its own trial, so the best model always survives. Returns models dropped."""
        dropped = 0
        for run in self.children(exp_id, parent_run_id, "tags.`blocksweep.model` = 'kept'"):
            value = run.data.metrics.get("objective")
            if run.info.run_id == best_run_id or value is None:
                continue
            if not (value < objective if goal == "maximize" else value > objective):
                continue
            try:
                self._drop_model(run)
                note = f"dropped: run {best_run_id} is better (--keep-models best)"
            except Exception as err:  # a store that cannot delete: say so, keep going
                note = f"not dropped ({err.__class__.__name__}); run {best_run_id} is better"
            self.run(run.info.run_id).set_tags({"blocksweep.model": note})
            dropped += 1
        return dropped

    def _drop_model(self, run) -> None:
        """Delete a run's kept model: the logged model (marked deleted, so `runs:/` no longer
        finds it) and its files; a model kept before models were MLflow models is the run's
        `model/` folder."""
        # get_artifact_repository: MLflow's public way to reach an artifact URI's store; the
        # client has no call that deletes artifacts.
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        for logged in logged_models(self.client, run.info.experiment_id, run.info.run_id):
            self.client.delete_logged_model(logged.model_id)
            get_artifact_repository(logged.artifact_location).delete_artifacts()
        if any(a.path == MODEL for a in self.client.list_artifacts(run.info.run_id)):
            get_artifact_repository(run.info.artifact_uri).delete_artifacts(MODEL)

    def finish_parent(self, parent_run_id: str, outcome: str = "finished") -> None:
        """Close a sweep's parent: "finished" (the study's budget done), "failed" (stopped
        for its failures) or "killed" (stopped before its budget: Ctrl-C, SIGTERM, a
        timeout, retries still waiting)."""
        status = {"finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}[outcome]
        self.client.set_terminated(parent_run_id, status)

    def reopen_parent(self, parent_run_id: str) -> None:
        """The parent RUNNING again (a trial starts under it)."""
        self.client.update_run(parent_run_id, status="RUNNING")

    # reading back (compare, export) -----------------------------------------------
    # One paged `search_runs` per experiment with no filter: a sweep's experiment holds
    # only its parent and children, and a tag filter costs a join per page
    # (bench/compare_runs.py measures both). Metric histories cost a query per run, so
    # callers fetch only the few they plot.

    def studies(self, names: Optional[list[str]] = None, experiment: Optional[str] = None) -> list[StudyRecord]:
        """The sweeps to read: the studies named (each one an experiment of that name with a
        parent run), every sweep in `experiment`, or with neither every sweep in the store.
        An unknown name raises UsageError naming the studies there are."""
        try:
            experiments = self.client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=SEARCH_PAGE)
        except Exception as err:  # unreachable server, not an MLflow database
            raise self._store_error(err) from None
        sweeps = {e.name: e for e in experiments if e.tags.get(PARENT_TAG)}
        found: list[StudyRecord] = []
        if experiment is not None:
            exp = next((e for e in experiments if e.name == experiment), None)
            if exp is None:
                raise UsageError(f"--experiment {experiment}: no such MLflow experiment in {self.uri}")
            parents = self._parents(exp.experiment_id)
            if not parents:
                raise UsageError(f"--experiment {experiment}: holds no sweep (no parent run)")
            found += [StudyRecord(p.tags.get("blocksweep.study", experiment), exp.experiment_id, p) for p in parents]
        for name in names if names else ([] if experiment is not None else sorted(sweeps)):
            exp = sweeps.get(name)
            parents = self._parents(exp.experiment_id) if exp is not None else []
            if not parents:
                known = ", ".join(sorted(sweeps)) or "none"
                raise UsageError(f"--study {name}: no such study in {self.uri} (studies here: {known})")
            parent = next((p for p in parents if p.run_id == exp.tags[PARENT_TAG]), parents[0])
            found.append(StudyRecord(name, exp.experiment_id, parent))
        if not found:
            raise UsageError(f"no sweeps in {self.uri}: run `blocksweep run SPACE.yaml` first")
        return found

    def _parents(self, exp_id: str) -> list[RunRecord]:
        runs = self.client.search_runs([exp_id], "tags.`blocksweep.role` = 'parent'",
                                       run_view_type=ViewType.ACTIVE_ONLY, max_results=100,
                                       order_by=["attributes.start_time ASC"])
        return [_record(r) for r in runs]

    def experiment_runs(self, exp_id: str) -> list[RunRecord]:
        """Every active run of an experiment, all pages.

        The SQL store builds an ORM object per tag, parameter and metric of every run
        (~80 per trial, 400k for 5,000 trials); Python's cyclic garbage collector rescans
        that growing heap again and again, so it is paused for the read: 5,000 runs took
        25.7 s with it and 9.3 s without (bench/compare_runs.py, 2-core CPU)."""
        runs, token = [], None
        collecting = gc.isenabled()
        gc.disable()
        try:
            while True:
                page = self.client.search_runs([exp_id], "", run_view_type=ViewType.ACTIVE_ONLY,
                                               max_results=SEARCH_PAGE, page_token=token)
                runs.extend(_record(r) for r in page)
                token = page.token
                if not token:
                    return runs
        finally:
            if collecting:
                gc.enable()

    def get_run(self, run_id: str) -> RunRecord:
        try:
            return _record(self.client.get_run(run_id))
        except MlflowException:
            raise UsageError(f"--run {run_id}: no such run in {self.uri}") from None

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) of one metric of one run, by step."""
        return sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, key))

    def artifact_paths(self, run_id: str, path: Optional[str] = None) -> list[str]:
        return [a.path for a in self.client.list_artifacts(run_id, path)]

    def download(self, run_id: str, path: str, dst: str | Path) -> Path:
        """One artifact (file or folder) of a run, downloaded into `dst`; UsageError if absent."""
        Path(dst).mkdir(parents=True, exist_ok=True)
        try:
            return Path(self.client.download_artifacts(run_id, path, str(dst)))
        except (MlflowException, OSError) as err:
            raise UsageError(f"run {run_id}: cannot read its artifact {path} ({first_line(err, 200)})") from None

    def kept_model(self, run: RunRecord) -> Optional[str]:
        """What a run kept: "mlflow" (an MLflow model `model`), "file" (a plain `model.keras`,
        from before models were MLflow models) or None."""
        if logged_models(self.client, run.experiment_id, run.run_id):
            return "mlflow"
        return "file" if LEGACY_MODEL in self.artifact_paths(run.run_id, MODEL) else None

    def download_kept(self, run: RunRecord, dst: str | Path) -> Path:
        """The run's kept MLflow model's data/classifier folder, downloaded into `dst`."""
        folder = download_kept(self.client, self.client.get_run(run.run_id), dst)
        if folder is None:
            raise UsageError(f"run {run.run_id}: it kept no MLflow model")
        return folder

    def artifact_text(self, run_id: str, path: str) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            return self.download(run_id, path, tmp).read_text()

    # the model registry ------------------------------------------------------------

    def register(self, run_id: str, name: str, alias: str = "champion") -> dict:
        """Register the run's MLflow model as a new version of `name` (MLflow's own
        `register_model` on `runs:/<run id>/model`, as a user would) and point `alias` at it.
        Works on the embedded SQLite store."""
        uri = f"runs:/{run_id}/{MODEL}"
        mlflow.set_tracking_uri(self.uri)  # register_model reads the global URI (and the registry's beside it)
        try:
            # register_model prints its progress on stderr and warns that it registers the
            # logged model (MLflow 3's way, above) rather than run artifacts: our commands print one line.
            with contextlib.redirect_stderr(io.StringIO()), quiet_logger("mlflow.tracking._model_registry.fluent"):
                version = mlflow.register_model(uri, name, await_registration_for=60)
            self.client.set_registered_model_alias(name, alias, version.version)
        except MlflowException as err:
            raise UsageError(f"--register {name}: the model registry refused it ({first_line(err)})") from None
        return {"name": name, "version": str(version.version), "alias": alias, "model_uri": f"models:/{name}@{alias}",
                "source": uri}



def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"

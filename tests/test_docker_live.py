"""The containers, built and run for real: docker/compose.yaml with docker/compose.local.yaml
(images built on a base made from Debian's packages, PostgreSQL from Debian's package),
every container on the host's network, so all traffic stays on 127.0.0.1.

Two worker containers sweep a tiny space on tiny data through the PostgreSQL and MLflow
server containers; MLflow and Optuna hold exactly the trials asked for, one parent and one
child per trial. `docker stop` on a worker mid-trial (SIGINT, the compose file's
stop_signal) fails its trial and enqueues it again; the other worker runs the retry and
nothing is duplicated. `docker compose down` leaves the named volumes with the data.

Skipped, with one line, where no Docker engine answers or no Compose is installed (.ci/run
starts dockerd). The images stay (blocksweep-base:bookworm, blocksweep:cpu,
blocksweep-postgres:local), so a rerun builds only what changed; the containers and
volumes of the test's own compose project are always removed.

Cost on the shared 2-core machine: ~2.5 min with the images built, ~7.5 min from nothing
(base ~1 min, images ~4 min). So under CI (CI set) it runs only when its inputs changed:
docker/, .dockerignore and the packaging (setup.cfg, pyproject.toml), whose digest a
passing run writes to docker/tested-inputs.sha256 (commit it with the change).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_SPACE, synthetic_cifar
from tests.services import free_port
from tests.sweeps import sweep_runs, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

DOCKER = REPO / "docker"
BASE = "blocksweep-base:bookworm"  # what docker/local-base.sh tags, and compose.local.yaml builds on
TRIALS = 6
EPOCHS = 6  # a window to stop a worker in: it is stopped with at least two epochs to go
FINISHED = ("COMPLETE", "PRUNED")
RECORD = DOCKER / "tested-inputs.sha256"
INPUTS = ("docker", ".dockerignore", "setup.cfg", "pyproject.toml")  # what makes the images and the stack
SPACE = TINY_SPACE.replace("epochs: 2", f"epochs: {EPOCHS}").replace("train_size: 300", "train_size: 800")


def inputs_digest() -> str:
    """sha256 over the inputs' paths and bytes (not docker/.env, a developer's own, nor the docs)."""
    digest = hashlib.sha256()
    for name in INPUTS:
        path = REPO / name
        for item in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if item.is_file() and item not in (RECORD, DOCKER / ".env") and item.suffix != ".md" \
                    and "__pycache__" not in item.parts:
                digest.update(f"{item.relative_to(REPO)}\0".encode() + item.read_bytes() + b"\0")
    return digest.hexdigest()


def recorded() -> str:
    return RECORD.read_text().split()[0] if RECORD.exists() else ""


def compose_command() -> list[str]:
    """The Compose that is installed (the plugin, or Debian's docker-compose 1.29), or skip."""
    if shutil.which("docker") is None:
        pytest.skip("docker is not installed (apt-get install docker.io docker-compose; .ci/run starts dockerd)")
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                          timeout=30)
    if info.returncode != 0:
        pytest.skip(f"no Docker engine answers (.ci/run starts dockerd): {info.stderr.strip()[:120]}")
    if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("Docker Compose is not installed (apt-get install docker-compose)")


def base_image() -> float:
    """Build blocksweep-base:bookworm with docker/local-base.sh unless the one there was made
    by this version of the script; the seconds it took (0 when cached)."""
    script = DOCKER / "local-base.sh"
    want = hashlib.sha256(script.read_bytes()).hexdigest()[:16]
    have = subprocess.run(["docker", "image", "inspect", "-f", '{{index .Config.Labels "org.blocksweep.local-base"}}',
                           BASE], capture_output=True, text=True).stdout.strip()
    if have == want:
        return 0.0
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed (apt-get install debootstrap), and docker/local-base.sh needs it")
    start = time.monotonic()
    built = subprocess.run(["bash", str(script), BASE], capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr[-3000:]
    return time.monotonic() - start


def readable(path: Path) -> None:
    """The containers run as uid 10001: the mounted data and space must be world-readable."""
    for item in [path, *path.rglob("*")]:
        item.chmod(item.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if item.is_dir() else 0))


class Stack:
    """One compose project of the test (its own name, so its containers and volumes are
    its own), run with docker/compose.yaml, docker/compose.local.yaml and an override."""

    def __init__(self, compose: list[str], root: Path, settings: dict[str, str], override: str):
        self.name = settings["COMPOSE_PROJECT_NAME"]
        env_file, override_file = root / "stack.env", root / "compose.test.yaml"
        # An env file of its own: a developer's docker/.env is not read.
        env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        override_file.write_text(override)
        self.argv = [*compose, "--env-file", str(env_file), "-p", self.name, "-f", str(DOCKER / "compose.yaml"),
                     "-f", str(DOCKER / "compose.local.yaml"), "-f", str(override_file)]
        self.env = {**os.environ, **settings}
        self.log = root / "compose.log"

    def __call__(self, *args: str, timeout: float = 300) -> str:
        with open(self.log, "a") as log:
            log.write(f"$ {' '.join(args)}\n")
        done = subprocess.run([*self.argv, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        with open(self.log, "a") as log:
            log.write(done.stdout + done.stderr)
        assert done.returncode == 0, f"compose {' '.join(args)}: {done.stderr[-3000:]}"
        return done.stdout

    def containers(self, service: str) -> list[str]:
        return sorted(self("ps", "-q", service).split())

    def remove(self, failed: bool) -> None:
        """Containers, networks and volumes of this project, whatever state it is in (the
        containers' output goes to the log first, and is printed if the test failed)."""
        logs = subprocess.run([*self.argv, "logs", "--no-color", "--tail", "200"], env=self.env,
                              capture_output=True, text=True, timeout=120)
        with open(self.log, "a") as log:
            log.write(logs.stdout + logs.stderr)
        if failed:
            print(self.log.read_text()[-6000:])
        subprocess.run([*self.argv, "down", "-v", "--remove-orphans", "-t", "5"], env=self.env,
                       capture_output=True, timeout=180)
        label = f"label=com.docker.compose.project={self.name}"
        for kind in ("container", "volume"):
            left = subprocess.run(["docker", kind, "ls", "-aq" if kind == "container" else "-q", "--filter", label],
                                  capture_output=True, text=True).stdout.split()
            if left:
                subprocess.run(["docker", kind, "rm", "-f", *left], capture_output=True, timeout=120)


def reachable(load):
    """load() once the database answers, else None."""
    import sqlalchemy.exc

    try:
        return load()
    except sqlalchemy.exc.OperationalError:
        return None


def state(container: str) -> dict:
    out = subprocess.run(["docker", "inspect", "-f", "{{json .State}}", container], capture_output=True, text=True)
    return json.loads(out.stdout)


def test_the_compose_stack_sweeps_survives_docker_stop_and_keeps_its_volumes(tmp_path):
    import optuna
    from mlflow.tracking import MlflowClient

    from search.data import write_batches

    digest = inputs_digest()
    if os.environ.get("CI") and recorded() == digest:
        pytest.skip(f"unchanged: {', '.join(INPUTS)} are as when this test last passed ({RECORD.name})")
    compose = compose_command()
    times = {"base": base_image()}

    data = tmp_path / "data"
    write_batches(data, *synthetic_cifar(1200, 200))
    space = tmp_path / "space"
    space.mkdir()
    (space / "docker-test.yaml").write_text(SPACE)
    readable(data)
    readable(space)

    password = uuid.uuid4().hex
    mlflow_port = pg_port = free_port()
    while pg_port == mlflow_port:
        pg_port = free_port()
    settings = {"COMPOSE_PROJECT_NAME": f"bs-docker-{uuid.uuid4().hex[:8]}", "POSTGRES_USER": "blocksweep",
                "POSTGRES_PASSWORD": password, "CIFAR_DIR": str(data), "SPACE": "docker-test.yaml",
                "STUDY": "docker", "STUDY_TRIALS": str(TRIALS), "WORKERS": "2", "GPU_WORKERS": "1",
                "MLFLOW_PORT": str(mlflow_port), "POSTGRES_PORT": str(pg_port)}
    # The only change to the documented stack: the workers see the tiny space beside the shipped ones.
    override = ("services:\n  worker:\n    volumes:\n"
                f"      - {space / 'docker-test.yaml'}:/opt/blocksweep/spaces/docker-test.yaml:ro\n")
    stack = Stack(compose, tmp_path, settings, override)
    storage = f"postgresql://blocksweep:{password}@127.0.0.1:{pg_port}/optuna"
    tracking = f"http://127.0.0.1:{mlflow_port}"
    client = MlflowClient(tracking)

    def study():
        return optuna.load_study(study_name="docker", storage=storage)

    passed = False
    try:
        start = time.monotonic()
        stack("build", "postgres", "mlflow", "worker", timeout=1200)
        times["images"] = time.monotonic() - start

        start = time.monotonic()
        stack("up", "-d", timeout=400)  # returns once PostgreSQL and the MLflow server are healthy
        workers = stack.containers("worker")
        assert len(workers) == 2, workers

        def both_mid_training():
            """Two trials RUNNING, each past its first epoch with two or more to go."""
            exp = client.get_experiment_by_name("docker")
            runs = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING' and "
                                                           "tags.`blocksweep.role` = 'trial'") if exp else []
            epochs = [len(client.get_metric_history(r.info.run_id, "val_accuracy")) for r in runs]
            return len(runs) == 2 and all(1 <= e <= EPOCHS - 2 for e in epochs)

        wait_for(both_mid_training, 400, "two trials mid-training")
        times["first trials"] = time.monotonic() - start
        stopped, survivor = workers
        subprocess.run(["docker", "stop", stopped], check=True, capture_output=True, timeout=120)
        wait_for(lambda: state(survivor)["Status"] == "exited", 600, "the other worker to finish the study")
        times["sweep"] = time.monotonic() - start

        # 130: the worker handled the stop signal as Ctrl-C; 143 would be SIGTERM handled as
        # such; 137 would mean it was still running when docker killed it.
        assert state(stopped)["ExitCode"] in (130, 143), state(stopped)
        assert state(survivor)["ExitCode"] == 0, state(survivor)

        trials = study().trials
        assert len([t for t in trials if t.state.name in FINISHED]) == TRIALS
        [failed] = [t for t in trials if t.state.name == "FAIL"]  # the stopped worker's, and only it
        assert len(trials) == TRIALS + 1
        [retry] = [t for t in trials if t.user_attrs.get("retry_of") == failed.number]
        assert retry.state.name in FINISHED and retry.params == failed.params

        _, parents, children = sweep_runs(tracking, "docker")
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert sorted(int(c.data.tags["blocksweep.trial"]) for c in children) == [t.number for t in trials]
        assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
        by_trial = {int(c.data.tags["blocksweep.trial"]): c for c in children}
        interrupted = by_trial[failed.number]
        assert interrupted.info.status == "FAILED" and "interrupted" in interrupted.data.tags["blocksweep.reason"]
        # Failed by its own worker on the stop signal, not by the other one once its
        # heartbeats stopped (what a worker killed outright would leave).
        assert "heartbeat" not in study().user_attrs[f"interrupted_{failed.number}"]
        assert client.get_metric_history(interrupted.info.run_id, "val_accuracy")  # it was stopped mid-training
        for trial in trials:
            if trial.state.name in FINISHED:
                assert by_trial[trial.number].info.run_id == trial.user_attrs["mlflow_run_id"]
                assert by_trial[trial.number].info.status in ("FINISHED", "KILLED")

        start = time.monotonic()
        stack("down", timeout=180)
        times["down"] = time.monotonic() - start
        volumes = subprocess.run(["docker", "volume", "ls", "-q", "--filter",
                                  f"label=com.docker.compose.project={stack.name}"],
                                 capture_output=True, text=True).stdout.split()
        assert sorted(volumes) == [f"{stack.name}_mlartifacts", f"{stack.name}_pgdata"]
        # The artifacts: every trial's config.yaml, on the volume the server wrote them to.
        found = subprocess.run(["docker", "run", "--rm", "--network", "none", "-v",
                                f"{stack.name}_mlartifacts:/a:ro", BASE, "find", "/a", "-name", "config.yaml"],
                               capture_output=True, text=True, timeout=120)
        assert len(found.stdout.split()) == TRIALS + 1, found
        # The database: PostgreSQL started again on its volume has the same study.
        stack("up", "-d", "postgres", timeout=300)
        again = wait_for(lambda: reachable(study), 120, "PostgreSQL to start again on its volume")
        assert [(t.number, t.state.name) for t in again.trials] == [(t.number, t.state.name) for t in trials]
        stack("down", timeout=180)
        passed = True
        RECORD.write_text(f"{digest}  {' '.join(INPUTS)}: the inputs of the last passing tests/test_docker_live.py\n")
    finally:
        stack.remove(failed=not passed)
        print("docker test seconds:", {k: round(v, 1) for k, v in times.items()}, "log:", stack.log)

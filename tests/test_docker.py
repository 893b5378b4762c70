"""docker/: checked statically (tests/test_docker_live.py builds and runs it). The compose
files follow the rules of the Compose Specification that we rely on, in the subset that
Compose 1.x reads too; every path they and the Dockerfiles name exists; every `blocksweep`
command in them parses with the real command-line parser (a renamed flag breaks this
test); every container is on the host's network and the servers listen on 127.0.0.1 only;
compose.local.yaml changes only where the images come from; no credential is written in
any of these files."""

from __future__ import annotations

import configparser
import json
import re
import signal
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from search.cli import build_parser
from tests.conftest import REPO

DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
LOCAL = DOCKER / "compose.local.yaml"
DOCKERFILES = {"docker/Dockerfile": DOCKER / "Dockerfile", "docker/Dockerfile.gpu": DOCKER / "Dockerfile.gpu"}
POSTGRES_DOCKERFILE = DOCKER / "Dockerfile.postgres"
LOCAL_BASE = "blocksweep-base:bookworm"  # docker/local-base.sh's default tag
IMAGE_ROOT = "/opt/blocksweep"  # where the Dockerfiles put the repository's files
USER_DATA = {"/data"}  # bind mounts of the user's own data (CIFAR_DIR), absent from the repository

# The Compose Specification's top-level and service keys (compose-spec.json, 2025).
TOP_LEVEL_KEYS = {"version", "name", "include", "services", "networks", "volumes", "secrets", "configs", "models"}
SERVICE_KEYS = {
    "annotations", "attach", "blkio_config", "build", "cap_add", "cap_drop", "cgroup", "cgroup_parent", "command",
    "configs", "container_name", "cpu_count", "cpu_percent", "cpu_period", "cpu_quota", "cpu_rt_period",
    "cpu_rt_runtime", "cpu_shares", "cpus", "cpuset", "credential_spec", "depends_on", "deploy", "develop",
    "device_cgroup_rules", "devices", "dns", "dns_opt", "dns_search", "domainname", "entrypoint", "env_file",
    "environment", "expose", "extends", "external_links", "extra_hosts", "gpus", "group_add", "healthcheck",
    "hostname", "image", "init", "ipc", "isolation", "labels", "label_file", "links", "logging", "mac_address",
    "mem_limit", "mem_reservation", "mem_swappiness", "memswap_limit", "models", "network_mode", "networks",
    "oom_kill_disable", "oom_score_adj", "pid", "pids_limit", "platform", "ports", "post_start", "pre_stop",
    "privileged", "profiles", "provider", "pull_policy", "read_only", "restart", "runtime", "scale", "secrets",
    "security_opt", "shm_size", "stdin_open", "stop_grace_period", "stop_signal", "storage_opt", "sysctls", "tmpfs",
    "tty", "ulimits", "use_api_socket", "user", "userns_mode", "uts", "volumes", "volumes_from", "working_dir"}
DEPENDS_ON_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
RESTART_POLICIES = {"no", "always", "on-failure", "unless-stopped"}
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")  # project and service names
PROFILE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
VARIABLE = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def env_example() -> dict[str, str]:
    values = {}
    for line in (DOCKER / "env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"env.example: not KEY=VALUE: {line!r}"
            values[key.strip()] = value.strip()
    return values


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, ${VAR+alt}, applied to every string."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match):
        if match.group(0) == "$$":
            return "$"
        if match.group("plain"):
            return env.get(match.group("plain"), "")
        expr = match.group("braced")
        name, op, arg = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?(.*)$", expr, re.S).groups()
        have = env.get(name)
        if op in (":-", "-"):
            return have if (have if op == ":-" else have is not None) else arg
        if op in (":?", "?"):
            assert have, f"${{{name}}} is required ({arg}) and env.example does not set it"
            return have
        if op in (":+", "+"):
            return arg if (have if op == ":+" else have is not None) else ""
        return have or ""

    return VARIABLE.sub(one, value)


def variables(text: str) -> set[str]:
    names = set()
    for match in VARIABLE.finditer(text):
        if match.group("plain"):
            names.add(match.group("plain"))
        elif match.group("braced"):
            names.add(re.match(r"[A-Za-z_][A-Za-z0-9_]*", match.group("braced")).group(0))
    return names


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose(raw):
    """The compose file as Docker Compose sees it with docker/env.example as its .env."""
    return interpolate({k: v for k, v in raw.items() if not k.startswith("x-")}, env_example())


def services(compose):
    return compose["services"].items()


@pytest.fixture(scope="module")
def local():
    return yaml.safe_load(LOCAL.read_text())


def test_the_compose_files_use_only_keys_of_the_compose_specification(raw, local):
    for text in (raw, local):
        # `name:` is the one key Compose 1.x (Debian's docker-compose) refuses: COMPOSE_PROJECT_NAME instead.
        assert {k for k in text if not k.startswith("x-")} <= TOP_LEVEL_KEYS - {"name"}
        for name, service in text["services"].items():
            assert NAME.match(name), name
            unknown = {k for k in service if not k.startswith("x-")} - SERVICE_KEYS
            assert not unknown, f"services.{name}: not compose keys: {unknown}"
    for name, service in raw["services"].items():
        assert "image" in service or "build" in service, f"services.{name}: neither image nor build"
    assert NAME.match(env_example()["COMPOSE_PROJECT_NAME"])


def test_every_variable_has_a_value_in_env_example():
    assert variables(COMPOSE.read_text() + LOCAL.read_text()) - {"$"} <= set(env_example())


def test_services_depend_on_declared_services_with_valid_conditions(compose):
    for name, service in services(compose):
        for other, how in (service.get("depends_on") or {}).items():
            assert other in compose["services"] and other != name
            assert how["condition"] in DEPENDS_ON_CONDITIONS
        if "restart" in service:
            assert service["restart"] in RESTART_POLICIES
        if "healthcheck" in service:
            assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL", "NONE")
        if "stop_signal" in service:
            assert hasattr(signal, service["stop_signal"])
        for key, value in (service.get("environment") or {}).items():
            assert re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key) and isinstance(value, (str, int, float, bool))
        replicas = (service.get("deploy") or {}).get("replicas")
        if replicas is not None:
            assert str(replicas).isdigit() and int(replicas) >= 1


def test_volumes_are_declared_or_exist(compose):
    for name, service in services(compose):
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/")):
                assert target in USER_DATA or (DOCKER / source).exists(), f"services.{name}: {source} is missing"
            else:
                assert source in compose["volumes"], f"services.{name}: volume {source} is not declared"


def test_builds_name_an_existing_context_and_dockerfile(compose):
    built = set()
    for name, service in services(compose):
        if "build" in service:
            context = (DOCKER / service["build"]["context"]).resolve()
            dockerfile = context / service["build"]["dockerfile"]
            assert context == REPO and dockerfile.exists(), f"services.{name}: {dockerfile}"
            built.add(dockerfile)
    assert built == {path.resolve() for path in DOCKERFILES.values()}


def test_every_container_is_on_the_host_network_and_the_servers_listen_on_loopback_only(compose):
    for name, service in services(compose):
        assert service.get("network_mode") == "host", f"services.{name}"
        assert "ports" not in service and "networks" not in service, f"services.{name}"
    assert compose["services"]["postgres"]["command"] == ["postgres", "-c", "listen_addresses=127.0.0.1"]
    ui = build_parser().parse_args([str(a) for a in compose["services"]["mlflow"]["command"]])
    assert ui.host == "127.0.0.1"  # the default of `blocksweep ui`


def test_compose_local_changes_only_where_the_images_come_from(raw, local):
    assert set(local["services"]) <= set(raw["services"])
    for name, service in local["services"].items():
        assert set(service) <= {"build", "image"}, f"compose.local.yaml services.{name}"
        build = service["build"]
        assert build["args"] == {"BASE_IMAGE": LOCAL_BASE} and build["network"] == "host"
        if "build" in raw["services"][name]:
            assert set(build) == {"args", "network"}  # the same Dockerfile and context
    postgres = local["services"]["postgres"]
    assert ((DOCKER / postgres["build"]["context"]).resolve() / postgres["build"]["dockerfile"]) == POSTGRES_DOCKERFILE
    assert postgres["image"] != raw["services"]["postgres"]["image"]  # never mistaken for the official image
    assert f"tag=${{1:-{LOCAL_BASE}}}" in (DOCKER / "local-base.sh").read_text()


def test_gpus_are_reserved_only_under_the_gpu_profile(compose):
    for name, service in services(compose):
        for profile in service.get("profiles", []):
            assert PROFILE.match(profile)
        devices = (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices")
        if devices:
            assert service.get("profiles") == ["gpu"], f"services.{name} reserves GPUs outside the gpu profile"
            assert all("gpu" in d["capabilities"] for d in devices)
            assert "Dockerfile.gpu" in service["build"]["dockerfile"]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfiles_copy_existing_files_and_install_real_extras(name):
    extras = configparser.ConfigParser()
    extras.read(REPO / "setup.cfg")
    known = set(extras["options.extras_require"])
    instructions = dockerfile_instructions(DOCKERFILES[name])
    # The base is a build argument whose default is the public image (local-base.sh makes another).
    assert instructions[:2] == [("ARG", "BASE_IMAGE=python:3.11-slim"), ("FROM", "${BASE_IMAGE}")]
    for op, args in instructions:
        if op == "COPY":
            *sources, _ = args.split()
            for source in sources:
                assert (REPO / source).exists(), f"{name}: COPY {source}: not in the build context"
                assert not subprocess.run(["git", "check-ignore", "-q", source], cwd=REPO).returncode == 0
        if op == "RUN" and "pip install" in args:
            for group in re.findall(r"\.\[([a-z0-9_,-]+)\]", args):
                assert set(group.split(",")) <= known, f"{name}: unknown extra in {group}"
    entrypoint = json.loads(next(args for op, args in instructions if op == "ENTRYPOINT"))
    assert entrypoint == ["blocksweep"]


def test_the_gpu_image_has_no_tensorflow():
    text = DOCKERFILES["docker/Dockerfile.gpu"].read_text()
    assert "tensorflow" not in re.sub(r"#.*", "", text) and "KERAS_BACKEND=jax" in text


def blocksweep_commands(compose):
    """(where, argv) for every blocksweep command line: the Dockerfiles' CMDs and the
    commands of the compose services built from them (their entrypoint is blocksweep)."""
    for name, path in DOCKERFILES.items():
        cmd = next(args for op, args in dockerfile_instructions(path) if op == "CMD")
        yield f"{name} CMD", json.loads(cmd)
    for name, service in services(compose):
        if "build" in service and "command" in service:
            yield f"compose.yaml services.{name}.command", service["command"]


def test_every_blocksweep_command_parses_with_the_real_parser(compose):
    commands = list(blocksweep_commands(compose))
    assert len(commands) == 5
    for where, argv in commands:
        args = build_parser().parse_args([str(a) for a in argv])  # raises UsageError on any unknown flag
        assert args.command in ("run", "ui"), where
        if args.command == "run":
            assert args.space.startswith(IMAGE_ROOT + "/spaces/"), where
            assert (REPO / args.space.removeprefix(IMAGE_ROOT + "/")).exists(), f"{where}: {args.space}"


def test_the_workers_and_the_server_share_one_postgresql_and_one_study(compose):
    parsed = {name: build_parser().parse_args([str(a) for a in service["command"]])
              for name, service in services(compose) if "build" in service}
    workers = [args for args in parsed.values() if args.command == "run"]
    assert {a.storage for a in workers} == {"postgresql://blocksweep@127.0.0.1:5432/optuna"}
    assert {a.tracking_uri for a in workers} == {f"http://127.0.0.1:{parsed['mlflow'].port}"}
    assert len({a.study for a in workers}) == 1 and all(a.study_trials for a in workers)
    assert parsed["mlflow"].backend_store_uri == "postgresql://blocksweep@127.0.0.1:5432/mlflow"
    assert compose["services"]["postgres"]["environment"]["PGPORT"] == "5432"  # the port the URLs name


def urls(text: str) -> list[str]:
    return re.findall(r"[a-z][a-z0-9+.-]*://[^\s\"',\]]+", text)


def test_no_credential_is_written_in_the_docker_files(raw, compose):
    texts = [json.dumps(compose)] + [p.read_text() for p in (*DOCKERFILES.values(), DOCKER / "README.md", LOCAL,
                                                            POSTGRES_DOCKERFILE, DOCKER / "postgres-entrypoint.sh")]
    found = [url for text in texts for url in urls(text)]
    assert any(url.startswith("postgresql://") for url in found)
    for url in found:
        assert urlsplit(url).password is None, f"a URL with a password: {url}"
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), f"services.{name}.{key}: not from .env"
    tracked = subprocess.run(["git", "ls-files", "docker/.env"], cwd=REPO, capture_output=True, text=True).stdout
    assert tracked == ""
    assert subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=REPO).returncode == 0

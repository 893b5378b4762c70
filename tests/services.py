"""Helpers for the service tests: the local PostgreSQL, free loopback ports, supervised
subprocesses (always killed), and the process tree of a server."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import cli_env

PG = "postgresql://postgres@127.0.0.1:5432"


def postgres_or_skip() -> None:
    import psycopg

    try:
        psycopg.connect(f"{PG}/postgres", connect_timeout=3).close()
    except psycopg.OperationalError as err:
        pytest.skip(f"PostgreSQL is not running on 127.0.0.1:5432 (.ci/run starts it): {str(err).strip()[:120]}")


@contextlib.contextmanager
def fresh_database(prefix: str = "bs_test"):
    """A new, empty PostgreSQL database with a unique name; its URL. Dropped afterwards
    (with whatever is still connected to it)."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG}/{name}"
    finally:
        with psycopg.connect(f"{PG}/postgres", autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_cli(args: list, cwd: Path, **popen) -> subprocess.Popen:
    """`blocksweep ARGS` (this checkout) in a fresh process in its own session, so that the
    whole group can be killed."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable, "-m", "search", *map(str, args)], cwd=cwd, env=cli_env(),
                            text=True, start_new_session=True, **popen)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def wait_for_line(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> str:
    """Wait until the file `path` (a process's redirected output) has a line containing `text`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text().splitlines() if path.exists() else []:
            if text in line:
                return line
        if proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before saying {text!r}:\n"
                                 f"{path.read_text()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {text!r}")


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"

"""Memory and start-up time of the MLflow UI: plain `mlflow server` (its defaults: four
uvicorn workers and the background job runner) against `blocksweep ui` (one worker, no job
runner), both on a fresh SQLite store.

Memory is the proportional set size (PSS, /proc/<pid>/smaps_rollup) summed over the
server's whole process tree 15 s after it first answers /health: shared pages are
counted once, not once per process. Linux only.

    python3 bench/ui_footprint.py
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tree(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = {pid}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def pss_kib(pid: int) -> int:
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(argv: list[str], port: int, env: dict) -> tuple[int, float, float]:
    """(processes, MiB, seconds until /health answered)."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    started = time.monotonic()
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() - started > 300:
                    raise RuntimeError(f"{argv[:4]} did not start")
                time.sleep(0.5)
        up = time.monotonic() - started
        time.sleep(15)
        pids = tree(proc.pid)
        return len(pids), sum(pss_kib(p) for p in pids) / 1024, up
    finally:
        pids = tree(proc.pid)
        os.killpg(proc.pid, signal.SIGTERM)
        time.sleep(5)
        for pid in pids:  # plain mlflow server leaves its job runner behind on SIGTERM
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        for name, argv in (
                ("mlflow server (defaults)", [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                                              f"sqlite:///{tmp}/a.db", "--artifacts-destination", f"{tmp}/a"]),
                ("blocksweep ui", [sys.executable, "-m", "search", "ui", "--backend-store-uri",
                                   f"sqlite:///{tmp}/b.db", "--artifacts-destination", f"{tmp}/b"])):
            port = free_port()
            count, mib, up = measure(argv + ["--port", str(port)], port, env)
            print(f"{name}: {count} processes, {mib:.0f} MiB PSS, answered after {up:.1f} s")


if __name__ == "__main__":
    main()

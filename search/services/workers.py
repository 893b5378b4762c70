"""`blocksweep run ... --workers N [--gpus 0,1] [--gpu-memory-fraction F]`: N sweep workers
on this machine, one study.

Each worker is the same `blocksweep run` command (minus these three flags) in its own
process, on the same --storage, --tracking-uri and --study: they coordinate through the
study (search/engines/optuna_engine.py), exactly as workers on different machines do. This
module only places them, starts them, relays their output and sums up.

Placement (`plan`) is a pure function: worker i gets GPU gpus[i % len(gpus)] through
CUDA_VISIBLE_DEVICES (the process then sees one GPU, as device 0). Workers that share a
GPU get a memory limit, or two JAX processes would each preallocate 75% of it:
XLA_PYTHON_CLIENT_MEM_FRACTION=F for JAX and TF_FORCE_GPU_ALLOW_GROWTH=true for
TensorFlow (which has no per-process fraction setting outside code); F defaults to
0.9 / (workers on the busiest GPU). Without GPUs nothing is set: workers run on the CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

from search.services import procs
from search.errors import Interrupted, UsageError

SHARED_GPU_MEMORY = 0.9  # fraction of a shared GPU the workers on it divide among themselves
STOP_SECONDS = 30.0  # after Ctrl-C: time for workers to record their interrupted trials


@dataclass(frozen=True)
class Placement:
    """Where one worker runs, and the environment that puts it there."""

    worker: int
    gpu: Optional[str]  # None: the CPU
    env: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"w{self.worker}" + (f" gpu{self.gpu}" if self.gpu is not None else "")


def parse_gpus(text: Optional[str]) -> Optional[list[str]]:
    """'0,1,3' -> ['0', '1', '3'] (indices or GPU-/MIG- UUIDs, as CUDA_VISIBLE_DEVICES takes them)."""
    if text is None:
        return None
    if text.strip().lower() == "none":
        return []  # the CPU
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    for gpu in gpus:
        if not (gpu.isdigit() or gpu.startswith(("GPU-", "MIG-"))):
            raise UsageError(f"--gpus {text}: {gpu!r} is not a GPU index (0, 1, ...) or a GPU-/MIG- UUID")
    if len(set(gpus)) != len(gpus):
        raise UsageError(f"--gpus {text}: a GPU is listed twice (use --workers to share one)")
    return gpus


def visible_gpus(environ=os.environ) -> list[str]:
    """The GPUs this machine offers: $CUDA_VISIBLE_DEVICES when set, else nvidia-smi's list,
    else none (no driver: the CPU)."""
    if "CUDA_VISIBLE_DEVICES" in environ:
        return [g.strip() for g in environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip() and g.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()] if out.returncode == 0 else []


def plan(workers: int, gpus: Sequence[str], memory_fraction: Optional[float] = None) -> list[Placement]:
    """Worker -> GPU, round-robin, with the environment each worker starts with."""
    if workers < 1:
        raise UsageError(f"--workers {workers}: must be at least 1")
    if memory_fraction is not None and not 0 < memory_fraction <= 1:
        raise UsageError(f"--gpu-memory-fraction {memory_fraction:g}: must be in (0, 1]")
    if not gpus:
        if memory_fraction is not None:
            raise UsageError("--gpu-memory-fraction: no GPU to share (none visible and no --gpus)")
        return [Placement(i, None, {}) for i in range(workers)]
    per_gpu = -(-workers // len(gpus))  # workers on the busiest GPU
    if memory_fraction is not None and memory_fraction * per_gpu > 1 + 1e-9:
        raise UsageError(f"--gpu-memory-fraction {memory_fraction:g}: {per_gpu} workers share a GPU, "
                         f"{memory_fraction * per_gpu:.2f} of its memory is more than it has")
    fraction = memory_fraction
    if fraction is None and per_gpu > 1:
        fraction = int(SHARED_GPU_MEMORY / per_gpu * 100) / 100  # rounded down to whole percent
    placements = []
    for i in range(workers):
        gpu = gpus[i % len(gpus)]
        env = {"CUDA_VISIBLE_DEVICES": gpu}
        if fraction is not None:
            env.update({"XLA_PYTHON_CLIENT_MEM_FRACTION": f"{fraction:g}", "TF_FORCE_GPU_ALLOW_GROWTH": "true"})
        placements.append(Placement(i, gpu, env))
    return placements


@dataclass
class Outcome:
    """What one worker did: its exit code and, when it finished, its JSON summary."""

    placement: Placement
    exit_code: Optional[int] = None
    summary: Optional[dict] = None
    last_lines: list = field(default_factory=list)
    order: int = 0  # 1 for the first worker to finish, ...


@dataclass
class Launch:
    """What `launch` did: each worker's outcome, and the signal that stopped the launcher
    (SIGINT for Ctrl-C, SIGTERM), if one did."""

    outcomes: list
    signum: Optional[int] = None


def launch(run_argv: Sequence[str], placements: Sequence[Placement], cwd: Optional[str] = None) -> Launch:
    """Run `blocksweep <run_argv> --json` once per placement, relay their output behind
    `[w<i> gpu<g>]`, forward Ctrl-C/SIGTERM to all, and wait for every one of them."""
    argv = [sys.executable, "-m", "search", *run_argv, "--json"]
    children: list[procs.Child] = []
    outcomes = [Outcome(p) for p in placements]  # a worker never started keeps exit_code None
    stopped_by: Optional[int] = None

    def forward(signum, frame):
        nonlocal stopped_by
        # The first Ctrl-C or SIGTERM goes on to each worker as it came (each marks its
        # running trial interrupted, naming the signal, and enqueues it again, as a single
        # `blocksweep run` does); a second one kills them.
        for child in children:
            child.send(signum if stopped_by is None else signal.SIGKILL)
        stopped_by = stopped_by or signum

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for p in placements:
            if stopped_by is not None:  # Ctrl-C or SIGTERM while starting: start no more
                break
            children.append(procs.Child(p.label, argv, env={**os.environ, **p.env}, prefix=f"[{p.label}] ",
                                        keep_stdout=True, cwd=cwd))
        finished = 0
        pending = list(range(len(children)))
        while pending:
            child = procs.wait_any([children[i] for i in pending])
            i = children.index(child)
            pending.remove(i)
            child.join()
            finished += 1
            outcomes[i].exit_code, outcomes[i].order = child.poll(), finished
            outcomes[i].summary = _last_json(child.stdout)
            outcomes[i].last_lines = child.last_lines
    finally:
        for child in children:  # only after an error of our own: normally all have exited
            if child.poll() is None:
                child.stop(STOP_SECONDS, signal.SIGINT)
        for s, handler in previous.items():
            signal.signal(s, handler)
    return Launch(outcomes, stopped_by)


def _last_json(stdout: str) -> Optional[dict]:
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def summarize(outcomes: Sequence[Outcome], metric: str, signum: Optional[int] = None) -> tuple[int, dict, str]:
    """(exit code, JSON summary, one line) for all workers together.

    The study's counts and best trial come from the worker that finished last (it saw the
    most; a worker stopped by Ctrl-C or SIGTERM reports them too, read from the study as it
    stopped); this invocation's counts are the workers' sums. Exit code: after Ctrl-C or
    SIGTERM (`signum`), 128 + its number (130, 143); 0 when every worker succeeded; 2 when
    all failed on bad input; else the first failure's code (1, -9)."""
    ran = {"completed": 0, "pruned": 0, "failed": 0}
    for o in outcomes:
        for key in ran:
            ran[key] += (o.summary or {}).get("ran", {}).get(key, 0)
    done = [o for o in outcomes if o.summary]
    last = max(done, key=lambda o: o.order).summary if done else {}
    stop = signum and (128 + signum)
    failed = [o for o in outcomes if o.exit_code not in (0, stop)]
    if signum:
        code = 128 + signum
    elif not failed:
        code = 0
    elif all(o.exit_code == 2 for o in outcomes):
        code = 2
    else:
        code = next(o.exit_code for o in sorted(failed, key=lambda o: o.order))
        code = code if code and code > 0 else 1
    summary = {
        "workers": [{"worker": o.placement.worker, "gpu": o.placement.gpu, "exit_code": o.exit_code,
                     "ran": (o.summary or {}).get("ran"), "stopped_because": (o.summary or {}).get("stopped_because")}
                    for o in outcomes],
        "ran": ran,
        **{k: last.get(k) for k in ("study", "engine", "experiment_id", "parent_run_id", "study_counts",
                                     "best_trial", "best_value", "best_run_id")},
    }
    study = f", study {last['study']}" if last.get("study") else ""
    line = (f"{len(outcomes)} workers{study}: ran {ran['completed']} completed, {ran['pruned']} pruned, "
            f"{ran['failed']} failed")
    counts = last.get("study_counts")
    if counts:
        line += "; the study has " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    if last.get("best_value") is not None:
        line += (f"; best trial {last['best_trial']}: {metric} {last['best_value']:.4f} "
                 f"(run {last.get('best_run_id')})")
    if last.get("parent_run_id"):
        line += f"; parent run {last['parent_run_id']}"
    if signum:
        line += f"; stopped by {Interrupted(signum).name}"
    for o in failed:
        why = o.last_lines[-1] if o.last_lines else "no output"
        line += f"; worker {o.placement.label} failed (exit {o.exit_code}: {why})"
    return code, summary, line


def run(space: str, run_argv: Sequence[str], *, workers: int, gpus: Optional[str] = None,
        memory_fraction: Optional[float] = None, overrides: Optional[list[str]] = None,
        engine: Optional[str] = None) -> tuple[int, dict, str]:
    """Check the space file, place the workers, run them, and sum up (see `summarize`)."""
    from search.config import check_sweep, load_spec, parse_overrides

    spec = load_spec(space, parse_overrides(overrides))  # bad input: one error, not N
    check_sweep(spec)
    if (engine or spec.file.search.engine) == "kerastuner":
        # One process owns a Keras Tuner project; its many-worker mode is chief + workers.
        raise UsageError("--workers: Keras Tuner sweeps scale out through its own distributed mode (a chief and "
                         "workers, see README 'Keras Tuner'), not --workers; use --engine optuna here")
    chosen = parse_gpus(gpus) if gpus is not None else visible_gpus()
    done = launch(run_argv, plan(workers, chosen, memory_fraction))
    return summarize(done.outcomes, spec.file.objective.metric, done.signum)

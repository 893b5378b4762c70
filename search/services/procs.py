"""Child processes that `blocksweep ui` and `blocksweep run --workers` supervise.

Each child starts in its own session, so a terminal's Ctrl-C reaches only the supervisor,
which then stops every child deliberately (SIGINT or SIGTERM to the child's whole process
group: `mlflow server` runs uvicorn under it, and a stray uvicorn would keep the port);
what a child writes is copied to our stderr line by line behind a prefix (`[w2 gpu1] `).
On Linux a child is also told to stop if the supervisor dies without cleaning up (kill -9).
"""

from __future__ import annotations

import codecs
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Optional, Sequence

PR_SET_PDEATHSIG = 1  # prctl(2): signal sent to this process when its parent thread dies
_SINK_LOCK = threading.Lock()


def _die_with_parent():
    """preexec_fn: ask Linux to SIGTERM the child when the supervisor dies (None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return preexec


class Child:
    """One supervised process. Its stderr (and stdout, unless `keep_stdout`) is copied to
    `sink` behind `prefix`, one line per line (and per carriage-return update, so a
    child's progress bar becomes a line per update); a kept stdout is collected in
    `self.stdout` for the supervisor to read (a worker's JSON summary)."""

    def __init__(self, name: str, argv: Sequence[str], *, env: Optional[dict] = None, prefix: str = "",
                 keep_stdout: bool = False, sink: IO[str] = sys.stderr, cwd: Optional[str] = None):
        self.name, self.prefix, self.sink = name, prefix, sink
        self.stdout = ""
        self.last_lines: list[str] = []  # the tail of what it said, for error messages
        self.proc = subprocess.Popen(
            list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if keep_stdout else subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent())
        streams = [(self._pump, self.proc.stderr if keep_stdout else self.proc.stdout)]
        if keep_stdout:
            streams.append((self._collect, self.proc.stdout))
        self._threads = [threading.Thread(target=target, args=(stream,), daemon=True) for target, stream in streams]
        for thread in self._threads:
            thread.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> Optional[int]:
        return self.proc.poll()

    def _collect(self, stream) -> None:
        with stream:
            self.stdout = stream.read().decode(errors="replace")

    def _pump(self, stream) -> None:
        # Raw reads, not readline: a progress bar rewrites its line with "\r" and no "\n".
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        while True:
            chunk = os.read(stream.fileno(), 65536)
            pending += decoder.decode(chunk, final=not chunk)
            *lines, pending = pending.replace("\r", "\n").split("\n")
            for line in lines:
                self._say(line)
            if not chunk:
                break
        self._say(pending)
        stream.close()

    def _say(self, line: str) -> None:
        line = line.rstrip()
        if not line:
            return
        self.last_lines = (self.last_lines + [line])[-20:]
        try:
            with _SINK_LOCK:  # whole lines, even with several children talking at once
                self.sink.write(f"{self.prefix}{line}\n")
                self.sink.flush()
        except (ValueError, OSError):  # our own stderr closed: keep draining the pipe
            pass

    def send(self, signum: int) -> None:
        """Send `signum` to the child's whole process group (it and what it started)."""
        try:
            os.killpg(self.proc.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, grace: float = 10.0, signum: int = signal.SIGTERM) -> Optional[int]:
        """Ask the group to stop, wait up to `grace` seconds, then kill what is left.
        Returns the child's exit code."""
        if self.proc.poll() is None:
            self.send(signum)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # The leader may be gone while what it started (uvicorn under mlflow) lives on.
        self.send(signal.SIGKILL)
        code = self.proc.wait()
        self.join()
        return code

    def join(self, timeout: float = 5.0) -> None:
        """Wait for the output to be drained (after the process ended)."""
        for thread in self._threads:
            thread.join(timeout)


def wait_any(children: Sequence[Child], until: Optional[float] = None, step: float = 0.2) -> Optional[Child]:
    """The first child to exit, or None when the monotonic deadline `until` passes."""
    while until is None or time.monotonic() < until:
        for child in children:
            if child.poll() is not None:
                return child
        time.sleep(step)
    return None

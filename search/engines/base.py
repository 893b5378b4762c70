"""The one interface every engine implements."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from search.trials.sweep import Sweep, SweepSummary


class Engine(Protocol):
    """Drives a sweep: decides which configurations to try and in what order, calls
    `sweep.run_trial` for each, and keeps its own study state so a rerun resumes."""

    name: str

    def check(self, sweep: "Sweep") -> None:
        """Refuse options this engine cannot honour, before anything runs (UsageError)."""

    def run(self, sweep: "Sweep") -> "SweepSummary":
        """Run this invocation's trials (sweep.options.trials / study_trials / timeout)."""

"""Terminal progress: an epoch bar for one training run, a trial bar for a sweep; and
`quiet_logger`, which keeps a library's harmless warnings off the terminal for a block.

Both bars write to stderr (stdout carries the summary line or JSON) and vanish with --quiet.
"""

from __future__ import annotations

import contextlib
import logging
import sys

from tqdm.auto import tqdm


class EpochBar:
    """`progress(epoch, metrics)` for `train_and_evaluate`: one tick per epoch."""

    def __init__(self, epochs: int, desc: str = "train", enabled: bool = True, leave: bool = True):
        self.bar = tqdm(total=epochs, desc=desc, unit="epoch", disable=not enabled, leave=leave,
                        file=sys.stderr, dynamic_ncols=True)

    def __call__(self, epoch: int, metrics: dict) -> None:
        shown = {k: f"{metrics[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in metrics}
        shown["img/s"] = f"{metrics.get('images_per_second', 0):.0f}"
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class SweepBar:
    """`progress(sweep, number, result)` for a sweep: trials done / pruned / failed, the
    best value so far and its trial, elapsed and remaining time (tqdm's estimate)."""

    def __init__(self, total: int | None, metric: str, better, enabled: bool = True):
        self.metric, self.better = metric, better
        self.best: tuple[int, float] | None = None
        self.bar = tqdm(total=total, desc="sweep", unit="trial", disable=not enabled, file=sys.stderr,
                        dynamic_ncols=True)

    def __call__(self, sweep, number: int, result) -> None:
        if result.state.value == "completed" and (self.best is None or self.better(result.objective, self.best[1])):
            self.best = (number, result.objective)
        c = sweep.counts
        postfix = {"done": c.completed, "pruned": c.pruned, "failed": c.failed}
        if self.best is not None:
            postfix[f"best {self.metric}"] = f"{self.best[1]:.4f} (#{self.best[0]})"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


@contextlib.contextmanager
def quiet_logger(name: str):
    """Only errors from the logger `name` while the block runs; its level restored after."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)

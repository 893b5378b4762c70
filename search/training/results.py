"""What a trial produced: immutable, and free of Keras so that engines, the sweep and the
comparison can use it without importing a training backend; and which recorded test metric
the model it hands over reproduces (`served`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional


class TrialState(enum.Enum):
    COMPLETE = "completed"
    PRUNED = "pruned"
    FAILED = "failed"


@dataclass(frozen=True)
class TrialResult:
    """What a trial produced. `objective` is the best epoch's value of the objective
    metric (the epoch whose weights are kept); `history` has one dict per epoch run."""

    state: TrialState
    objective: Optional[float]
    best_epoch: Optional[int]  # 1-based
    epochs_run: int
    history: tuple = ()
    test: dict = field(default_factory=dict)  # test_accuracy, test_loss (completed trials)
    train_seconds: float = 0.0  # training steps only, validation excluded
    images_per_second: float = 0.0
    reason: str = ""
    model: Any = field(default=None, compare=False, repr=False)  # best-epoch weights
    # What the run should also record, beyond the config and metrics (transfer learning:
    # the weights source, the embedding cache, the trainable split): MLflow params, tags,
    # and text artifacts by file name.
    params: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict)

    @classmethod
    def failed(cls, reason: str) -> "TrialResult":
        """A trial that failed before it trained an epoch (an impossible configuration, an
        error in training, an interrupted worker), with the reason it failed."""
        return cls(state=TrialState.FAILED, objective=None, best_epoch=None, epochs_run=0, reason=reason)

    def summary(self) -> dict:
        """The scalar results, as logged and printed with --json."""
        out = {"state": self.state.value, "objective": self.objective, "best_epoch": self.best_epoch,
               "epochs_run": self.epochs_run, "train_seconds": round(self.train_seconds, 3),
               "images_per_second": round(self.images_per_second, 1)}
        out.update(self.test)
        if self.reason:
            out["reason"] = self.reason
        return out


def served(config) -> tuple[str, int]:
    """(test metric, TTA level) of the model a trial hands over (a RunConfig's): it answers
    as the sweep ranked, with the recipe's test-time augmentation when the objective is TTA
    accuracy (its accuracy is then `test_tta_accuracy`), else with a plain forward pass
    (`test_accuracy`)."""
    if config.objective.metric == "val_tta_accuracy":
        return "test_tta_accuracy", config.train.airbench.tta_level
    return "test_accuracy", 0

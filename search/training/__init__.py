"""Training: one trial, from a `RunConfig` and its data splits to a `TrialResult`.

    loop.py        the one training loop: `train_and_evaluate`, the modes registry, and the
                   standard path (Keras fit with `TrialMonitor`)
    components.py  seed and precision, the network, augmentation, loss, optimizer
    monitor.py     `TrialMonitor`, the per-epoch callback (timing, NaN, best weights, pruning)
    schedules.py   learning-rate schedules as functions of the step
    results.py     `TrialResult`, immutable and free of Keras
    airbench/      mode: Keller Jordan's airbench94 recipe (Keras fit, or fused JAX)
    transfer.py    mode: ResNet transfer learning (feature extractor, fine-tuning)
    weights.py     pre-trained weights for the ResNet base, found and checked
    streaming.py   a streamed folder (too large for memory) as a Keras PyDataset

Importing this package is light (no Keras): engines import `results` without a backend.
`train_and_evaluate` below is the door: it loads the modes, each of which registers with
the loop, then trains.
"""

from __future__ import annotations


def train_and_evaluate(config, splits, *, report=None, on_epoch=None, progress=None):
    """Train one trial (see `search.training.loop.train_and_evaluate`). Import this only
    after `search.backend.select()` has chosen the Keras backend."""
    from search.training import airbench, transfer  # noqa: F401 - each registers its mode with the loop
    from search.training.loop import train_and_evaluate as train

    return train(config, splits, report=report, on_epoch=on_epoch, progress=progress)


def check_streamable(config, splits) -> None:
    """UsageError when the mode that would train `config` cannot take streamed `splits` (a
    folder too large for memory): before a run is created."""
    from search.training import airbench, transfer  # noqa: F401 - each registers its mode with the loop
    from search.training.loop import check_streamable as check

    check(config, splits)

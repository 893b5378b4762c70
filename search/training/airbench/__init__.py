"""The airbench recipe (`train.recipe: airbench`) as a training mode of the loop.

    recipe.py           the pieces, written once: augmentation, TTA, optimiser and lookahead rules
    epochs.py           `run_epochs`, the epoch loop the trainers plug into
    keras_path.py       `KerasTrainer`: Keras fit, on any backend
    tensorflow_path.py  `TensorFlowTrainer`: one tf.function per step, data resident (TensorFlow)
    fused.py            `FusedTrainer`: the whole trial on the device under JAX, one page

The mode registers with `search.training.loop` when this package is imported.
"""

from __future__ import annotations

import keras

from search.training.airbench.epochs import run_epochs
from search.training.airbench.keras_path import KerasTrainer
from search.training.components import trial_setup
from search.training.loop import register_mode
from search.training.results import TrialResult


def train_and_evaluate(config, splits, *, report=None, on_epoch=None, progress=None) -> TrialResult:
    """The recipe's trial: the fused JAX loop under the JAX backend, the compiled step
    under TensorFlow (unless `train.airbench.path` says keras), else Keras fit; same
    arguments and result as the loop's `train_and_evaluate`."""
    path = config.train.airbench.path
    backend = keras.backend.backend()
    if path == "fused" and backend != "jax":
        raise ValueError(f"train.airbench.path fused needs the JAX backend (this process runs {backend})")
    with trial_setup(config):
        if backend == "jax" and path != "keras":
            from search.training.airbench.fused import FusedTrainer  # imports JAX: only under JAX

            trainer = FusedTrainer(config, splits)
        elif backend == "tensorflow" and path != "keras":
            from search.training.airbench.tensorflow_path import TensorFlowTrainer  # imports TensorFlow

            trainer = TensorFlowTrainer(config, splits)
        else:
            trainer = KerasTrainer(config, splits)
        return run_epochs(trainer, config, report=report, on_epoch=on_epoch, progress=progress)


register_mode("airbench", lambda config: config.train.recipe == "airbench", train_and_evaluate)

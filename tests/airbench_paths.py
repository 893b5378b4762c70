"""The airbench recipe's two trainers side by side, step by step, under JAX (Keras's JAX
backend runs both). tests/test_fast.py runs this in a fresh process, since the test
process runs TensorFlow:

    KERAS_BACKEND=jax python -m tests.airbench_paths DATA_DIR OUT.json

From one network's initial weights (copied into a twin, so each trainer owns its own) and
on the same augmented batches, the fused trainer and the Keras path each take the trial's
optimiser steps one at a time. After every step (and after the final lookahead) it
records, for each weight, the largest difference between the two and the largest
magnitude, the two losses, and both whitening biases. The test asserts on the record.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"

# The trial: widths 8/16/16, 200 training images in batches of 50 (4 steps an epoch) for
# 3.6 epochs: ceil(4 * 3.6) = 15 steps, the fourth epoch partial (3 steps). The lookahead
# syncs at steps 5, 10 and 15; the whitening bias trains in steps 1-12 (3 epochs) only.
# The learning rate is a third of the recipe's: at 1.5 (96 for batch-norm biases) so small
# a trial is chaotic: the one-ulp difference the first lookahead sync makes (XLA and numpy
# round d * ema + (1 - d) * w differently) grew from 1e-7 of a weight at step 5 to 7e-2 at
# step 12 (measured); at 0.5 the two paths stay within 1e-6 of each other.
EPOCHS = 3.6
BATCH = 50
TRAIN_IMAGES = 200
LEARNING_RATE = 0.5


def trial_config():
    from search.config import AirbenchRecipe, DataConfig, RunConfig, TrainConfig
    from search.config.families import VGGConfig

    model = VGGConfig(blocks=3, block="conv-pool-bn-act-conv-bn-act", filters=(8, 16, 16), stem="whiten",
                      conv_bias=False, bn_momentum=0.6, bn_epsilon=1e-12, bn_scale=False, init="airbench",
                      head="gmp", classifier_bias=False, logit_scale=1 / 9, activation="gelu")
    return RunConfig(model=model, data=DataConfig(train_size=TRAIN_IMAGES, val_size=100, test_size=100),
                     train=TrainConfig(recipe="airbench", epochs=EPOCHS, precision="float32",
                                       airbench=AirbenchRecipe(batch_size=BATCH, eval_batch_size=100,
                                                               learning_rate=LEARNING_RATE)),
                     objective={"metric": "val_tta_accuracy"})


def main(data_dir: str, out: str) -> None:
    from search import backend

    backend.select("jax")
    import numpy as np

    from search import models
    from search.data import load_cifar10, prepare
    from search.training.airbench.epochs import epoch_steps
    from search.training.airbench.fused import FusedTrainer
    from search.training.airbench.keras_path import KerasTrainer
    from search.training.components import build_model, trial_setup

    config = trial_config()
    splits = prepare(load_cifar10(data_dir), config.data)
    with trial_setup(config):
        net = build_model(config, splits)  # the initial weights, whitening filters set
        twin = models.build_model(config.model, splits.input_shape, splits.num_classes)
        twin.set_weights(net.get_weights())
        names = [w.path for w in net.weights]
        fused = FusedTrainer(config, splits, net=net)
        plain = KerasTrainer(config, splits, net=twin)

        def compare(step, losses=(None, None)):
            a = [np.asarray(w) for w in fused.export().get_weights()]
            b = [np.asarray(w) for w in plain.export().get_weights()]
            bias = names.index(next(n for n in names if n.startswith("stem_whiten/bias")))
            return {"step": step, "loss_fused": losses[0], "loss_keras": losses[1],
                    "weights": {n: {"diff": float(np.max(np.abs(x - y), initial=0.0)),
                                    "scale": float(np.max(np.abs(y), initial=0.0))}
                                for n, x, y in zip(names, a, b)},
                    "bias_fused": a[bias].tolist(), "bias_keras": b[bias].tolist()}

        record = [compare(0)]
        step = 0
        for epoch, count in enumerate(epoch_steps(fused.steps_per_epoch, fused.total_steps)):
            x, y = plain.epoch_data(epoch)  # the same batches into both
            for s in range(count):
                loss_f, _ = fused.read_train(fused.train_steps(x, y, s, 1))
                loss_k, _ = plain.read_train(plain.train_steps(x, y, s, 1))
                step += 1
                record.append(compare(step, (float(loss_f[0]), float(loss_k[0]))))
        fused.finish_lookahead()
        plain.finish_lookahead()
        record.append(compare("final"))
    summary = {"steps_per_epoch": fused.steps_per_epoch, "total_steps": fused.total_steps, "record": record}
    with open(out, "w") as f:
        json.dump(summary, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])

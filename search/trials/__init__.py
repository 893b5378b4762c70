"""Trials: a sampled configuration becomes a tracked training run.

    tracked.py  `train_tracked`: the trainer with its inputs and outputs logged into one
                MLflow run (`blocksweep train`, a sweep's trial, a `compare --repeat` seed)
    sweep.py    `Sweep`: one space, one study, one parent run; `Sweep.run_trial` is the
                door every engine goes through (child run, splits, kept models, best-so-far)

Engines decide what to try and call `Sweep.run_trial`; they never touch MLflow or Keras
training themselves.
"""

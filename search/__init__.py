"""Blocksweep: hyperparameter search for CIFAR-10 image classifiers, tracked in MLflow.

Data flows through the package in this order:
space file -> config/space -> engine -> trainer -> tracking -> compare/export.
Heavy libraries (keras, mlflow, optuna) are imported late, inside the functions that
need them, so `blocksweep --help` is instant and a JAX run never imports TensorFlow.
"""

__version__ = "0.1.0"

"""Artifacts: what a user takes away from a sweep, and proof that it works.

    export.py    the best trial's model, with its config, constants and labels, in a folder
                 (and, with --register, in MLflow's model registry)
    predict.py   classify image files with an export folder
    evaluate.py  a saved model on the test set: accuracy, per class, confusion matrix
"""

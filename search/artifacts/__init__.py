"""Artifacts: what a user takes away from a sweep, and proof that it works.

    export.py    the best trial's model, with its config, constants and labels, in a folder
                 (and, with --register, its MLflow model in MLflow's model registry)
    predict.py   classify image files with an export folder
    evaluate.py  a saved model on the test set: accuracy, per class, confusion matrix
    kept.py      a kept model read back from a run or a folder (raw pixels in; models kept
                 before that are wrapped on reading)
"""

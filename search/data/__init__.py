"""Data: where the images come from, loaded safely and checked, and split for a trial.

    pickles.py  the restricted unpickler (dataset batches are pickles)
    cifar10.py  CIFAR-10: sources (--data-dir, Keras's cache, download), batch checks
    splits.py   validation split, train/test subsets, standardisation -> `Splits`
"""

from search.data.cifar10 import (FOLDER, LABEL_NAMES, META, NUM_CLASSES, TEST_BATCH, TRAIN_BATCHES, Cifar10,
                                 find_folder, keras_cache_folder, load_batch, load_cifar10, write_batches)
from search.data.pickles import RestrictedUnpickler, UnsafePickle, restricted_load
from search.data.splits import Splits, prepare, stratified_pick

__all__ = ["FOLDER", "LABEL_NAMES", "META", "NUM_CLASSES", "TEST_BATCH", "TRAIN_BATCHES", "Cifar10",
           "RestrictedUnpickler", "Splits", "UnsafePickle", "find_folder", "keras_cache_folder", "load_batch",
           "load_cifar10", "prepare", "restricted_load", "stratified_pick", "write_batches"]

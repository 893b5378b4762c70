"""Data: where the images come from, loaded safely and checked, and split for a trial.

    pickles.py  the restricted unpickler (dataset batches are pickles)
    sources.py  `data.source` -> the raw dataset: CIFAR-10, CIFAR-100 or a folder
    cifar10.py  CIFAR-10: sources (--data-dir, Keras's cache, download), batch checks
    cifar100.py CIFAR-100 in Keras's python layout, fine or coarse labels
    folders.py  your own images: one sub-folder per class, decoded once into a cache, or
                streamed from their files when too large for memory (`StreamedImages`)
    splits.py   validation split, train/test subsets, standardisation -> `Splits`
"""

from search.data.cifar10 import (FOLDER, LABEL_NAMES, META, NUM_CLASSES, TEST_BATCH, TRAIN_BATCHES, Cifar10,
                                 find_folder, keras_cache_folder, load_batch, load_cifar10, write_batches)
from search.data.cifar100 import load_cifar100, write_cifar100
from search.data.folders import (IN_MEMORY_LIMIT, LIMIT_VARIABLE, ImageFolder, StreamedFolder, StreamedImages,
                                 in_memory_limit, load_folder, write_image_folder)
from search.data.pickles import RestrictedUnpickler, UnsafePickle, restricted_load
from search.data.sources import DATASET_SETTINGS, load_dataset
from search.data.splits import Splits, prepare, stratified_pick

__all__ = ["DATASET_SETTINGS", "FOLDER", "IN_MEMORY_LIMIT", "LABEL_NAMES", "META", "NUM_CLASSES", "TEST_BATCH",
           "TRAIN_BATCHES", "Cifar10", "ImageFolder", "LIMIT_VARIABLE", "StreamedFolder", "StreamedImages",
           "in_memory_limit", "RestrictedUnpickler", "Splits", "UnsafePickle", "find_folder",
           "keras_cache_folder", "load_batch", "load_cifar10", "load_cifar100", "load_dataset", "load_folder",
           "prepare", "restricted_load", "stratified_pick", "write_batches", "write_cifar100", "write_image_folder"]

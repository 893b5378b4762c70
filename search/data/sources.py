"""The one door to the images: `data.source` -> the raw dataset `prepare` splits.

    cifar10          cifar10.py (the default)
    cifar100         cifar100.py (fine or coarse labels: data.label_mode)
    {folder: PATH}   folders.py (your own images, decoded once into mlruns/images/)
"""

from __future__ import annotations


def load_dataset(data_config, data_dir=None):
    """The raw dataset of a `DataConfig`'s source (`data_dir`: where CIFAR-10 or CIFAR-100
    are, as `--data-dir`; a folder source names its own path)."""
    source = data_config.source
    if source == "cifar10":
        from search.data.cifar10 import load_cifar10

        return load_cifar10(data_dir)
    if source == "cifar100":
        from search.data.cifar100 import load_cifar100

        return load_cifar100(data_dir, data_config.label_mode)
    from search.data.folders import load_folder

    return load_folder(data_config)


# The settings that decide which images a dataset holds: one sweep loads its data once, so
# a sweep cannot search them (a trial's data settings may pick subsets, never sources).
DATASET_SETTINGS = ("source", "label_mode", "image_size", "test", "test_fraction", "on_bad_image")

"""Splits: the validation split carved out of the training images (stratified, seeded),
train and test subsets, and per-channel standardisation with the training split's
statistics. Selection uses validation only; the test split is for reporting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from search.errors import UsageError


@dataclass(frozen=True)
class Splits:
    """Model-ready arrays: float32 NHWC images (normalised when asked) and labels
    (int for sparse, float one-hot otherwise). `mean`/`std` are the per-channel constants
    in pixel units (0..255) that a user needs to feed new images to an exported model."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    label_names: tuple[str, ...]
    source: str
    name: str = "CIFAR-10"  # the dataset's name (a folder's: the folder's name)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.x_train), "val": len(self.x_val), "test": len(self.x_test)}


def stratified_pick(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `size` items with the class proportions of `labels` (largest-remainder
    rounding), shuffled by `rng`."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts / counts.sum() * size
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take))[: size - take.sum()]:
        take[i] += 1
    picked = [rng.choice(np.flatnonzero(labels == c), n, replace=False) for c, n in zip(classes, take)]
    out = np.concatenate(picked)
    rng.shuffle(out)
    return out


def prepare(dataset, config) -> Splits:
    """Split and normalise a dataset (`Cifar10`, or `ImageFolder` of folders.py: NHWC
    uint8 train and test arrays) per a `DataConfig`: classes filter, validation split, train and
    test subsets, then per-channel standardisation with the training split's statistics."""
    rng = np.random.default_rng(config.seed)
    x_train, y_train = dataset.x_train, dataset.y_train
    x_test, y_test = dataset.x_test, dataset.y_test
    names = dataset.label_names
    if config.classes is not None:
        if max(config.classes) >= len(names):
            raise UsageError(f"data.classes: index {max(config.classes)}, but the data has {len(names)} classes "
                             f"(0..{len(names) - 1})")
        remap = {c: i for i, c in enumerate(config.classes)}
        keep = np.isin(y_train, config.classes)
        x_train, y_train = x_train[keep], np.vectorize(remap.get)(y_train[keep])
        keep = np.isin(y_test, config.classes)
        x_test, y_test = x_test[keep], np.vectorize(remap.get)(y_test[keep])
        names = tuple(names[c] for c in config.classes)

    need = config.val_size + (config.train_size or 1)
    if need > len(x_train):
        raise UsageError(f"data: val_size {config.val_size} + train_size {config.train_size or 1} "
                         f"exceed the {len(x_train)} training images")
    val_idx = stratified_pick(y_train, config.val_size, rng)
    rest = np.setdiff1d(np.arange(len(x_train)), val_idx)
    if config.train_size is not None:
        rest = rest[stratified_pick(y_train[rest], config.train_size, rng)]
    else:
        rest = rng.permutation(rest)
    if config.test_size is not None and config.test_size < len(x_test):
        pick = stratified_pick(y_test, config.test_size, rng)
        x_test, y_test = x_test[np.sort(pick)], y_test[np.sort(pick)]

    xt = x_train[rest]
    mean = xt.reshape(-1, 3).mean(axis=0) if config.normalize else np.zeros(3)
    std = xt.reshape(-1, 3).std(axis=0) if config.normalize else np.ones(3)

    def images(x):
        # In place on the one float32 copy: the same arithmetic as (x - mean) / std without
        # its two temporaries (the peak memory of a split: 4 bytes per pixel, not 12).
        out = x.astype(np.float32)
        out -= mean.astype(np.float32)
        out /= std.astype(np.float32)
        return out

    def labels(y):
        y = np.asarray(y, dtype=np.int64)
        if config.labels == "onehot":
            return np.eye(len(names), dtype=np.float32)[y]
        return y

    return Splits(
        x_train=images(xt), y_train=labels(y_train[rest]),
        x_val=images(x_train[val_idx]), y_val=labels(y_train[val_idx]),
        x_test=images(x_test), y_test=labels(y_test),
        mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
        label_names=names, source=dataset.source, name=getattr(dataset, "name", "CIFAR-10"),
    )

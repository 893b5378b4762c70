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
    """Model-ready arrays: float32 NHWC images (normalised when asked; for a folder too large
    for memory, `StreamedImages` of folders.py, decoded when indexed) and labels
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

    @property
    def streamed(self) -> bool:
        """Images decoded batch by batch from their files (a folder too large for memory)."""
        return not isinstance(self.x_train, np.ndarray)  # StreamedImages (folders.py)

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


@dataclass(frozen=True)
class Selection:
    """Which images of a dataset's train and test parts a data config uses (indices into
    them), their labels after the class filter, and the class names."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    y_train: np.ndarray
    y_val: np.ndarray
    y_test: np.ndarray
    names: tuple[str, ...]


def select(y_train: np.ndarray, y_test: np.ndarray, names: tuple[str, ...], config) -> Selection:
    """The class filter, validation split and train and test subsets of a `DataConfig`,
    from the labels alone (so in-memory and streamed data split alike)."""
    rng = np.random.default_rng(config.seed)
    train_rows, test_rows = np.arange(len(y_train)), np.arange(len(y_test))
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    if config.classes is not None:
        if max(config.classes) >= len(names):
            raise UsageError(f"data.classes: index {max(config.classes)}, but the data has {len(names)} classes "
                             f"(0..{len(names) - 1})")
        remap = {c: i for i, c in enumerate(config.classes)}
        train_rows = np.flatnonzero(np.isin(y_train, config.classes))
        test_rows = np.flatnonzero(np.isin(y_test, config.classes))
        y_train = np.vectorize(remap.get)(y_train[train_rows]) if len(train_rows) else y_train[train_rows]
        y_test = np.vectorize(remap.get)(y_test[test_rows]) if len(test_rows) else y_test[test_rows]
        names = tuple(names[c] for c in config.classes)

    need = config.val_size + (config.train_size or 1)
    if need > len(y_train):
        raise UsageError(f"data: val_size {config.val_size} + train_size {config.train_size or 1} "
                         f"exceed the {len(y_train)} training images")
    val_idx = stratified_pick(y_train, config.val_size, rng)
    rest = np.setdiff1d(np.arange(len(y_train)), val_idx)
    if config.train_size is not None:
        rest = rest[stratified_pick(y_train[rest], config.train_size, rng)]
    else:
        rest = rng.permutation(rest)
    test_idx = np.arange(len(y_test))
    if config.test_size is not None and config.test_size < len(y_test):
        test_idx = np.sort(stratified_pick(y_test, config.test_size, rng))
    return Selection(train=train_rows[rest], val=train_rows[val_idx], test=test_rows[test_idx],
                     y_train=y_train[rest], y_val=y_train[val_idx], y_test=y_test[test_idx], names=names)


def prepare(dataset, config) -> Splits:
    """Split and normalise a dataset (`Cifar10`, or `ImageFolder` of folders.py: NHWC
    uint8 train and test arrays) per a `DataConfig`: classes filter, validation split, train and
    test subsets, then per-channel standardisation with the training split's statistics.
    A `StreamedFolder` (a folder too large for memory) gives streamed parts (`StreamedImages`)."""
    chosen = select(dataset.y_train, dataset.y_test, dataset.label_names, config)
    names = chosen.names

    def labels(y):
        y = np.asarray(y, dtype=np.int64)
        if config.labels == "onehot":
            return np.eye(len(names), dtype=np.float32)[y]
        return y

    if getattr(dataset, "streamed", False):
        return _prepare_streamed(dataset, config, chosen, labels)
    xt = dataset.x_train[chosen.train]
    mean = xt.reshape(-1, 3).mean(axis=0) if config.normalize else np.zeros(3)
    std = xt.reshape(-1, 3).std(axis=0) if config.normalize else np.ones(3)

    def images(x):
        # In place on the one float32 copy: the same arithmetic as (x - mean) / std without
        # its two temporaries (the peak memory of a split: 4 bytes per pixel, not 12).
        out = x.astype(np.float32)
        out -= mean.astype(np.float32)
        out /= std.astype(np.float32)
        return out

    return Splits(
        x_train=images(xt), y_train=labels(chosen.y_train),
        x_val=images(dataset.x_train[chosen.val]), y_val=labels(chosen.y_val),
        x_test=images(dataset.x_test[chosen.test]), y_test=labels(chosen.y_test),
        mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
        label_names=names, source=dataset.source, name=getattr(dataset, "name", "CIFAR-10"),
    )


def _prepare_streamed(dataset, config, chosen: Selection, labels) -> Splits:
    """The streamed split: file lists, and the training split's mean and std from each
    file's exact per-channel sums (a running mean and variance: E[x^2] - E[x]^2 in float64
    over integer sums, within 1e-9 of numpy's two-pass numbers on the same pixels)."""
    if config.normalize:
        count = len(chosen.train) * dataset.image_size[0] * dataset.image_size[1]
        mean = dataset.sums[chosen.train].sum(axis=0) / count
        std = np.sqrt(np.maximum(dataset.squares[chosen.train].sum(axis=0) / count - mean ** 2, 0))
    else:
        mean, std = np.zeros(3), np.ones(3)

    def images(files, rows):
        return dataset.part(tuple(files[i] for i in rows), mean, std)

    return Splits(
        x_train=images(dataset.train_files, chosen.train), y_train=labels(chosen.y_train),
        x_val=images(dataset.train_files, chosen.val), y_val=labels(chosen.y_val),
        x_test=images(dataset.test_files, chosen.test), y_test=labels(chosen.y_test),
        mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
        label_names=chosen.names, source=dataset.source, name=dataset.name,
    )

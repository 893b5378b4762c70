"""Streamed data for Keras: a folder too large for memory (search/data/folders.py) reaches
`fit`, `evaluate` and `predict` as a `keras.utils.PyDataset`, one batch decoded at a time.

Each batch's files are decoded in parallel (threads: Pillow releases the GIL while it
decodes) and standardised with the training split's constants (`StreamedImages`, in
search/data/splits.py); the training order is shuffled each epoch with a seeded generator.
A PyDataset, not `tf.data`: it runs under every backend, and under JAX or torch nothing
here imports TensorFlow.
"""

from __future__ import annotations

import math
from typing import Optional

import keras
import numpy as np


class Batches(keras.utils.PyDataset):
    """(images, labels) batches of a streamed part; `labels` None gives images alone (predict)."""

    def __init__(self, images, labels: Optional[np.ndarray], batch_size: int, seed: Optional[int] = None):
        super().__init__()
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.seed, self.epoch = seed, 0
        self.order = self._order()

    def _order(self) -> np.ndarray:
        if self.seed is None:  # evaluation: file order
            return np.arange(len(self.images))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.images))

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, index: int):
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        x = self.images[rows]
        return x if self.labels is None else (x, self.labels[rows])

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()


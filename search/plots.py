"""Figures, as PNG files (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves(history: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Accuracy and loss per epoch, training and validation on the same axes."""
    plt = _pyplot()
    epochs = list(range(1, len(history) + 1))
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, name in ((acc_ax, "accuracy"), (loss_ax, "loss")):
        for key, label, style in ((name, "train", "-"), (f"val_{name}", "validation", "--")):
            values = [h.get(key) for h in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, style, marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion_matrix(matrix, labels: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Rows: true class, columns: predicted class; each cell shows its count and is shaded
    by the share of its row (the per-class recall sits on the diagonal)."""
    import numpy as np

    plt = _pyplot()
    matrix = np.asarray(matrix)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * n, 0.8 + 0.6 * n))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if shares[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

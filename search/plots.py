"""Figures, as PNG files (matplotlib's Agg backend: no display needed): a run's curves, and
the static comparison figures of `blocksweep compare` (its interactive ones, plotly, are in
search/analysis/figures.py and search/engines/optuna_figures.py)."""

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
    return _save(fig, path)


# --------------------------------------------------------------------------- compare


def top_curves(series: Sequence[tuple[str, list, list]], metric: str, train_metric: str, path: str | Path,
               title: str = "") -> Path:
    """Learning curves of several runs on one plot: `metric` (validation) per epoch as solid
    lines and `train_metric` dashed in the same colour. `series`: (label, [(epoch, value)],
    [(epoch, value)]) per run, best first."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5))
    colours = plt.get_cmap("tab10")
    for i, (label, val, train) in enumerate(series):
        colour = colours(i % 10)
        if val:
            ax.plot(*zip(*val), "-", marker="o", markersize=3, color=colour, label=label)
        if train:
            ax.plot(*zip(*train), "--", color=colour, alpha=0.5)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.set_ylabel(f"{metric} (solid), {train_metric} (dashed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    ax.set_title(title)
    return _save(fig, path)


def objective_by_trial(studies: Sequence[tuple[str, str, str, "object"]], path: str | Path) -> Path:
    """Objective against trial number, one panel per study: completed trials as dots,
    pruned ones as grey crosses (their best value before they stopped), and the
    best-so-far line over the completed trials. `studies`: (name, goal, metric, DataFrame
    with trial, state, objective columns)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(studies), 1, figsize=(9, 3.2 * len(studies)), squeeze=False)
    for ax, (name, goal, metric, runs) in zip(axes[:, 0], studies):
        runs = runs.sort_values("trial")
        done = runs[(runs["state"] == "completed") & runs["objective"].notna()]
        pruned = runs[(runs["state"] == "pruned") & runs["objective"].notna()]
        ax.scatter(done["trial"], done["objective"], s=14, label="completed", zorder=3)
        if not pruned.empty:
            ax.scatter(pruned["trial"], pruned["objective"], s=14, marker="x", color="grey", label="pruned")
        if not done.empty:
            values = done["objective"].astype(float)
            best = values.cummax() if goal == "maximize" else values.cummin()
            ax.step(done["trial"], best, where="post", color="C3", label="best so far")
        ax.set_title(name)
        ax.set_xlabel("trial")
        ax.xaxis.set_major_locator(_integer_ticks())
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, path)


def importances(values: dict, path: str | Path, title: str = "") -> Path:
    """Parameter importances as horizontal bars, largest on top."""
    plt = _pyplot()
    names = list(values)[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 1.5))
    ax.barh(names, [values[n] for n in names], color="C0")
    ax.set_xlabel("importance (share)")
    ax.set_xlim(0, max(1e-9, max(values.values(), default=0)) * 1.1)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _save(fig, path: str | Path) -> Path:
    plt = _pyplot()
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
    return _save(fig, path)

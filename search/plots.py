"""Figures, as PNG files (matplotlib's Agg backend: no display needed): a run's curves, and
the comparison figures of `blocksweep compare`."""

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


def parallel_coordinates(params, values, metric: str, goal: str, path: str | Path) -> Path:
    """One vertical axis per searched parameter and a last one for the objective; each
    ranked run is a polyline coloured by its objective (bright = better). Numeric axes are
    scaled to their range (log scale for positive values spanning over 20x); categorical
    axes place their choices evenly. A parameter a run does not have (conditional) leaves a
    gap in its line. Drawn as one LineCollection, so thousands of runs stay fast."""
    import numpy as np
    import pandas as pd
    from matplotlib.collections import LineCollection

    plt = _pyplot()
    columns = list(params.columns) + [metric]
    table = params.copy()
    table[metric] = pd.to_numeric(values, errors="coerce").to_numpy()
    scaled, ticks = [], []
    for name in columns:
        y, labels = _axis(table[name])
        scaled.append(y)
        ticks.append(labels)
    grid = np.column_stack(scaled)  # runs x axes, in [0, 1], NaN for missing
    colour_values = table[metric].to_numpy(dtype=float)
    order = np.argsort(colour_values if goal == "maximize" else -colour_values)  # best drawn last (on top)
    segments, colours = [], []
    for i in order:
        for a in range(len(columns) - 1):
            if not (np.isnan(grid[i, a]) or np.isnan(grid[i, a + 1])):
                segments.append([(a, grid[i, a]), (a + 1, grid[i, a + 1])])
                colours.append(colour_values[i])
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(columns)), 5))
    cmap = plt.get_cmap("viridis" if goal == "maximize" else "viridis_r")
    lines = LineCollection(segments, cmap=cmap, linewidths=1, alpha=0.6 if len(order) < 500 else 0.25)
    lines.set_array(np.asarray(colours))
    ax.add_collection(lines)
    fig.colorbar(lines, ax=ax, label=metric)
    for a, labels in enumerate(ticks):
        ax.axvline(a, color="black", linewidth=0.8)
        for y, text in labels:
            ax.text(a + 0.03, y, text, fontsize=7, va="center")
    ax.set_xlim(-0.2, len(columns) - 0.6)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xticks(range(len(columns)), columns, rotation=20, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_title(f"{len(order)} ranked runs: parameters and {metric}")
    return _save(fig, path)


def _axis(column) -> tuple:
    """(values scaled to [0, 1] with NaN for missing, [(y, label)] ticks) for one axis."""
    import numpy as np
    import pandas as pd

    present = column.dropna()
    numeric = pd.to_numeric(present, errors="coerce")
    is_numeric = numeric.notna().all() and not present.map(lambda v: isinstance(v, bool)).any() and len(present)
    if is_numeric:
        x = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
        low, high = np.nanmin(x), np.nanmax(x)
        if low > 0 and high / low > 20:
            x, low, high = np.log10(x), np.log10(low), np.log10(high)
            labels = [(0.0, f"{10 ** low:.3g}"), (1.0, f"{10 ** high:.3g}")]
        else:
            labels = [(0.0, f"{low:.3g}"), (1.0, f"{high:.3g}")]
        span = high - low
        return ((x - low) / span if span > 0 else np.where(np.isnan(x), np.nan, 0.5)), labels
    choices = sorted(present.astype(str).unique())
    spot = {c: (i / (len(choices) - 1) if len(choices) > 1 else 0.5) for i, c in enumerate(choices)}
    y = column.map(lambda v: np.nan if v is None or (isinstance(v, float) and np.isnan(v)) else spot[str(v)])
    return y.to_numpy(dtype=float), [(spot[c], c) for c in choices]


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

"""Interactive figures of `compare` (plotly), drawn from the run table read from MLflow.

For a Keras Tuner study, for an Optuna study whose storage is not at hand, and across the
studies of several engines, these are the kinds of figure that `optuna.visualization`
draws for an Optuna study (`search/engines/optuna_figures.py`): the objective by trial with
the best so far, parallel coordinates, parameter importances and one slice per parameter.
`page` puts figures on one self-contained HTML page: plotly.js (about 4.7 MB) is embedded
once per page, not once per figure, and nothing is fetched from a network (the MLflow UI
shows the page, from the parent run's artifacts, on machines without one).
"""

from __future__ import annotations

import math
from html import escape
from typing import Any, Sequence

import numpy as np
import pandas as pd

LOG_RATIO = 20  # a positive numeric parameter spanning more than 20x is drawn on a log10 axis


def history(studies: Sequence[tuple[str, str, pd.DataFrame]], metric: str):
    """The objective against trial number: completed trials as dots, pruned ones as grey
    crosses (their best value before they stopped), the best so far as a step line; one
    colour per study. `studies`: (name, goal, frame with trial, state, objective)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (name, goal, runs) in enumerate(studies):
        colour = _colour(i)
        runs = runs.sort_values("trial")
        done = runs[(runs["state"] == "completed") & runs["objective"].notna()]
        pruned = runs[(runs["state"] == "pruned") & runs["objective"].notna()]
        label = f"{name}: " if len(studies) > 1 else ""
        fig.add_scatter(x=done["trial"], y=done["objective"], mode="markers", name=f"{label}completed",
                        marker={"color": colour}, text=done["run_id"], hovertemplate="trial %{x}: %{y}<br>%{text}")
        if not pruned.empty:
            fig.add_scatter(x=pruned["trial"], y=pruned["objective"], mode="markers", name=f"{label}pruned",
                            marker={"color": "grey", "symbol": "x"})
        if not done.empty:
            values = done["objective"].astype(float)
            best = values.cummax() if goal == "maximize" else values.cummin()
            fig.add_scatter(x=done["trial"], y=best, mode="lines", line={"shape": "hv", "color": colour},
                            name=f"{label}best so far")
    fig.update_layout(xaxis_title="trial", yaxis_title=metric, title="Objective by trial")
    return fig


def parallel_coordinates(params: pd.DataFrame, values: pd.Series, metric: str, goal: str):
    """One axis per searched parameter and a last one for `metric`; each ranked run is a
    line coloured by its value (bright = better). Positive numbers spanning more than 20x
    are on a log10 axis; choices are spread evenly; a parameter a run does not have
    (conditional) sits at "absent", below the axis's values."""
    import plotly.graph_objects as go

    value = pd.to_numeric(values, errors="coerce").astype(float).to_numpy()
    dimensions = [_dimension(name, params[name]) for name in params.columns]
    dimensions.append({"label": metric, "values": value})
    colorscale = "Viridis" if goal == "maximize" else "Viridis_r"
    fig = go.Figure(go.Parcoords(line={"color": value, "colorscale": colorscale, "showscale": True,
                                       "colorbar": {"title": {"text": metric}}}, dimensions=dimensions))
    fig.update_layout(title=f"{len(value)} ranked runs: parameters and {metric}")
    return fig


def importances(values: dict[str, float], method: str, metric: str):
    """Parameter importances as horizontal bars, largest on top."""
    import plotly.graph_objects as go

    names = list(values)[::-1]
    fig = go.Figure(go.Bar(x=[values[n] for n in names], y=names, orientation="h"))
    fig.update_layout(title=f"Parameter importance for {metric}: {method}", xaxis_title="importance (share)")
    return fig


def slices(runs: pd.DataFrame, params: Sequence[str], column: str, metric: str):
    """One panel per parameter: `metric` (the frame's `column`) against the parameter's
    value for each ranked run, one colour per study."""
    from plotly.subplots import make_subplots

    cols = min(3, len(params))
    rows = math.ceil(len(params) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(params), shared_yaxes=True)
    for i, (study, part) in enumerate(runs.groupby("study", sort=False)):
        for k, name in enumerate(params):
            present = part[part[name].notna()]
            numeric = _numeric(present[name])
            x = pd.to_numeric(present[name]) if numeric else present[name].astype(str)
            fig.add_scatter(x=x, y=present[column], mode="markers", name=study, legendgroup=study,
                            showlegend=k == 0, marker={"color": _colour(i)}, text=present["trial"],
                            hovertemplate=f"trial %{{text}}: {name} %{{x}}, {metric} %{{y}}",
                            row=k // cols + 1, col=k % cols + 1)
            if numeric and _log_scale(x):
                fig.update_xaxes(type="log", row=k // cols + 1, col=k % cols + 1)
    fig.update_yaxes(title_text=metric, col=1)
    fig.update_layout(title=f"{metric} against each parameter", height=max(400, 300 * rows))
    return fig


def page(title: str, figures: Sequence[tuple[str, Any]], notes: Sequence[str] = ()) -> str:
    """One self-contained HTML page: a heading per figure, plotly.js embedded once."""
    body = [f"<h1>{escape(title)}</h1>"]
    for i, (heading, fig) in enumerate(figures):
        body.append(f"<h2>{escape(heading)}</h2>")
        body.append(fig.to_html(full_html=False, include_plotlyjs=i == 0))
    body += [f"<p>note: {escape(n)}</p>" for n in notes]
    return ('<!doctype html>\n<html><head><meta charset="utf-8">'
            f"<title>{escape(title)}</title></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


# --------------------------------------------------------------------------- axes


def _colour(i: int) -> str:
    import plotly.colors

    palette = plotly.colors.qualitative.Plotly
    return palette[i % len(palette)]


def _numeric(column: pd.Series) -> bool:
    present = column.dropna()
    return (len(present) > 0 and pd.to_numeric(present, errors="coerce").notna().all()
            and not present.map(lambda v: isinstance(v, bool)).any())


def _log_scale(x: pd.Series) -> bool:
    low, high = float(np.nanmin(x)), float(np.nanmax(x))
    return low > 0 and high / low > LOG_RATIO


def _dimension(name: str, column: pd.Series) -> dict:
    """One parallel-coordinates axis (plotly's Parcoords has neither log nor categorical axes)."""
    missing = column.isna()
    if _numeric(column):
        x = pd.to_numeric(column, errors="coerce").astype(float)
        log = _log_scale(x)
        if log:
            x = np.log10(x)
        low, high = float(np.nanmin(x)), float(np.nanmax(x))
        ticks = np.linspace(low, high, 5) if high > low else np.array([low])
        text = [f"{10 ** t:.3g}" if log else f"{t:.3g}" for t in ticks]
        if missing.any():
            absent = low - max(0.15 * (high - low), 0.1)
            x = x.fillna(absent)
            ticks, text = np.append(absent, ticks), ["absent", *text]
        return {"label": f"{name} (log)" if log else name, "values": x.to_numpy(), "tickvals": ticks,
                "ticktext": text}
    choices = sorted(column.dropna().astype(str).unique()) + (["absent"] if missing.any() else [])
    code = {c: i for i, c in enumerate(choices)}
    x = column.map(lambda v: code["absent"] if pd.isna(v) else code[str(v)])
    return {"label": name, "values": x.to_numpy(dtype=float), "tickvals": list(range(len(choices))),
            "ticktext": choices}

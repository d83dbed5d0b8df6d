"""The report's front figures: every objective pair in 2-D, three metrics in 3-D, with
budgets, the latency error band and a log/linear switch on cost axes."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from itertools import combinations
from typing import Any

from spaces import layer_rows

from .._format import cell
from ..config import METRIC_DIRECTIONS, Objective
from ..record import TrialRecord
from ._plan_facts import latency_band, latency_error, latency_text
from ._run import RunData, overshoots
from ._style import (
    BUDGET,
    FEASIBLE,
    FRONT,
    INFEASIBLE,
    KNEE,
    LATENCY,
    RUG_Y,
    UNTRAINED,
    UNTRAINED_C,
    axis_label,
)

__all__ = ["front_2d", "front_3d", "pair_axes"]


def _hover(run: RunData, t: TrialRecord) -> str:
    """The hover box of one trial: number, standing, objectives, constraints and the plan."""
    standing = "feasible" if t.feasible else ("infeasible" if t.trained else (t.status or t.state))
    if t.number in run.front:
        standing += ", on the front"
    if t.number == run.knee:
        standing += ", knee"
    lines = [f"<b>trial {t.number}</b> ({html.escape(standing)})"]
    error = latency_error(run)
    for j, o in enumerate(run.objectives):
        if t.values is None:
            continue
        if o.metric == LATENCY and error is not None:
            lines.append(f"latency: {latency_text(t.values[j], error)}")
            continue
        v = "not trained" if o.direction == "maximize" and not t.trained else t.values[j]
        lines.append(f"{html.escape(axis_label(o.metric))}: {cell(v)}")
    over = overshoots(t)
    if over:
        lines.append("over budget: " + html.escape(", ".join(over)))
    if t.refined:
        shown = [f"{k} {cell(v)}" for k, v in t.refined.items() if k in run.metric_names]
        lines.append(f"refined ({t.refined.get('epochs', '?')} epochs): " + ", ".join(shown))
    if t.recipe:
        lines.append("recipe: " + html.escape(str(t.recipe)))
    if t.plan_text:
        lines.append("plan: " + html.escape(t.plan_text))
    rows = layer_rows(t.plan)
    if rows:
        shown = [
            f"{html.escape(r['layer'])}: w{r['bits']} p{r['prune_ratio']:.0%} r{r['rank']:.2g}"
            for r in rows[:12]
        ]
        if len(rows) > 12:
            shown.append(f"... {len(rows) - 12} more layers")
        lines.extend(shown)
    return "<br>".join(lines)


def _groups(run: RunData) -> list[tuple[str, list[TrialRecord], dict[str, Any]]]:
    """Trials with objective values, split into drawing groups (name, trials, marker)."""
    front = set(run.front)
    with_values = [t for t in run.trials if t.values is not None and t.state == "COMPLETE"]
    untrained = [t for t in with_values if not t.trained]
    infeasible = [t for t in with_values if t.trained and not t.feasible]
    feasible = [t for t in with_values if t.feasible and t.number not in front]
    on_front = [t for t in with_values if t.number in front]
    knee = [t for t in on_front if t.number == run.knee]
    return [
        (UNTRAINED, untrained, {"color": UNTRAINED_C, "symbol": "x", "size": 7}),
        ("infeasible (trained)", infeasible, {"color": INFEASIBLE, "size": 8}),
        ("feasible", feasible, {"color": FEASIBLE, "size": 8, "opacity": 0.7}),
        (
            "Pareto front",
            on_front,
            {"color": FRONT, "size": 11, "line": {"color": "#333", "width": 1}},
        ),
        (
            "knee",
            knee,
            {"color": KNEE, "symbol": "star", "size": 18, "line": {"color": "#111", "width": 1}},
        ),
    ]


def pair_axes(objectives: Sequence[Objective]) -> list[tuple[int, int]]:
    """Objective index pairs (x, y); a cost goes on x and a maximised metric on y."""
    pairs = []
    for i, j in combinations(range(len(objectives)), 2):
        if objectives[i].direction == "maximize" and objectives[j].direction == "minimize":
            pairs.append((j, i))
        else:
            pairs.append((i, j))
    return pairs


def _log_ok(run: RunData, metric: str, direction: str) -> bool:
    """A cost axis goes on a log scale: minimised, and every recorded value positive."""
    vals = [v for t in run.trials if (v := t.value(metric)) is not None]
    return direction == "minimize" and bool(vals) and min(vals) > 0


def _scale_menu(axes: Sequence[str], *, x: float = 1.0, y: float = 1.0) -> dict[str, Any]:
    """Buttons log | linear that switch the given layout axes (`xaxis`, `scene.yaxis`, ...)."""
    return {
        "type": "buttons",
        "direction": "right",
        "buttons": [
            {
                "label": kind,
                "method": "relayout",
                "args": [{f"{a}.type": kind for a in axes}],
            }
            for kind in ("log", "linear")
        ],
        "x": x,
        "xanchor": "right",
        "y": y,
        "yanchor": "bottom",
        "pad": {"t": 0, "r": 0, "b": 4, "l": 0},
        "showactive": True,
        "font": {"size": 11},
        "bgcolor": "#f3f3f3",
    }


def _errors(run: RunData, trials: Sequence[TrialRecord], metric: str) -> dict[str, Any] | None:
    """Error bars of the profile's latency band on a latency axis (None: no band)."""
    error = latency_error(run)
    if metric != LATENCY or error is None:
        return None
    bands = [latency_band(float(t.value(metric) or 0.0), error) for t in trials]
    vals = [float(t.value(metric) or 0.0) for t in trials]
    return {
        "type": "data",
        "symmetric": False,
        "array": [hi - v for v, (_lo, hi) in zip(vals, bands)],
        "arrayminus": [v - lo for v, (lo, _hi) in zip(vals, bands)],
        "color": "rgba(214,39,40,0.55)",
        "thickness": 1.5,
        "width": 4,
    }


def _budget_line(run: RunData, o: Objective) -> tuple[float, str] | None:
    """Where an objective's budget line goes, with its label.

    With `budget_margin: p90` the error bars show each plan's bound against the latency budget.
    """
    b = run.budget_lines.get(o.metric)
    if b is None:
        return None
    kind = "floor" if o.direction == "maximize" else "budget"
    label = f"{axis_label(o.metric)} {kind} {cell(b)}"
    if o.metric == LATENCY and run.experiment.get("budget_margin") == "p90":
        label = f"latency budget {cell(b)}, checked at the p90 bound"
    return b, label


def _budget_text_side(run: RunData, o: Objective, b: float) -> str:
    """Where a vertical budget line's label goes: to the left of the line when the line is in
    the right half of the plotted values (on the axis's own scale), else to the right."""
    vals = [v for t in run.trials if (v := t.value(o.metric)) is not None]
    if not vals:
        return "bottom left"
    lo, hi = min([*vals, b]), max([*vals, b])
    if _log_ok(run, o.metric, o.direction) and b > 0:
        lo, hi, b = math.log10(lo), math.log10(hi), math.log10(b)
    return "bottom left" if b >= (lo + hi) / 2 else "bottom right"


def front_2d(run: RunData, xi: int, yi: int) -> Any:
    import plotly.graph_objects as go

    ox, oy = run.objectives[xi], run.objectives[yi]
    fig = go.Figure()
    rug = False
    for name, trials, marker in _groups(run):
        if not trials:
            continue
        if name == UNTRAINED and "maximize" in (ox.direction, oy.direction):
            # Never trained, so no real accuracy: a rug along the bottom shows their cost
            # without stretching the accuracy axis down to a meaningless 0.
            if oy.direction == "maximize" and ox.direction == "minimize":
                rug = True
                fig.add_trace(
                    go.Scatter(
                        x=[t.values[xi] for t in trials if t.values],
                        y=[RUG_Y] * len(trials),
                        yaxis="y2",
                        mode="markers",
                        name=name,
                        marker=marker,
                        text=[_hover(run, t) for t in trials],
                        hovertemplate="%{text}<extra></extra>",
                    )
                )
            continue
        on_front = name in ("Pareto front", "knee")
        fig.add_trace(
            go.Scatter(
                x=[t.values[xi] for t in trials if t.values],
                y=[t.values[yi] for t in trials if t.values],
                error_x=_errors(run, trials, ox.metric) if on_front else None,
                error_y=_errors(run, trials, oy.metric) if on_front else None,
                mode="markers",
                name=name,
                marker=marker,
                text=[_hover(run, t) for t in trials],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    if len(run.objectives) == 2 and run.front:
        # With two objectives the front is a staircase: draw it.
        pts = sorted((t.values[xi], t.values[yi]) for t in run.front_trials if t.values)
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in pts],
                y=[p[1] for p in pts],
                mode="lines",
                line={
                    "color": FRONT,
                    "shape": "hv" if oy.direction == "maximize" else "vh",
                    "width": 1.5,
                },
                name="front line",
                hoverinfo="skip",
                showlegend=False,
            )
        )
    # Budgets as line traces on hidden 0-1 axes: they stay put when an axis turns log/linear.
    for axis, o in (("x", ox), ("y", oy)):
        line = _budget_line(run, o)
        if line is None:
            continue
        b, label = line
        span = (
            {"yaxis": "y2", "x": [b, b], "y": [0, 1]}
            if axis == "x"
            else {"xaxis": "x2", "x": [0, 1], "y": [b, b]}
        )
        fig.add_trace(
            go.Scatter(
                **span,
                mode="lines+text",
                line={"color": BUDGET, "dash": "dash", "width": 2},
                text=["", label] if axis == "x" else [label, ""],
                # The label runs into the plot, away from the nearer edge: a budget in the
                # right half of the axis would otherwise run off the figure, under the mode bar.
                textposition=_budget_text_side(run, ox, b) if axis == "x" else "top right",
                textfont={"color": BUDGET, "size": 11},
                name=f"{axis_label(o.metric)} budget",
                hoverinfo="skip",
                showlegend=False,
                cliponaxis=False,
            )
        )
        if axis == "x":
            rug = True  # the hidden y2 axis is needed
        else:
            fig.update_layout(
                xaxis2={"overlaying": "x", "range": [0, 1], "visible": False, "fixedrange": True}
            )
    logs = [a for a, o in (("xaxis", ox), ("yaxis", oy)) if _log_ok(run, o.metric, o.direction)]
    band = " ±p90" if LATENCY in (ox.metric, oy.metric) and latency_error(run) is not None else ""
    fig.update_layout(
        title={"text": f"{axis_label(oy.metric)} vs {axis_label(ox.metric)}{band}", "x": 0.01},
        xaxis_title=f"{axis_label(ox.metric)} ({'lower' if ox.sign > 0 else 'higher'} is better)",
        yaxis_title=f"{axis_label(oy.metric)} ({'lower' if oy.sign > 0 else 'higher'} is better)",
        height=440,
        margin={"l": 60, "r": 20, "t": 70, "b": 50},
        legend={"orientation": "h", "y": -0.2},
        template="plotly_white",
        updatemenus=[_scale_menu(logs, y=1.02)] if logs else [],
    )
    for a in logs:
        fig.update_layout({a: {"type": "log"}})
    if rug:
        fig.update_layout(
            yaxis2={"overlaying": "y", "range": [0, 1], "visible": False, "fixedrange": True}
        )
    return fig


def _log_ticks(run: RunData, metric: str) -> list[float]:
    """1-2-5 ticks across a metric's values: a 3-D log axis otherwise labels every minor step
    (2, 3, ... 9), too close to read."""
    vals = [v for t in run.trials if (v := t.value(metric)) is not None and v > 0]
    if not vals:
        return []
    lo, hi = min(vals), max(vals)
    ticks = [
        m * 10.0**k
        for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        for m in (1, 2, 5)
    ]
    inside = [x for x in ticks if lo <= x <= hi]
    return inside if len(inside) >= 2 else [x for x in ticks if lo / 10 <= x <= hi * 10]


def _axes_3d(run: RunData) -> list[tuple[str, int | None]]:
    """Three (metric, objective index or None) axes: the objectives, topped up with metrics."""
    axes: list[tuple[str, int | None]] = []
    axes += [(o.metric, j) for j, o in enumerate(run.objectives)][:3]
    for m in ("accuracy", "latency_ms", "weight_bytes", "flash_bytes", "params", "macs"):
        if len(axes) >= 3:
            break
        if m not in [a for a, _ in axes] and any(t.value(m) is not None for t in run.trials):
            axes.append((m, None))
    return axes


def front_3d(run: RunData) -> Any | None:
    import plotly.graph_objects as go

    axes = _axes_3d(run)
    if len(axes) < 3:
        return None

    def coord(t: TrialRecord, ax: tuple[str, int | None]) -> float | None:
        metric, j = ax
        if j is not None and t.values is not None:
            return t.values[j]
        return t.value(metric)

    maximised = any(
        METRIC_DIRECTIONS.get(m) == "maximize" or (j is not None and run.objectives[j].sign < 0)
        for m, j in axes
    )
    fig = go.Figure()
    for name, trials, marker in _groups(run):
        if name == UNTRAINED and maximised:
            continue  # never trained: no accuracy to place them at
        pts = [(t, [coord(t, a) for a in axes]) for t in trials]
        pts = [(t, c) for t, c in pts if all(v is not None for v in c)]
        if not pts:
            continue
        m = {k: v for k, v in marker.items() if k != "line"}
        m["size"] = max(3, int(m.get("size", 8)) // 2 + 1)
        if m.get("symbol") == "star":
            m["symbol"] = "diamond"
        fig.add_trace(
            go.Scatter3d(
                x=[c[0] for _, c in pts],
                y=[c[1] for _, c in pts],
                z=[c[2] for _, c in pts],
                mode="markers",
                name=name,
                marker=m,
                text=[_hover(run, t) for t, _ in pts],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    scene: dict[str, Any] = {}
    logs = []
    for a, (metric, _j) in zip(("xaxis", "yaxis", "zaxis"), axes):
        # Few ticks (a log axis otherwise labels every minor step), small titles.
        scene[a] = {
            "title": {"text": axis_label(metric), "font": {"size": 12}},
            "nticks": 5,
            "tickfont": {"size": 10},
        }
        if _log_ok(run, metric, METRIC_DIRECTIONS.get(metric, "minimize")):
            scene[a]["type"] = "log"
            scene[a]["tickvals"] = _log_ticks(run, metric)
            logs.append(f"scene.{a}")
    # The camera a little farther out than plotly's default, so the whole box, its tick labels
    # and axis titles stay inside the figure at any width (the default cuts the nearest title).
    scene["camera"] = {"eye": {"x": 1.55, "y": 1.55, "z": 1.05}}
    fig.update_layout(
        title={"text": "Front in 3-D", "x": 0.01},
        scene=scene,
        height=560,
        margin={"l": 0, "r": 0, "t": 70, "b": 0},
        template="plotly_white",
        legend={"orientation": "h"},
        updatemenus=[_scale_menu(logs, y=1.0)] if logs else [],
    )
    return fig

"""report.html: a self-contained, offline review page drawn only from `search.pareto.RunData`.

plotly.js is inlined once, so the file opens without a network. Figures are built by small pure
functions (`figures(run)` returns them by name) so tests can inspect them without a browser; the
numbers they plot beyond the trial records (summary features, per-layer shares, the latency
band) come from `search.plan_summary`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

from ._io import atomic_write
from .config import METRIC_DIRECTIONS
from .pareto import (
    Objective,
    RunData,
    TrialRecord,
    layer_rows,
    load_run,
    write_outputs,
)
from .plan_summary import (
    FEATURES,
    SHARE_FIGURES,
    PlanShares,
    latency_band,
    latency_error,
    latency_text,
    layer_shares,
    summary_features,
)

# load_run and write_outputs live in search.pareto; they are re-exported here for callers that
# think of the whole review step as "the report".
__all__ = ["figures", "load_run", "render_report", "report_html", "write_outputs"]

FEASIBLE = "#1f77b4"
FRONT = "#d62728"
KNEE = "#2ca02c"
INFEASIBLE = "#b0b0b0"
UNTRAINED_C = "#9a9a9a"
BUDGET = "#9467bd"
UNTRAINED = "over budget / not trained"
RUG_Y = 0.03  # height (fraction of the plot) of the rug of untrained plans
MAX_LAYER_PLANS = 40  # plans offered in the per-layer view's menu
LATENCY = "latency_ms"  # the predicted latency: the metric the profile's error band is for
BEFORE_C, AFTER_C = "#9ecae1", "#d62728"  # the why-this-plan bars: base model, the plan

_UNITS = {"ms": "ms", "bytes": "bytes", "kb": "kB", "s": "s"}


def _label(metric: str) -> str:
    """`latency_ms` -> `latency (ms)`."""
    head, _, tail = metric.rpartition("_")
    if head and tail in _UNITS:
        return f"{head.replace('_', ' ')} ({_UNITS[tail]})"
    return metric.replace("_", " ")


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v.is_integer() and abs(v) < 1e15:
            return _fmt(int(v))
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.4g}"
        return f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) < 1000 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    return str(v)


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
        lines.append(f"{html.escape(_label(o.metric))}: {_fmt(v)}")
    over = [f"{c} {v:+.0%}" for c, v in t.constraints.items() if v > 0]
    if over:
        lines.append("over budget: " + html.escape(", ".join(over)))
    if t.refined:
        shown = [f"{k} {_fmt(v)}" for k, v in t.refined.items() if k in run.metric_names]
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


def _pair_axes(objectives: Sequence[Objective]) -> list[tuple[int, int]]:
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
    vals = [float(t.value(metric) or 0.0) for t in trials]
    return {
        "type": "data",
        "symmetric": True,
        "array": [v * error for v in vals],
        "color": "rgba(214,39,40,0.55)",
        "thickness": 1.5,
        "width": 4,
    }


def _budget_line(run: RunData, o: Objective) -> tuple[float, str] | None:
    """Where an objective's budget line goes, with its label.

    With `budget_margin: p90` the latency budget is drawn where it is (the stored constraint
    values put it at budget / (1 + p90)), and the error bars show each plan's bound against it.
    """
    b = run.budget_lines.get(o.metric)
    if b is None:
        return None
    kind = "floor" if o.direction == "maximize" else "budget"
    label = f"{_label(o.metric)} {kind} {_fmt(b)}"
    margin = run.experiment.get("budget_margin")
    real = run.budgets.get(o.metric)
    if o.metric == LATENCY and margin == "p90" and isinstance(real, (int, float)):
        b = float(real)
        label = f"latency budget {_fmt(b)}, checked at the p90 bound"
    return b, label


def _front_2d(run: RunData, xi: int, yi: int) -> Any:
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
                textposition="bottom right" if axis == "x" else "top right",
                textfont={"color": BUDGET, "size": 11},
                name=f"{_label(o.metric)} budget",
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
        title={"text": f"{_label(oy.metric)} vs {_label(ox.metric)}{band}", "x": 0.01},
        xaxis_title=f"{_label(ox.metric)} ({'lower' if ox.sign > 0 else 'higher'} is better)",
        yaxis_title=f"{_label(oy.metric)} ({'lower' if oy.sign > 0 else 'higher'} is better)",
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


def _front_3d(run: RunData) -> Any | None:
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
        scene[a] = {"title": {"text": _label(metric)}}
        if _log_ok(run, metric, METRIC_DIRECTIONS.get(metric, "minimize")):
            scene[a]["type"] = "log"
            logs.append(f"scene.{a}")
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


def _parcoords(run: RunData) -> Any | None:
    """Parallel coordinates on the plans' summary features (one axis each, whatever the depth
    of the network), then the objectives and feasibility. Per-layer detail: the per-layer view.
    """
    import plotly.graph_objects as go

    trials = [t for t in run.trials if t.plan is not None and t.state == "COMPLETE"]
    if not trials:
        return None
    feats = [summary_features(run, t) for t in trials]
    dims = []
    for k in FEATURES:
        col = [f[k] for f in feats]
        if k == "family":
            cats = sorted({str(v) for v in col})
            dims.append(
                {
                    "label": k,
                    "values": [cats.index(str(v)) for v in col],
                    "tickvals": list(range(len(cats))),
                    "ticktext": cats,
                }
            )
        elif any(v is not None for v in col):
            dims.append({"label": k, "values": [float("nan") if v is None else v for v in col]})
    for j, o in enumerate(run.objectives):
        dims.append(
            {
                "label": _label(o.metric),
                "values": [t.values[j] if t.values else float("nan") for t in trials],
            }
        )
    dims.append(
        {
            "label": "feasible",
            "values": [int(t.feasible) for t in trials],
            "tickvals": [0, 1],
            "ticktext": ["no", "yes"],
        }
    )
    # Colour: the first objective on the feasible trials (yellow = better), grey otherwise.
    o0 = run.objectives[0]
    good = [t.values[0] for t in trials if t.feasible and t.values]
    lo, hi = (min(good), max(good)) if good else (0.0, 1.0)

    def shade(t: TrialRecord) -> float:
        if not t.feasible or not t.values:
            return 0.0
        x = (t.values[0] - lo) / (hi - lo) if hi > lo else 1.0
        return 0.1 + 0.9 * (x if o0.direction == "maximize" else 1.0 - x)

    fig = go.Figure(
        go.Parcoords(
            line={
                "color": [shade(t) for t in trials],
                "cmin": 0.0,
                "cmax": 1.0,
                "colorscale": [
                    [0.0, "#cfcfcf"],
                    [0.09, "#cfcfcf"],
                    [0.1, "#440154"],
                    [0.55, "#21918c"],
                    [1.0, "#fde725"],
                ],
            },
            dimensions=dims,
            labelfont={"size": 11},
            tickfont={"size": 10},
        )
    )
    fig.update_layout(
        title={
            "text": f"Plans at a glance (colour: {_label(o0.metric)} of feasible trials, "
            "yellow = better; grey = infeasible)",
            "x": 0.01,
        },
        height=460,
        margin={"l": 70, "r": 70, "t": 100, "b": 30},
    )
    return fig


def _hv_history(run: RunData) -> Any | None:
    import plotly.graph_objects as go

    if not run.hypervolume_history:
        return None
    fig = go.Figure(
        go.Scatter(
            x=[n for n, _ in run.hypervolume_history],
            y=[hv for _, hv in run.hypervolume_history],
            mode="lines+markers",
            line={"shape": "hv", "color": FEASIBLE},
            name="hypervolume",
            hovertemplate="after trial %{x}: %{y:.4f}<extra></extra>",
        )
    )
    fig.update_layout(
        title="Hypervolume of the feasible front, trial by trial",
        xaxis_title="trial",
        yaxis_title="normalised hypervolume",
        height=360,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        template="plotly_white",
    )
    return fig


def _layer_candidates(run: RunData) -> list[TrialRecord]:
    if run.front:
        order = [run.knee] + [n for n in run.front if n != run.knee]
        return [run.trial(n) for n in order if n is not None][:MAX_LAYER_PLANS]
    return [run.trial(n) for n in run.least_violating]


def _layers(run: RunData) -> Any | None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    cands = [t for t in _layer_candidates(run) if layer_rows(t.plan)]
    if not cands:
        return None
    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.1,
        subplot_titles=("weight bits", "prune ratio (channels removed)", "kept rank fraction"),
    )
    per = 3
    for i, t in enumerate(cands):
        rows = layer_rows(t.plan)
        names = [r["layer"] for r in rows]
        skipped = t.skipped_layers
        hover = [
            f"{html.escape(r['layer'])}<br>bits {r['bits']}<br>prune {r['prune_ratio']:.0%}"
            f"{' (global)' if r['prune_global'] else ''}<br>rank {r['rank']:.2f}"
            + (
                f"<br>skipped: {html.escape(str(skipped[r['layer']]))}"
                if r["layer"] in skipped
                else ""
            )
            for r in rows
        ]
        for row, key, color in (
            (1, "bits", "#4c78a8"),
            (2, "prune_ratio", "#f58518"),
            (3, "rank", "#54a24b"),
        ):
            fig.add_trace(
                go.Bar(
                    x=names,
                    y=[r[key] for r in rows],
                    marker_color=color,
                    name=f"trial {t.number} {key}",
                    visible=i == 0,
                    hovertext=hover,
                    hovertemplate="%{hovertext}<extra></extra>",
                    texttemplate="%{y:.3~g}",
                    textposition="outside",
                    cliponaxis=False,
                    showlegend=False,
                ),
                row=row,
                col=1,
            )
    label = "knee" if run.front else "least violating"
    buttons = []
    for i, t in enumerate(cands):
        vis = [False] * (per * len(cands))
        vis[per * i : per * i + per] = [True] * per
        tag = " (knee)" if t.number == run.knee else ""
        buttons.append(
            {
                "label": f"trial {t.number}{tag}",
                "method": "update",
                "args": [
                    {"visible": vis},
                    {"title": f"Per-layer plan of trial {t.number}{tag}: {t.plan_text}"},
                ],
            }
        )
    first = cands[0]
    fig.update_layout(
        title=f"Per-layer plan of trial {first.number}"
        f"{' (' + label + ')' if first.number in (run.knee, *run.least_violating[:1]) else ''}"
        f": {first.plan_text}",
        updatemenus=[
            {
                "buttons": buttons,
                "x": 1.0,
                "xanchor": "right",
                "y": 1.18,
                "yanchor": "top",
                "showactive": True,
            }
        ],
        height=560,
        margin={"l": 60, "r": 20, "t": 110, "b": 60},
        template="plotly_white",
    )
    # Headroom above each panel's top value for the bar labels, clear of the next title.
    fig.update_yaxes(range=[0, 38], row=1, col=1)
    fig.update_yaxes(range=[0, 1.2], row=2, col=1)
    fig.update_yaxes(range=[0, 1.2], row=3, col=1)
    return fig


def _amount(v: float, unit: str) -> str:
    """`3.68 ms`, `366 kB` (1 kB = 1024 bytes, as the budgets count)."""
    if unit == "bytes":
        return f"{v / 1024:.3g} kB" if v >= 1024 else f"{v:.0f} B"
    return f"{v:.3g} {unit}"


def _why_total(shares: PlanShares, key: str, unit: str) -> str:
    before, after = shares.total(key, "before"), shares.total(key, "after")
    ratio = f" ({after / before:.0%})" if before > 0 else ""
    return f"{_amount(before, unit)} \u2192 {_amount(after, unit)}{ratio}"


def _why(run: RunData) -> Any | None:
    """Why this plan: each layer's latency, weight bytes and activation memory in the base model
    and in a front plan, as fractions of the base model's total (a menu picks the plan)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    cands = [(t, layer_shares(run, t)) for t in _layer_candidates(run)]
    data = [(t, sh) for t, sh in cands if sh is not None and sh.layers]
    if not data:
        return None
    n_fig = len(SHARE_FIGURES)
    fig = make_subplots(
        rows=1,
        cols=n_fig,
        shared_yaxes=True,
        horizontal_spacing=0.04,
        subplot_titles=[label for _, label, _ in SHARE_FIGURES],
    )
    per = 2 * n_fig
    titles = []
    for i, (_t, sh) in enumerate(data):
        names = [s_.layer for s_ in sh.layers]
        for col, (key, label, unit) in enumerate(SHARE_FIGURES, start=1):
            for side, color, who in (
                ("before", BEFORE_C, "base model"),
                ("after", AFTER_C, "plan"),
            ):
                hover = [
                    f"<b>{html.escape(s_.layer)}</b> ({s_.kind})"
                    + (f" {html.escape(s_.plan)}" if s_.plan else "")
                    + f"<br>{label}: base {_amount(float(s_.before[key]), unit)}, "
                    f"plan {_amount(float(s_.after[key]), unit)}"
                    + f"<br>share: {sh.share(s_, key, 'before'):.0%} of the base's, "
                    f"{sh.share(s_, key, 'after'):.0%} of the plan's"
                    for s_ in sh.layers
                ]
                fig.add_trace(
                    go.Bar(
                        y=names,
                        x=[sh.of_base(s_, key, side) for s_ in sh.layers],
                        orientation="h",
                        marker_color=color,
                        name=who,
                        legendgroup=who,
                        showlegend=col == 1,
                        visible=i == 0,
                        hovertext=hover,
                        hovertemplate="%{hovertext}<extra>" + who + "</extra>",
                    ),
                    row=1,
                    col=col,
                )
        titles.append(
            [f"{label}<br>{_why_total(sh, key, unit)}" for key, label, unit in SHARE_FIGURES]
        )
    annotations = list(fig.layout.annotations)

    def heads(i: int) -> list[dict[str, Any]]:
        return [
            {**a.to_plotly_json(), "text": text, "font": {"size": 12}}
            for a, text in zip(annotations, titles[i])
        ]

    def title(i: int) -> str:
        t, sh = data[i]
        tag = " (knee)" if t.number == run.knee else ""
        note = "; a student network: its layers replace the base model's" if sh.student else ""
        return f"Why trial {t.number}{tag}<br><sup>{html.escape(t.plan_text)}{note}</sup>"

    buttons = []
    for i, (t, _sh) in enumerate(data):
        vis = [False] * (per * len(data))
        vis[per * i : per * i + per] = [True] * per
        tag = " (knee)" if t.number == run.knee else ""
        buttons.append(
            {
                "label": f"trial {t.number}{tag}",
                "method": "update",
                "args": [{"visible": vis}, {"title.text": title(i), "annotations": heads(i)}],
            }
        )
    n_layers = max(len(sh.layers) for _, sh in data)
    fig.update_layout(
        title={"text": title(0), "x": 0.01},
        annotations=heads(0),
        barmode="group",
        bargap=0.25,
        height=max(380, 22 * n_layers + 190),
        margin={"l": 90, "r": 20, "t": 140, "b": 40},
        template="plotly_white",
        legend={"orientation": "h", "y": -0.08, "x": 0.0},
        updatemenus=[
            {
                "buttons": buttons,
                "x": 1.0,
                "xanchor": "right",
                "y": 1.0,
                "yanchor": "bottom",
                "pad": {"b": 52},
                "showactive": True,
            }
        ],
    )
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(tickformat=".0%", rangemode="tozero")
    return fig


def figures(run: RunData) -> dict[str, Any]:
    """Every figure of the report by name (plotly Figures); absent when there is nothing to draw.

    Names: `front_<x>_<y>` per objective pair, `front_3d`, `parcoords`, `hypervolume`, `layers`,
    `why`.
    """
    out: dict[str, Any] = {}
    for xi, yi in _pair_axes(run.objectives):
        out[f"front_{run.objectives[xi].metric}_{run.objectives[yi].metric}"] = _front_2d(
            run, xi, yi
        )
    for name, make in (
        ("front_3d", _front_3d),
        ("parcoords", _parcoords),
        ("hypervolume", _hv_history),
        ("layers", _layers),
        ("why", _why),
    ):
        fig = make(run)
        if fig is not None:
            out[name] = fig
    for fig in out.values():
        # plotly's mode bar, upright in the right margin: off the titles and menus.
        fig.update_layout(
            modebar={"orientation": "v"},
            margin_r=max(fig.layout.margin.r or 0, 40),
            title_x=0.01,
        )
    return out


# --- HTML --------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1400px;
 padding:16px 24px;color:#222}
h1{font-size:1.5em;margin:.2em 0}
h2{font-size:1.15em;margin:1.4em 0 .4em;border-bottom:1px solid #ddd}
.meta{color:#555;font-size:.92em} .meta b{color:#222}
.banner{background:#fff3cd;border:2px solid #d39e00;border-radius:6px;padding:10px 16px;
 margin:12px 0}
.banner h2{border:0;margin:.2em 0;color:#7a5500}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:12px}
table{border-collapse:collapse;font-size:.85em;width:100%}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3;position:sticky;top:0}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th[data-order=asc]::after{content:" \\25B2"}
table.sortable th[data-order=desc]::after{content:" \\25BC"}
tr.front td{background:#fdecea} tr.knee td{background:#e3f4e1;font-weight:600}
tr.infeasible td{color:#888} .scroll{max-height:600px;overflow:auto}
table.sortable td:nth-last-child(2){min-width:260px}
.note{color:#666;font-size:.85em} td.band{white-space:nowrap}
"""

# Sort on header click: numbers numerically, everything else as text; blanks last.
_SORT_JS = """
// Plots drawn while the page was still filling in may have a stale width: fit them once.
window.addEventListener('load', function () {
  document.querySelectorAll('.js-plotly-plot').forEach(function (d) { Plotly.Plots.resize(d); });
});
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var asc = th.getAttribute('data-order') !== 'asc';
      table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('data-order'); });
      th.setAttribute('data-order', asc ? 'asc' : 'desc');
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var c = row.cells[col];
        var v = c.hasAttribute('data-v') ? c.getAttribute('data-v') : c.textContent;
        var n = parseFloat(v);
        return {blank: v === '', num: isNaN(n) || !isFinite(v) ? null : n, text: v};
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x.blank !== y.blank) { return x.blank ? 1 : -1; }
        var r = (x.num !== null && y.num !== null) ? x.num - y.num : x.text.localeCompare(y.text);
        return asc ? r : -r;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


class _Band:
    """A latency table cell: sorts on the value, shows the p90 band beside it."""

    def __init__(self, value: float, error: float | None) -> None:
        self.value, self.error = value, error


def _cell(v: Any) -> str:
    if isinstance(v, _Band):
        if v.error is None:
            return _cell(v.value)
        lo, hi = latency_band(v.value, v.error)
        text = f"{v.value:.3g} ({lo:.3g}-{hi:.3g})"
        return f'<td class="band" data-v="{html.escape(str(v.value))}">{html.escape(text)}</td>'
    raw = "" if v is None else (str(int(v)) if isinstance(v, bool) else str(v))
    return f'<td data-v="{html.escape(raw)}">{html.escape(_fmt(v))}</td>'


def _trial_table(run: RunData, trials: Sequence[TrialRecord], *, table_id: str) -> str:
    front = set(run.front)
    head = ["trial", "state", "status", "feasible", "front"]
    error = latency_error(run)
    head += [
        _label(o.metric) + (" ±p90" if o.metric == LATENCY and error is not None else "")
        for o in run.objectives
    ]
    head += [f"{c} (over if > 0)" for c in run.constraint_names]
    refined = any(t.refined for t in run.trials)
    p0 = run.objectives[0].metric
    if refined:
        head.append(f"refined {p0}")
    head += ["violation", "recipe", "plan", "fail reason"]
    out = [f'<table class="sortable" id="{table_id}"><thead><tr>']
    out += [f"<th>{html.escape(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for t in trials:
        cls = (
            "knee"
            if t.number == run.knee
            else "front"
            if t.number in front
            else ("" if t.feasible else "infeasible")
        )
        cells: list[Any] = [t.number, t.state, t.status, t.feasible, t.number in front]
        for j, o in enumerate(run.objectives):
            v = t.values[j] if t.values is not None else None
            cells.append(_Band(v, error) if o.metric == LATENCY and v is not None else v)
        cells += [t.constraints.get(c) for c in run.constraint_names]
        if refined:
            cells.append((t.refined or {}).get(p0))
        cells += [t.violation, t.recipe, t.plan_text, t.fail_reason]
        out.append(f'<tr class="{cls}">' + "".join(_cell(c) for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _header(run: RunData) -> str:
    c = run.counts()
    picks = run.picks()
    budgets = ", ".join(f"{k} {_fmt(v)}" for k, v in run.budgets.items()) or "none"
    objs = ", ".join(f"{o.metric} ({o.direction})" for o in run.objectives)
    prof = run.profile.get("name", "") if run.profile else ""
    pick_text = ", ".join(f"{k}: trial {v}" for k, v in picks.items() if v is not None) or "none"
    return (
        f"<h1>Compression search: {html.escape(run.study_name)}</h1>"
        '<div class="meta">'
        f"<b>task</b> {html.escape(run.task or '?')} · "
        f"<b>space</b> {html.escape(run.space or '?')}"
        f" · <b>profile</b> {html.escape(str(prof) or '?')} · <b>budgets</b> "
        f"{html.escape(budgets)}<br><b>objectives</b> {html.escape(objs)} · <b>storage</b> "
        f"{html.escape(run.storage)}<br><b>{c['trials']}</b> trials: {c['trained']} trained, "
        f"<b>{c['feasible']}</b> feasible, {c['over_budget']} over budget (not trained), "
        f"{c['failed']} failed, {c['pruned']} stopped early, {c['duplicate']} repeats, "
        f"{c['running']} running · "
        f"<b>{c['front']}</b> on the front · hypervolume <b>{run.hypervolume:.4f}</b><br>"
        f"<b>picks</b> {html.escape(pick_text)}{_latency_meta(run)}</div>"
    )


def _latency_meta(run: RunData) -> str:
    """Where the latencies come from, how far they can be trusted, which bound was checked."""
    if run.experiment.get("latency") == "measured":
        return "<br><b>latency</b> measured with ONNX Runtime on the search machine"
    error = latency_error(run)
    err = run.profile.get("latency_error") if run.profile else None
    source = err.get("source") if isinstance(err, dict) else None
    trust = (
        f"measured error ±{error:.0%} (p90{', ' + source if source else ''})"
        if error is not None
        else "no measured error in the profile"
    )
    margin = run.experiment.get("budget_margin") or "none"
    checked = "its p90 bound (budget_margin: p90)" if margin == "p90" else "the prediction"
    return (
        f"<br><b>latency</b> predicted by the cost model, {html.escape(trust)}; "
        f"budget checked against {html.escape(checked)}"
    )


def _banner(run: RunData) -> str:
    if run.any_feasible:
        return ""
    lv = [run.trial(n) for n in run.least_violating]
    body = _trial_table(run, lv, table_id="least-violating") if lv else "<p>No complete trial.</p>"
    return (
        '<div class="banner" id="nothing-feasible"><h2>Nothing feasible: no trial meets the '
        "budgets</h2><p>The least-violating plans (smallest total overshoot of the budgets) are "
        "listed below. Relax the budgets or the space, or export one of these with "
        "<code>export --allow-infeasible --trial N</code>.</p>" + body + "</div>"
    )


def report_html(run: RunData) -> str:
    """The complete page as a string (plotly.js inlined)."""
    from plotly.offline import get_plotlyjs

    figs = figures(run)
    conf = {"displaylogo": False, "responsive": True}

    def div(name: str) -> str:
        return figs[name].to_html(
            full_html=False, include_plotlyjs=False, config=conf, div_id=f"fig-{name}"
        )

    fronts = [k for k in figs if k.startswith("front_") and k != "front_3d"]
    parts = [_header(run), _banner(run), "<h2>Pareto fronts</h2>"]
    parts.append(
        '<p class="note">Red: the feasible Pareto front; green star: the knee '
        "(the front point whose worst normalised objective is best); grey: infeasible; "
        "x: over budget, not trained; dashed: budgets. Hover a point for its plan.</p>"
    )
    if latency_error(run) is not None:
        parts.append(
            '<p class="note">Bars on the latency axis: the profile\'s measured error band, '
            f"±{latency_error(run):.0%} (p90 of |predicted/measured - 1|).</p>"
        )
    parts.append('<div class="grid">' + "".join(div(k) for k in fronts) + "</div>")
    sections = [
        ("front_3d", "3-D view", ""),
        (
            "parcoords",
            "Plan parameters",
            "Every plan in a few numbers: "
            + "; ".join(f"{k}: {v}" for k, v in FEATURES.items())
            + ". Per-layer detail: the per-layer view below. Drag along an axis to filter.",
        ),
        (
            "hypervolume",
            "Hypervolume history",
            "Objectives normalised by the base model (minimised: v/S, maximised: 1 - v/S, "
            "S = base value, else the largest trained value); reference point 1.0 on each axis. "
            + "Scales: "
            + ", ".join(f"{m} {_fmt(s)}" for m, s in zip(run.metric_names, run.hv_scales))
            + ".",
        ),
        ("layers", "Per-layer plan", "Pick a front plan from the menu."),
        (
            "why",
            "Why this plan",
            "Each layer's latency, weight bytes and activation memory (the bytes it reads and "
            "writes; the largest layer sets the peak) in the base model and in the plan, as a "
            "share of the base model's total (activations: of its peak), from the cost model's "
            "rows recorded at search time; the totals leave out the per-inference overhead, "
            "which is no layer's. Pick a front plan from the menu.",
        ),
    ]
    for name, title, note in sections:
        if name in figs:
            parts.append(f"<h2>{title}</h2>")
            if note:
                parts.append(f'<p class="note">{html.escape(note)}</p>')
            parts.append(div(name))
    parts.append('<h2>All trials</h2><p class="note">Click a column header to sort.</p>')
    parts.append(
        '<div class="scroll">' + _trial_table(run, run.trials, table_id="trials") + "</div>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(run.study_name)}: compression search report</title>"
        # No favicon request: the page must open offline without a single network fetch.
        '<link rel="icon" href="data:,">'
        f"<style>{_CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script>'
        "</head><body>" + "".join(parts) + f"<script>{_SORT_JS}</script></body></html>\n"
    )


def render_report(run: RunData, path: str | Path) -> Path:
    """Write report.html (self-contained, offline) and return its path."""
    text = report_html(run)
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def target_index_html(run: RunData) -> str:
    """The index of a multi-target run: one row per target and a switcher showing its report.

    Each target's report is its own file (`report.T.html`, a full report of that target's
    view); this page shows one at a time in a frame, so it stays small and works offline.
    """
    esc = html.escape
    rows, buttons = [], []
    for i, (name, view) in enumerate(run.views.items()):
        c = view.counts()
        knee = view.trial(view.knee).plan_text if view.knee is not None else "nothing feasible"
        desc = str(view.profile.get("description") or "")
        file = f"report.{name}.html"
        rows.append(
            f"<tr><td><a href='{esc(file)}'>{esc(name)}</a></td><td>{esc(desc[:80])}</td>"
            f"<td>{c['feasible']}</td><td>{c['front']}</td><td>{view.hypervolume:.4f}</td>"
            f"<td>{esc(knee)}</td></tr>"
        )
        pressed = "true" if i == 0 else "false"
        buttons.append(
            f"<button aria-pressed='{pressed}' onclick=\"show(this, '{esc(file)}')\">"
            f"{esc(name)}</button>"
        )
    first = f"report.{next(iter(run.views))}.html"
    trained = run.counts()["trained"]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(run.study_name)}: one search, {len(run.views)} targets</title>"
        '<link rel="icon" href="data:,">'
        f"<style>{_CSS} iframe{{width:100%;height:85vh;border:1px solid #ccc}}"
        " button[aria-pressed=true]{font-weight:bold}</style></head><body>"
        f"<h1>{esc(run.study_name)}: one search for {len(run.views)} targets</h1>"
        f"<p>{len(run.trials)} trials; {trained} plans trained, each once: a plan's accuracy "
        "does not depend on the device. Every plan is costed on every target; its front, "
        "budgets and hypervolume are each target's own.</p>"
        "<table><thead><tr><th>target</th><th>profile</th><th>feasible</th><th>front</th>"
        "<th>hypervolume</th><th>knee</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table><p>"
        + " ".join(buttons)
        + f"</p><iframe id='view' src='{esc(first)}' title='target report'></iframe>"
        "<script>function show(b, f){document.getElementById('view').src=f;"
        "document.querySelectorAll('button').forEach(x=>x.setAttribute('aria-pressed',"
        "x===b));}</script></body></html>\n"
    )


def render_target_index(run: RunData, path: str | Path) -> Path:
    """Write the multi-target index `report.html` and return its path."""
    text = target_index_html(run)
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))

"""The report's plan figures: plans at a glance (parallel coordinates), the hypervolume
history, the per-layer plan, and why this plan (each layer's share of the cost)."""

from __future__ import annotations

import html
from typing import Any

from spaces import layer_rows

from .._format import amount, cell
from ..record import TrialRecord
from ._plan_facts import FEATURES, SHARE_FIGURES, PlanShares, layer_shares, summary_features
from ._run import RunData
from ._style import AFTER_C, BEFORE_C, FEASIBLE, MAX_LAYER_PLANS, axis_label

__all__ = ["hv_history", "parcoords", "per_layer", "sensitivity", "why_this_plan"]


def parcoords(run: RunData) -> Any | None:
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
                "label": axis_label(o.metric),
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
            # Slanted titles: ten axes at 800 px leave ~60 px per title, less than a level
            # title needs; parallel slanted ones stay apart (60 px * sin 30 > the text height).
            labelangle=-30,
            labelside="top",
            labelfont={"size": 11},
            tickfont={"size": 10},
        )
    )
    fig.update_layout(
        title={
            "text": f"Plans at a glance (colour: {axis_label(o0.metric)} of feasible trials, "
            "yellow = better; grey = infeasible)",
            "x": 0.01,
            "y": 0.99,
            "yanchor": "top",  # at the top, clear of the slanted axis titles below it
        },
        height=500,
        margin={"l": 70, "r": 70, "t": 150, "b": 30},
    )
    return fig


def hv_history(run: RunData) -> Any | None:
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


def per_layer(run: RunData) -> Any | None:
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


_OPS = {"bits": "weight bits", "prune": "prune ratio", "rank": "kept rank"}


def sensitivity(run: RunData) -> Any | None:
    """The budget-aware start's layer sensitivities: cross-entropy rise on fixed validation
    rows when one layer alone takes one setting, untrained (from the widest floor: weight
    bits below it, prune ratios, kept ranks), as a heatmap of settings by layer."""
    import plotly.graph_objects as go

    if not run.sensitivities:
        return None
    widest = max(int(r.get("floor_bits", 32)) for r in run.sensitivities)
    rows = [r for r in run.sensitivities if int(r.get("floor_bits", 32)) == widest]
    layers = list(dict.fromkeys(str(r["layer"]) for r in rows))
    settings = sorted({(str(r["op"]), float(r["value"])) for r in rows})
    at = {(str(r["layer"]), str(r["op"]), float(r["value"])): r["sensitivity"] for r in rows}
    names = [f"{_OPS.get(op, op)} {v:g}" for op, v in settings]
    z = [[at.get((layer, op, v)) for layer in layers] for op, v in settings]
    fig = go.Figure(
        go.Heatmap(
            x=layers,
            y=names,
            z=z,
            colorscale="Reds",
            colorbar={"title": {"text": "loss rise"}},
            hovertemplate="%{x}<br>%{y}<br>cross-entropy +%{z:.4f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"Layer sensitivity, each layer alone from {widest}-bit weights (no training)",
        height=max(260, 24 * len(names) + 140),
        margin={"l": 110, "r": 20, "t": 60, "b": 60},
        template="plotly_white",
    )
    return fig


# What the cost model counts in a total but in no layer's row.
_OUTSIDE_LAYERS = {"latency_ms": "per-inference overhead", "weight_bytes": "fp32 biases, norms"}
_SMALL = "<span style='font-size:10px'>{}</span>"


def _show(v: float, unit: str) -> str:
    """Bytes exactly, as the table shows them; latency to 3 figures."""
    return f"{cell(round(v))} B" if unit == "bytes" else amount(v, unit)


def _why_total(run: RunData, t: TrialRecord, shares: PlanShares, key: str, unit: str) -> str:
    """`3.29 ms -> 0.41 ms (12%)` from the recorded totals (the table's figures), and for the
    plan what its bars add up to and what no layer owns, so the two reconcile."""
    layers_before, layers_after = shares.total(key, "before"), shares.total(key, "after")
    if key not in _OUTSIDE_LAYERS:  # the peak: the largest layer's, nothing outside them
        before, after = layers_before, layers_after
    else:
        base, plan = run.base_metrics.get(key), t.value(key)
        before = float(base) if isinstance(base, (int, float)) else layers_before
        after = plan if plan is not None else layers_after
    ratio = f" ({after / before:.0%})" if before > 0 else ""
    text = f"{_show(before, unit)} \u2192 {_show(after, unit)}{ratio}"
    outside = after - layers_after
    if key in _OUTSIDE_LAYERS and abs(outside) > 1e-9 * max(after, 1.0):
        text += "<br>" + _SMALL.format(f"plan: layers {_show(layers_after, unit)}")
        text += "<br>" + _SMALL.format(f"+ {_OUTSIDE_LAYERS[key]} {_show(outside, unit)}")
    return text


def why_this_plan(run: RunData) -> Any | None:
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
    for i, (t, sh) in enumerate(data):
        names = [s_.layer for s_ in sh.layers]
        for col, (key, label, unit) in enumerate(SHARE_FIGURES, start=1):
            for side, color, who in (
                ("before", BEFORE_C, "base model"),
                ("after", AFTER_C, "plan"),
            ):
                hover = [
                    f"<b>{html.escape(s_.layer)}</b> ({s_.kind})"
                    + (f" {html.escape(s_.plan)}" if s_.plan else "")
                    + f"<br>{label}: base {amount(float(s_.before[key]), unit)}, "
                    f"plan {amount(float(s_.after[key]), unit)}"
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
            [
                f"{label}<br>{_why_total(run, t, sh, key, unit)}"
                for key, label, unit in SHARE_FIGURES
            ]
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
        margin={"l": 90, "r": 20, "t": 160, "b": 40},
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

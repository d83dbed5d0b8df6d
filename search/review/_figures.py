"""Every figure of the report by name, as plotly Figures that tests inspect without a browser."""

from __future__ import annotations

from typing import Any

from ._figures_front import front_2d, front_3d, pair_axes
from ._figures_plan import hv_history, parcoords, per_layer, sensitivity, why_this_plan
from ._run import RunData

__all__ = ["figures"]


def figures(run: RunData) -> dict[str, Any]:
    """Every figure of the report by name (plotly Figures); absent when there is nothing to draw.

    Names: `front_<x>_<y>` per objective pair, `front_3d`, `parcoords`, `hypervolume`, `layers`,
    `sensitivity`, `why`.
    """
    out: dict[str, Any] = {}
    for xi, yi in pair_axes(run.objectives):
        out[f"front_{run.objectives[xi].metric}_{run.objectives[yi].metric}"] = front_2d(
            run, xi, yi
        )
    for name, make in (
        ("front_3d", front_3d),
        ("parcoords", parcoords),
        ("hypervolume", hv_history),
        ("layers", per_layer),
        ("sensitivity", sensitivity),
        ("why", why_this_plan),
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

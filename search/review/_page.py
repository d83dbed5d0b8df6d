"""report.html: a self-contained, offline review page drawn only from `RunData`.

plotly.js is inlined once, so the file opens without a network. A study over several targets
gets one report per target and an index page that switches between them.
"""

from __future__ import annotations

import html
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._format import cell
from ..files import atomic_write
from ..record import TrialRecord
from ._figures import figures
from ._plan_facts import FEATURES, latency_band, latency_error
from ._run import RunData, measured
from ._style import LATENCY, axis_label

__all__ = ["render_report", "render_target_index", "report_html", "target_index_html"]


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


class _NotMeasured:
    """A cell with no value to show, only why (`not trained`): it sorts with the blanks."""

    def __init__(self, why: str) -> None:
        self.why = why


def _td(v: Any) -> str:
    if isinstance(v, _NotMeasured):
        return f'<td class="na" data-v="">{html.escape(v.why)}</td>'
    if isinstance(v, _Band):
        if v.error is None:
            return _td(v.value)
        lo, hi = latency_band(v.value, v.error)
        text = f"{v.value:.3g} ({lo:.3g}-{hi:.3g})"
        return f'<td class="band" data-v="{html.escape(str(v.value))}">{html.escape(text)}</td>'
    raw = "" if v is None else (str(int(v)) if isinstance(v, bool) else str(v))
    return f'<td data-v="{html.escape(raw)}">{html.escape(cell(v))}</td>'


def _trial_table(run: RunData, trials: Sequence[TrialRecord], *, table_id: str) -> str:
    front = set(run.front)
    head = ["trial", "state", "status", "feasible", "front"]
    error = latency_error(run)
    head += [
        axis_label(o.metric) + (" ±p90" if o.metric == LATENCY and error is not None else "")
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
            v: Any = t.values[j] if t.values is not None else None
            if v is not None and o.direction == "maximize" and not t.trained:
                v = _NotMeasured("not trained")  # stored as 0, but never measured
            cells.append(_Band(v, error) if o.metric == LATENCY and v is not None else v)
        cells += [
            t.constraints.get(c)
            if measured(t, c) or c not in t.constraints
            else _NotMeasured("not measured")
            for c in run.constraint_names
        ]
        if refined:
            cells.append((t.refined or {}).get(p0))
        violation = t.violation
        if not t.trained and t.constraints:  # the stored one counts the unmeasured accuracy
            violation = sum(max(0.0, v) for c, v in t.constraints.items() if measured(t, c))
        cells += [violation, t.recipe, t.plan_text, t.fail_reason]
        out.append(f'<tr class="{cls}">' + "".join(_td(c) for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _header(run: RunData) -> str:
    c = run.counts()
    picks = run.picks()
    budgets = ", ".join(f"{k} {cell(v)}" for k, v in run.budgets.items()) or "none"
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
        f"{html.escape(run.storage)}<br><b>{c['trainings']}</b> trainings from "
        f"{c['trials']} proposals: {c['trained']} trained to the end, "
        f"<b>{c['feasible']}</b> feasible, {c['over_budget']} over budget (not trained), "
        f"{c['failed']} failed, {c['stopped_early']} stopped early, {c['duplicate']} repeats, "
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
            + ", ".join(f"{m} {cell(s)}" for m, s in zip(run.metric_names, run.hv_scales))
            + ".",
        ),
        ("layers", "Per-layer plan", "Pick a front plan from the menu."),
        (
            "sensitivity",
            "Layer sensitivity",
            "Measured before the search by the budget-aware start, without training: how much "
            "the validation loss rises when one layer alone takes a setting. The plans it made "
            "for the budgets are the search's first trials.",
        ),
        (
            "why",
            "Why this plan",
            "Each layer's latency, weight bytes and activation memory (the bytes it reads and "
            "writes; the largest layer sets the peak) in the base model and in the plan, as a "
            "share of the base model's total (activations: of its peak), from the cost model's "
            "rows recorded at search time. The totals are the trial's, as in the table; under "
            "them, what the plan's layers add up to and what no layer owns (the per-inference "
            "overhead; biases and norm parameters kept at fp32). Pick a front plan from the "
            "menu.",
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
        # A long description is cut at a word, never inside one.
        desc = textwrap.shorten(str(view.profile.get("description") or ""), 90, placeholder=" …")
        file = f"report.{name}.html"
        rows.append(
            f"<tr><td><a href='{esc(file)}'>{esc(name)}</a></td><td>{esc(desc)}</td>"
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

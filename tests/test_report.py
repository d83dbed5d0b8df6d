"""report.html: the figures' data, the page's content, the error bands and the why-this-plan view.

The page in headless Chromium is tested in tests/test_report_browser.py.
"""

from __future__ import annotations

import dataclasses
import html
import re
from pathlib import Path
from typing import Any

import pytest

from search.review import (
    FEATURES,
    figures,
    latency_error,
    layer_shares,
    load_run,
    render_report,
    report_html,
    summary_features,
    target_index_html,
    why_infeasible,
)
from search.review._run import overshoots

try:  # the study builder lives beside this file
    from test_pareto import MAX_DROP, SPECS, make_study
except ImportError:  # tests/ imported as a package
    from tests.test_pareto import MAX_DROP, SPECS, make_study
try:  # the costed study lives beside this file
    from _report_study import P90, make_costed_study
except ImportError:  # tests/ imported as a package
    from tests._report_study import P90, make_costed_study


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    return load_run(make_study(tmp_path_factory.mktemp("rep") / "study.db"), "demo")


@pytest.fixture(scope="module")
def costed(tmp_path_factory: pytest.TempPathFactory):
    return load_run(make_costed_study(tmp_path_factory.mktemp("cost") / "study.db"), "demo")


@pytest.fixture(scope="module")
def infeasible_run(tmp_path_factory: pytest.TempPathFactory):
    tight = {"latency_ms": 0.1, "memory_kb": 64.0, "flash_kb": 1.0}
    return load_run(make_study(tmp_path_factory.mktemp("inf") / "study.db", budgets=tight))


# --- the figures' data ---------------------------------------------------------------------------
def _trace(fig: Any, name: str) -> Any:
    return next(t for t in fig.data if t.name == name)


def test_one_2d_front_per_objective_pair(run) -> None:
    figs = figures(run)
    pairs = [k for k in figs if k.startswith("front_") and k != "front_3d"]
    # A cost goes on x, the maximised metric on y.
    assert pairs == [
        "front_latency_ms_accuracy",
        "front_weight_bytes_accuracy",
        "front_latency_ms_weight_bytes",
    ]
    fig = figs["front_latency_ms_accuracy"]
    front = _trace(fig, "Pareto front")
    assert sorted(zip(front.x, front.y)) == sorted((SPECS[n][1], SPECS[n][0]) for n in (0, 1, 3))
    assert _trace(fig, "knee").x == (SPECS[1][1],)
    grey = _trace(fig, "infeasible (trained)")
    assert grey.x == (2.5,) and grey.marker.color.lower() in ("#b0b0b0",)
    # Never trained: a rug on a hidden axis, so the accuracy axis is not stretched down to 0.
    rug = _trace(fig, "over budget / not trained")
    assert rug.x == (3.0,) and rug.yaxis == "y2" and fig.layout.yaxis2.visible is False
    assert "accuracy: not trained" in rug.text[0]
    assert 0.0 not in _trace(fig, "infeasible (trained)").y + _trace(fig, "feasible").y
    # Cost against cost: the untrained plans are real points there.
    cost = figures(run)["front_latency_ms_weight_bytes"]
    assert _trace(cost, "over budget / not trained").y == (50000,)
    assert "infeasible" not in {t.name for t in fig.data if t.marker.color == "#1f77b4"}


def _budget_lines(fig: Any) -> dict[str, tuple[float, str]]:
    """Budget line traces: "x"/"y" -> (position, label). They span hidden 0-1 axes, so they
    stay put when the data axis turns log or linear."""
    out = {}
    for t in fig.data:
        if t.name and t.name.endswith("budget"):
            if t.yaxis == "y2":
                assert t.x[0] == t.x[1] and tuple(t.y) == (0, 1)
                out["x"] = (t.x[0], t.text[1])
            else:
                assert t.xaxis == "x2" and t.y[0] == t.y[1] and tuple(t.x) == (0, 1)
                out["y"] = (t.y[0], t.text[0])
    return out


def test_budgets_are_drawn_as_lines(run) -> None:
    fig = figures(run)["front_latency_ms_accuracy"]
    lines = _budget_lines(fig)
    assert lines["x"] == (2.0, "latency (ms) budget 2")  # the latency budget
    assert lines["y"][0] == pytest.approx(0.9 - MAX_DROP)  # the accuracy floor
    assert lines["y"][1].startswith("accuracy floor 0.55")
    assert fig.layout.yaxis2.range == (0, 1) and fig.layout.xaxis2.range == (0, 1)
    size = figures(run)["front_latency_ms_weight_bytes"]
    assert _budget_lines(size)["y"][0] == pytest.approx(32 * 1024)


def test_cost_axes_are_log_with_a_linear_toggle(run) -> None:
    figs = figures(run)
    fig = figs["front_latency_ms_accuracy"]
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type != "log"  # accuracy: linear
    (menu,) = fig.layout.updatemenus
    assert [b.label for b in menu.buttons] == ["log", "linear"]
    assert [b.args[0] for b in menu.buttons] == [{"xaxis.type": "log"}, {"xaxis.type": "linear"}]
    both = figs["front_latency_ms_weight_bytes"]
    assert both.layout.xaxis.type == both.layout.yaxis.type == "log"
    assert both.layout.updatemenus[0].buttons[1].args[0] == {
        "xaxis.type": "linear",
        "yaxis.type": "linear",
    }
    scene = figs["front_3d"].layout.scene
    assert scene.yaxis.type == scene.zaxis.type == "log" and scene.xaxis.type != "log"
    assert figs["front_3d"].layout.updatemenus[0].buttons[1].args[0] == {
        "scene.yaxis.type": "linear",
        "scene.zaxis.type": "linear",
    }


def test_mode_bar_stands_in_the_right_margin(run) -> None:
    for name, fig in figures(run).items():
        assert fig.layout.modebar.orientation == "v", name
        assert fig.layout.margin.r >= 40, name
        assert fig.layout.title.x < 0.1, name  # titles on the left, away from it


def test_hover_shows_the_plan(run) -> None:
    fig = figures(run)["front_latency_ms_accuracy"]
    knee = _trace(fig, "knee")
    text = knee.text[0]
    assert "trial 1" in text and "knee" in text
    assert run.trial(1).plan_text in text
    assert "conv1: w" in text  # per-layer decisions
    assert "refined (8 epochs)" in text and "accuracy 0.83" in text
    assert "recipe: int8" in _trace(fig, "Pareto front").text[0]


def test_3d_parcoords_hypervolume_and_layers(run) -> None:
    figs = figures(run)
    f3 = figs["front_3d"]
    assert {t.type for t in f3.data} == {"scatter3d"}
    assert f3.layout.scene.xaxis.title.text == "accuracy"

    par = figs["parcoords"].data[0]
    labels = [d.label for d in par.dimensions]
    # Summary features, one axis each whatever the depth; per-layer detail is elsewhere.
    features = [f for f in FEATURES if f != "kept MACs"]  # the study records no base MACs
    assert labels == [*features, "accuracy", "latency (ms)", "weight (bytes)", "feasible"]
    assert len(par.dimensions[0].values) == 6  # the COMPLETE trials
    bits = dict(zip(labels, par.dimensions))["mean weight bits"]
    # Trial i has bits (8, 4, 16, 32)[i % 4] on conv1 and conv2 and 8 on fc.
    assert list(bits.values) == [pytest.approx((2 * b + 8) / 3) for b in (8, 4, 16, 32, 8, 16)]

    hv = figs["hypervolume"].data[0]
    assert list(hv.y) == [h for _, h in run.hypervolume_history]

    lay = figs["layers"]
    assert len(lay.data) == 3 * len(run.front)
    first = [t for t in lay.data if t.visible]
    assert [t.name for t in first] == ["trial 1 bits", "trial 1 prune_ratio", "trial 1 rank"]
    assert list(first[0].x) == ["conv1", "conv2", "fc"] and list(first[0].y) == [4, 4, 8]
    assert list(first[2].y) == [1.0, 0.5, 1.0]
    buttons = lay.layout.updatemenus[0].buttons
    assert [b.label for b in buttons][0] == "trial 1 (knee)" and len(buttons) == 3


def test_page_is_self_contained(run, tmp_path: Path) -> None:
    path = render_report(run, tmp_path / "report.html")
    text = path.read_text()
    assert "* plotly.js v" in text  # the library itself is inlined
    from plotly.offline import get_plotlyjs

    ours = text.replace(get_plotlyjs(), "")  # the page without the library's own strings
    assert not re.search(r"<script[^>]*\ssrc=", ours)  # nothing loaded from elsewhere
    assert not re.search(r"""(src|href)=["']https?://""", ours)
    assert text.count('class="plotly-graph-div"') == len(figures(run))
    assert 'id="trials"' in text and text.count("<tr") >= len(run.trials) + 1
    assert "nothing-feasible" not in text
    assert "RuntimeError: loss became NaN" in text  # failed trials listed with their reason


def test_nothing_feasible_banner(infeasible_run) -> None:
    text = report_html(infeasible_run)
    banner = text[text.index('id="nothing-feasible"') : text.index("<h2>Pareto fronts")]
    assert "Nothing feasible" in banner
    rows = re.findall(r'<tr class="[^"]*"><td data-v="(\d+)"', banner)
    assert [int(r) for r in rows] == list(infeasible_run.least_violating)
    assert infeasible_run.trial(3).plan_text in banner
    figs = figures(infeasible_run)
    assert "layers" in figs  # the per-layer view offers the least-violating plans
    assert not any(t.name == "Pareto front" for t in figs["front_latency_ms_accuracy"].data)


# --- error bands, summary features and the why-this-plan view ----------------------------------
def test_latency_band_in_hover_bars_header_and_table(costed, run) -> None:
    fig = figures(costed)["front_latency_ms_accuracy"]
    knee = _trace(fig, "knee")
    assert "latency: 1 ms (0.833-1.2 ms, p90)" in knee.text[0]  # trial 1: 1.0 ms, p90 20 %
    assert list(knee.error_x.array) == [pytest.approx(1.0 * P90)]
    assert list(knee.error_x.arrayminus) == [pytest.approx(1.0 - 1.0 / (1 + P90))]
    front = _trace(fig, "Pareto front")
    assert list(front.error_x.array) == [pytest.approx(v * P90) for v in front.x]
    # Both sides drawn (positive on a log axis), even for an error over 100 % (cloud_gpu).
    assert all(0 < m < v for m, v in zip(front.error_x.arrayminus, front.x))
    wide = dataclasses.replace(costed, profile={**costed.profile, "latency_error": {"p90": 2.1}})
    bars = _trace(figures(wide)["front_latency_ms_accuracy"], "Pareto front").error_x
    assert all(0 < m < v for m, v in zip(bars.arrayminus, front.x))
    assert _trace(fig, "feasible").error_x.array is None  # bars on the front only
    assert fig.layout.title.text.endswith("±p90")
    text = report_html(costed)
    assert "measured error ±20% (p90, test rows); budget checked against the prediction" in text
    assert (
        "latency (ms) ±p90</th>" in text
        and '<td class="band" data-v="1.0">1 (0.833-1.2)</td>' in text
    )
    # A run whose profile has no measured error shows no band anywhere.
    plain = figures(run)["front_latency_ms_accuracy"]
    assert "latency (ms): 1<br>" in _trace(plain, "knee").text[0]
    assert _trace(plain, "knee").error_x.array is None
    assert "no measured error in the profile" in report_html(run)


def test_latency_band_is_off_for_measured_latency(costed) -> None:
    measured = dataclasses.replace(costed, experiment={"latency": "measured"})
    assert latency_error(costed) == P90 and latency_error(measured) is None
    assert (
        "latency (ms): 1<br>"
        in _trace(figures(measured)["front_latency_ms_accuracy"], "knee").text[0]
    )


def test_p90_margin_draws_the_real_budget(tmp_path: Path) -> None:
    run = load_run(make_costed_study(tmp_path / "study.db", budget_margin="p90"), "demo")
    lines = _budget_lines(figures(run)["front_latency_ms_accuracy"])
    assert lines["x"] == (2.0, "latency budget 2, checked at the p90 bound")
    assert "budget checked against its p90 bound (budget_margin: p90)" in report_html(run)


def test_summary_features_of_a_plan(costed) -> None:
    t = costed.trial(1)  # conv1, conv2 pruned 10 %, 4 bits; fc 8 bits; conv2 keeps half its rank
    assert summary_features(costed, t) == {
        "family": "base",
        "mean weight bits": pytest.approx(16 / 3),
        "kept MACs": pytest.approx(200_000 / 400_000),
        "mean prune ratio": pytest.approx(0.2 / 3),
        "kept rank": pytest.approx(2.5 / 3),
        "sparsity": 0.0,
    }
    par = figures(costed)["parcoords"].data[0]
    assert [d.label for d in par.dimensions][: len(FEATURES)] == list(FEATURES)


def test_why_this_plan_shares_by_hand(costed) -> None:
    sh = layer_shares(costed, costed.trial(1))
    assert sh is not None and not sh.student
    assert [s.layer for s in sh.layers] == ["conv1", "conv2", "relu", "fc"]
    conv2 = sh.layers[1]
    # The factorized pair conv2.0 + conv2.1 is conv2: latencies and bytes add, the wider
    # kernel's activations count.
    assert conv2.after == {"latency_ms": 0.5, "weight_bytes": 700.0, "activation_bytes": 200.0}
    assert conv2.before == {"latency_ms": 2.0, "weight_bytes": 3000.0, "activation_bytes": 800}
    assert conv2.plan == "w4 p10% r0.5"
    assert sh.total("latency_ms", "before") == 4.0
    assert sh.total("latency_ms", "after") == pytest.approx(1.0)
    assert sh.share(conv2, "latency_ms", "before") == 0.5
    assert sh.share(conv2, "latency_ms", "after") == pytest.approx(0.5)
    assert sh.of_base(conv2, "latency_ms", "after") == 0.125
    assert sh.of_base(conv2, "weight_bytes", "after") == pytest.approx(700 / 5000)
    # Activation memory is a peak: shares are of the largest layer, not of a sum.
    assert sh.total("activation_bytes", "before") == 800
    assert sh.total("activation_bytes", "after") == 200
    assert sh.of_base(sh.layers[0], "activation_bytes", "before") == 0.5


def test_why_this_plan_for_a_student(costed) -> None:
    t = dataclasses.replace(
        costed.trial(1),
        plan={"architecture": {"family": "mobilenetv2", "width": 0.5, "depth": 1}},
        layer_costs=(
            ("features.0", "conv", 0.1, 100, 50),  # same name as nothing in the base: its own
            ("features.1.conv.0", "conv", 0.2, 200, 60),
            ("features.1.conv.1", "dwconv", 0.1, 50, 80),
            ("add", "elementwise", 0.05, 0, 40),
            ("conv1", "conv", 0.1, 10, 10),  # a base layer's name, still the student's layer
        ),
    )
    sh = layer_shares(costed, t)
    assert sh is not None and sh.student
    names = [s.layer for s in sh.layers]
    assert names[:4] == ["conv1", "conv2", "relu", "fc"]  # the base model's, now all gone
    assert all(s.after["latency_ms"] == 0 for s in sh.layers[:4])
    assert names[4:] == [
        "student features.0",
        "student features.1",
        "student element-wise ops",
        "student conv1",
    ]
    block = sh.layers[5]
    assert block.before["latency_ms"] == 0 and block.after["latency_ms"] == pytest.approx(0.3)
    assert block.after["activation_bytes"] == 80


def test_why_this_plan_from_a_real_search(in_tmp: Path) -> None:
    from search.config import load_experiment
    from search.study import run_search
    from tests._tiny import write_tiny_experiment

    exp = load_experiment(write_tiny_experiment(in_tmp, trials=4)).with_overrides(out="run")
    result = run_search(exp, progress=False, log=lambda _m: None)
    real = load_run(result.storage_url, exp.name)
    overhead_ms = real.profile["model_overhead_us"] / 1000
    # The search records the cost model's rows: they add up to the predicted latency.
    base = sum(row[2] for row in real.base_layer_costs) + overhead_ms
    assert base == pytest.approx(real.base_metrics["latency_ms"], rel=1e-4)
    assert real.front
    for t in real.front_trials:
        sh = layer_shares(real, t)
        assert sh is not None and not sh.student
        assert [s.layer for s in sh.layers] == [row[0] for row in real.base_layer_costs]
        latency = sh.total("latency_ms", "after") + overhead_ms
        assert latency == pytest.approx(t.value("latency_ms"), rel=1e-4)
    figs = figures(real)
    assert "why" in figs
    # The budget-aware start's sensitivities, by layer and setting, from the widest floor.
    heat = figs["sensitivity"].data[0]
    widest = [r for r in real.sensitivities if r["floor_bits"] == 32]
    assert set(heat.x) == {r["layer"] for r in widest} and heat.x
    row = list(heat.y).index("prune ratio 0.5")
    for r in widest:
        if r["op"] == "prune" and r["value"] == 0.5:
            assert heat.z[row][list(heat.x).index(r["layer"])] == r["sensitivity"]


def test_why_this_plan_figure(costed, run) -> None:
    fig = figures(costed)["why"]
    n = len(costed.front)
    assert len(fig.data) == 6 * n  # base and plan bars for three figures, per front plan
    first = [t for t in fig.data if t.visible]
    assert [t.name for t in first] == ["base model", "plan"] * 3
    assert list(first[0].y) == ["conv1", "conv2", "relu", "fc"]
    assert list(first[0].x) == [0.25, 0.5, 0.125, 0.125]  # base latency shares
    assert list(first[1].x) == pytest.approx([0.05, 0.125, 0.05, 0.025])  # the plan's
    assert "conv2</b> (conv) w4 p10% r0.5" in first[1].hovertext[1]
    heads = [a.text for a in fig.layout.annotations]
    assert heads[0] == "latency<br>4 ms \u2192 1 ms (25%)"
    # Totals are the trial's recorded figures, the table's (here 40,000 B and 20,000 B, far
    # from the rows' 5000 B and 1200 B); under the plan's, what its layers add up to and what
    # no layer owns, so the bars and the table reconcile. The latency rows already match.
    small = "<span style='font-size:10px'>{}</span>"
    assert heads[1] == (
        "weight bytes<br>40,000 B \u2192 20,000 B (50%)"
        f"<br>{small.format('plan: layers 1200 B')}"
        f"<br>{small.format('+ fp32 biases, norms 18,800 B')}"
    )
    assert costed.trial(1).value("weight_bytes") == 20000
    assert heads[2] == "peak activations<br>800 B \u2192 200 B (25%)"  # the largest layer's
    buttons = fig.layout.updatemenus[0].buttons
    assert buttons[0].label == "trial 1 (knee)" and len(buttons) == n
    assert "Why trial 1 (knee)" in fig.layout.title.text
    assert "why" not in figures(run)  # a run recorded without cost rows: no view


def test_untrained_plans_show_no_accuracy(costed) -> None:
    """Trial 4 was over budget and never trained: its stored accuracy 0 and accuracy drop are
    not measurements, so the table and the hover say so instead of showing them."""
    text = report_html(costed)
    row = re.search(r'<tr class="infeasible"><td data-v="4">4</td>.*?</tr>', text)
    assert row is not None
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row[0])
    head = re.findall(r"<th>(.*?)</th>", text.split('id="trials"')[1].split("</thead>")[0])
    assert cells[head.index("accuracy")] == "not trained"
    assert cells[head.index("accuracy_drop (over if &gt; 0)")] == "not measured"
    # Its violation counts what was measured: latency +50 %, flash +53 % (not the drop).
    over_cost = costed.trial(4).constraints
    assert float(cells[head.index("violation")]) == pytest.approx(
        over_cost["latency_ms"] + over_cost["flash_kb"], abs=1e-4
    )
    hover = _trace(figures(costed)["front_latency_ms_accuracy"], "over budget / not trained")
    assert "accuracy_drop" not in hover.text[0] and "latency_ms +50%" in hover.text[0]


def test_small_overshoots_are_not_rounded_to_zero(costed) -> None:
    """A plan 0.06 points under the accuracy floor, or 0.4 % over a budget, says so."""
    t = dataclasses.replace(
        costed.trial(1), constraints={"latency_ms": 0.004, "accuracy_drop": 0.0006}
    )
    assert overshoots(t) == ["latency_ms +0.4%", "accuracy_drop +0.06 points"]
    assert why_infeasible(t) == "over latency_ms +0.4%, accuracy_drop +0.06 points"
    big = dataclasses.replace(t, constraints={"flash_kb": 0.5737})
    assert overshoots(big) == ["flash_kb +57%"]


def test_layer_names_are_module_paths(costed) -> None:
    """The cost model names element-wise rows after graph nodes (`features_6`), the others after
    modules (`features.3`): the why view shows one form. Other names are left alone."""
    rows = [
        ["features.0", "conv", 1.0, 100, 10],
        ["features_1", "elementwise", 0.1, 0, 10],
        ["features_2_branch_0", "elementwise", 0.1, 0, 10],
        ["add_1", "elementwise", 0.1, 0, 10],
        ["fc", "linear", 0.5, 50, 5],
    ]
    run = dataclasses.replace(costed, base_layer_costs=rows)
    t = dataclasses.replace(costed.trial(1), layer_costs=rows)
    shares = layer_shares(run, t)
    assert shares is not None
    names = [s.layer for s in shares.layers]
    assert names == ["features.0", "features.1", "features.2.branch.0", "add_1", "fc"]


def test_target_index_cuts_descriptions_at_a_word(costed) -> None:
    words = "an STM32H743 at 480 MHz with 1 MB of SRAM and 2 MB of flash, CMSIS-NN kernels"
    long = f"{words}; measured on a NUCLEO board over a week"
    view = dataclasses.replace(costed, profile={**costed.profile, "description": long})
    page = target_index_html(dataclasses.replace(costed, views={"mcu_h7": view}))
    cell = re.search(r"mcu_h7</a></td><td>(.*?)</td>", page)
    assert cell is not None
    shown = html.unescape(cell[1])
    assert shown.endswith(" \u2026") and long.startswith(shown[:-2])
    assert long[len(shown) - 2] == " "  # the cut falls between words

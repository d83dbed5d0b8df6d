"""The budget-aware start: sensitivities measured without training, plans allocated to meet the
budgets on the profile's real cost, and a search that starts from them. Real models and the
real cost model on the tiny task; nothing is mocked."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from search import allocate
from search.config import load_experiment
from search.hardware import constraint_values
from search.objective import TrialObjective
from search.study import run_search
from tests._tiny import tiny_objective, write_tiny_experiment

SPACE = {
    "name": "tiny-joint",
    "lowrank": {"rank": [0.25, 0.5, 0.75, 1.0]},
    "prune": {"ratio": [0.0, 0.25, 0.5, 0.75]},
    "quantize": {"weight_bits": [8, 16, 32], "activation_bits": [8, 32]},
}


def objective_for(folder: Path, **changes) -> TrialObjective:
    return tiny_objective(folder, SPACE, **changes)


def floor_latency(folder: Path) -> float:
    """The tiny network's predicted latency at 32-bit weights and 8-bit activations."""
    o = objective_for(folder / "probe")
    s = allocate.measure(o)
    return (
        next(f for f in s.floors if f.bits == 32).fractions["latency_ms"] * o.budgets["latency_ms"]
    )


def test_allocation_meets_the_budgets_on_the_real_cost_model(tmp_path: Path) -> None:
    budget = 0.6 * floor_latency(tmp_path)  # the float floor is 1.67x over
    o = objective_for(tmp_path / "x", budgets={"latency_ms": budget})
    sens = allocate.measure(o)
    assert [f.bits for f in sens.floors] == [32, 8]  # each uniform width the mcu runs
    assert all(s.sensitivity >= 0 for f in sens.floors for s in f.settings)
    assert {s.op for s in sens.floors[0].settings} == {"bits", "prune", "rank"}
    plans = allocate.budget_plans(o, sens)
    assert plans, "the tiny network can meet its budget"
    for p in plans:
        _, cost = o.build_and_cost(p.plan)
        limits = constraint_values(cost, o.budgets, profile=o.profile)
        assert all(v <= 1e-9 for v in limits.values()), (p.plan.describe(), limits)
        assert cost.latency_ms <= p.fraction * budget * (1 + 1e-9)
        assert p.fractions["latency_ms"] == pytest.approx(cost.latency_ms / budget)
    fractions = [p.fraction for p in plans]
    assert fractions == sorted(fractions, reverse=True) and fractions[0] == 1.0


def test_sensitivity_grows_with_the_strength_of_a_setting(tmp_path: Path) -> None:
    """The Fisher-weighted distortion ranks a layer's settings as compression ranks them."""
    o = objective_for(tmp_path)
    sens = allocate.measure(o)
    float_floor = next(f for f in sens.floors if f.bits == 32)
    by = {(s.layer, s.op, s.value): s.sensitivity for s in float_floor.settings}
    layers = {layer for layer, _, _ in by}
    assert any(by[(x, "prune", 0.75)] > 0 for x in layers if (x, "prune", 0.75) in by)
    for x in layers:
        for op, order in (("prune", [0.25, 0.5, 0.75]), ("rank", [0.75, 0.5, 0.25])):
            rises = [by[(x, op, v)] for v in order if (x, op, v) in by]
            assert rises == sorted(rises), (x, op, rises)
    assert sens.seconds > 0


def test_allocation_takes_the_least_sensitive_way_and_knows_when_none_fits() -> None:
    def setting(layer: str, sens: float, saves: float) -> allocate.Setting:
        return allocate.Setting(layer, "prune", 0.5, sens, {"latency_ms": -saves})

    floor = allocate.Floor(
        32,
        0.1,
        {"latency_ms": 1.5},
        [setting("a", 0.30, 0.6), setting("b", 0.05, 0.6), setting("c", 0.01, 0.2)],
    )
    chosen, figures = allocate.allocate(floor, {"latency_ms": 1.0})
    # b saves the most per unit of sensitivity, then c is the cheapest way to the rest.
    assert chosen == {("b", "prune"): 0.5} and figures["latency_ms"] == pytest.approx(0.9)
    assert allocate.allocate(floor, {"latency_ms": 0.05}) is None  # beyond every setting
    # The real cost is checked: a sum that was too hopeful asks for more next round.
    real = allocate.allocate(
        floor, {"latency_ms": 1.0}, check=lambda c: {"latency_ms": 1.05 if len(c) < 2 else 0.7}
    )
    assert real is not None and len(real[0]) == 2 and real[1]["latency_ms"] == 0.7


@pytest.mark.slow
def test_a_search_starts_from_plans_made_for_its_budgets(in_tmp: Path) -> None:
    budget = 0.6 * floor_latency(in_tmp)
    path = write_tiny_experiment(in_tmp, trials=3, budgets={"latency_ms": budget})
    (in_tmp / "tiny_space.yaml").write_text(yaml.safe_dump(SPACE))
    lines: list[str] = []
    exp = load_experiment(path).with_overrides(out="run")
    result = run_search(exp, progress=False, log=lines.append)
    first = sorted(result.study.trials, key=lambda t: t.number)[0]
    assert first.user_attrs["recipe"].startswith("budget fit: 100% of the latency budget, ")
    assert first.user_attrs["status"] != "over_budget"
    assert result.study.user_attrs["sensitivities"]
    assert any(line.startswith("budget-aware start:") for line in lines)

"""A new study's first trials (search/start.py): the network's plans at fractions of the latency
budget, the allocated or the uniform one by accuracy before training, and students within a
quarter of the budget. Real tiny models and the real cost model; nothing is mocked."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from search import allocate, start
from search.objective import TrialObjective
from tests._tiny import tiny_objective

NETWORK_SPACE = {
    "name": "tiny-joint",
    "lowrank": {"rank": [0.25, 0.5, 0.75, 1.0]},
    "prune": {"ratio": [0.0, 0.25, 0.5, 0.75]},
    "quantize": {"weight_bits": [8, 16, 32], "activation_bits": [8, 32]},
}
STUDENT_SPACE = {
    "name": "tiny-students",
    "architecture": {"family": ["base", "mobilenetv2"], "width": [0.25, 0.5, 1.0]},
    "quantize": {"weight_bits": [8, 32], "activation_bits": [8, 32]},
}


def objective_for(folder: Path, space: dict, **changes) -> TrialObjective:
    return tiny_objective(folder, space, **changes)


def int8_latency(folder: Path) -> float:
    o = objective_for(folder, NETWORK_SPACE)
    plan = start.uniform_plans(o, [1e9], activation_bits=8)[1e9]
    _, cost = o.build_and_cost(plan)
    return cost.latency_ms


def test_uniform_plans_take_the_least_prune_ratio_that_meets_each_fraction(tmp_path: Path) -> None:
    budget = 0.9 * int8_latency(tmp_path / "probe")  # int8 alone is over: pruning must help
    o = objective_for(tmp_path / "x", NETWORK_SPACE, budgets={"latency_ms": budget})
    plans = start.uniform_plans(o, [1.0, 0.7, 1e-6], activation_bits=8)
    assert set(plans) == {1.0, 0.7}  # nothing the space offers runs in a millionth of it
    for f, plan in plans.items():
        assert {b for _, b in plan.quantize.weight_bits} == {8}  # the narrowest width >= 8
        ratios = {r for _, r in plan.prune.ratios}
        assert len(ratios) == 1 and ratios.pop() > 0  # one ratio everywhere
        fr = allocate.budget_fractions(o, plan)
        assert all(v <= (f if k == "latency_ms" else 1.0) + 1e-9 for k, v in fr.items())
        # the next smaller ratio the space offers would not have met the fraction
        r = dict(plan.prune.ratios)
        less = max(x for x in NETWORK_SPACE["prune"]["ratio"] if x < next(iter(r.values())))
        layers = list(o.layers_for(plan.architecture))
        weaker = allocate.plan_of(
            layers,
            {(n, "prune"): less for n in r if less > 0},
            floor_bits=8,
            activation_bits=8,
        )
        assert allocate.budget_fractions(o, weaker)["latency_ms"] > f


def test_network_plans_keep_the_candidate_more_accurate_before_training(tmp_path: Path) -> None:
    budget = 0.9 * int8_latency(tmp_path / "probe")
    o = objective_for(tmp_path / "x", NETWORK_SPACE, budgets={"latency_ms": budget})
    lines: list[str] = []
    plans, sens = start.network_plans(o, log=lines.append)
    assert plans and sens.floors
    assert plans[0].name.startswith("budget fit: 100% of the latency budget, ")
    sens2 = allocate.measure(o)
    allocated = {p.fraction: p.plan for p in allocate.budget_plans(o, sens2)}
    uniform = start.uniform_plans(o, allocate.LATENCY_FRACTIONS, activation_bits=8)
    for p in plans:
        f = float(p.name.split(": ")[1].split("%")[0]) / 100
        kind = p.name.rsplit(", ", 1)[1]
        assert p.plan == {"allocated": allocated, "uniform": uniform}[kind][f]
        if f in allocated and f in uniform and allocated[f] != uniform[f]:
            acc = {
                k: start.accuracy_before_training(o, c[f])
                for k, c in (("allocated", allocated), ("uniform", uniform))
            }
            assert acc[kind] == max(acc.values())
            assert any(line.startswith(f"start at {f:.0%}") for line in lines)
    # each is a point of the space: suggest() turns its parameters back into the plan
    for p in plans:
        study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
        study.enqueue_trial(p.params)
        assert o.suggest(study.ask()) == p.plan


def test_students_start_within_a_quarter_of_the_latency_budget(tmp_path: Path) -> None:
    o = objective_for(tmp_path / "probe", STUDENT_SPACE, larger_students=True)
    widths = [0.25, 0.5, 1.0]

    def student_latency(width: float) -> float:
        from spaces import ArchitectureConfig, CompressionPlan, QuantizeConfig

        arch = ArchitectureConfig("mobilenetv2", width, 1)
        bits = {x.name: 8 for x in o.layers_for(arch)}
        plan = CompressionPlan(
            architecture=arch, quantize=QuantizeConfig(weight_bits=bits, activation_bits=8)
        )
        _, cost = o.build_and_cost(plan)
        return cost.latency_ms

    lat = {w: student_latency(w) for w in widths}
    assert lat[0.25] < lat[0.5] < lat[1.0]
    # A budget four times w0.5's latency: w0.5 is the widest within a quarter of it.
    o = objective_for(
        tmp_path / "x", STUDENT_SPACE, larger_students=True, budgets={"latency_ms": 4 * lat[0.5]}
    )
    (s,) = start.student_plans(o)
    assert s.plan.architecture.width == 0.5 and s.name.startswith("budget fit: student at 25%")
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.enqueue_trial(s.params)
    suggested = o.suggest(study.ask())
    assert suggested.architecture == s.plan.architecture
    assert suggested.quantize == s.plan.quantize
    # A budget below w0.25's quarter: the cheapest student that meets the budget instead.
    o = objective_for(
        tmp_path / "y", STUDENT_SPACE, larger_students=True, budgets={"latency_ms": 2 * lat[0.25]}
    )
    (s,) = start.student_plans(o)
    assert s.plan.architecture.width == 0.25
    # And none when no student meets the budget.
    o = objective_for(
        tmp_path / "z", STUDENT_SPACE, larger_students=True, budgets={"latency_ms": lat[0.25] / 2}
    )
    assert start.student_plans(o) == []


@pytest.mark.slow
def test_warm_start_puts_the_network_at_the_budget_first_then_the_students(tmp_path: Path) -> None:
    o = objective_for(tmp_path / "x", STUDENT_SPACE, larger_students=True)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    start.warm_start(study, o, log=lambda _m: None)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    names = [t.user_attrs["recipe"] for t in waiting]
    assert names[0].startswith("budget fit: 100% of the latency budget")
    assert names[1].startswith("budget fit: student")
    assert all(not n.startswith("budget fit: student") for n in names[2:])
    assert study.user_attrs["sensitivities"]


def test_a_space_without_quantization_starts_from_float_weights(tmp_path: Path) -> None:
    space = {"name": "prune-only", "prune": {"ratio": [0.0, 0.25, 0.5, 0.75]}}
    o = objective_for(tmp_path, space)
    (plan,) = start.uniform_plans(o, [1e9], activation_bits=32).values()
    assert {b for _, b in plan.quantize.weight_bits} == {32}
    assert {r for _, r in plan.prune.ratios} == {0.0}  # no budget asks for pruning

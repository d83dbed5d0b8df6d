"""A new study's first trials: plans made for the budgets before anything is trained.

- **Plans of the user's network** at 100 %, 70 % and 50 % of the latency budget, every other
  budget met. Two ways make each: the allocator's per-layer mix (`allocate`, the least summed
  sensitivity) and the engineer's uniform plan (the narrowest weight width of at least 8 bits
  the target runs, everywhere, and the least uniform L1 prune ratio the space offers that meets
  the fraction). The one enqueued is the one more accurate on the validation rows before any
  training, which predicts the accuracy after recovery (Spearman 0.87 over 30 plans,
  experiments/results/recovery.md). The summed sensitivities cannot see what recovery wins
  back: pruning recovers more of its loss than low rank does, and the allocator, which mixes
  both, lost more than 6 points at 70 % and 50 % of the budget on `gratings`.
- **Students**, where the space offers them: per family, the widest student at that weight
  width within a quarter of the latency budget (every other budget met), else the cheapest one
  that meets the budgets. The network's own plans cover half the budget and up; the students
  cover the range below, where pruning costs accuracy fast.

A multi-target study, or one whose budgets none of these meets, starts from `RECIPES`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from spaces import BASE_FAMILY, ArchitectureConfig, CompressionPlan, QuantizeConfig

from . import allocate
from .pipeline import prepare
from .record import StudyAttr, enqueue_plan, write_study_attrs

STUDENT_FRACTION = 0.25  # of the latency budget: where the students' start plans aim

# Hand-made recipes: the start of a multi-target study, and of one whose budgets no plan made
# for them meets.
RECIPES: dict[str, dict[str, Any]] = {
    "uncompressed": {},
    "int8": {"weight_bits": 8, "activation_bits": 8},
    "int8 + prune 50% L1": {"weight_bits": 8, "activation_bits": 8, "prune": 0.5},
    "student w0.5 + distillation": {"family": "mobilenetv2", "width": 0.5},
}


@dataclass(frozen=True)
class StartPlan:
    """One enqueued trial: its name in the report (the trial's `recipe`) and its plan."""

    name: str
    plan: CompressionPlan
    params: dict[str, Any]  # the trial parameters of the space that make `plan`


def _fits(fractions: dict[str, float], latency: float) -> bool:
    return all(v <= (latency if k == "latency_ms" else 1.0) + 1e-9 for k, v in fractions.items())


def _narrowest(objective: Any, key: str, default: int, at_least: int) -> int:
    """The narrowest width of `key` the space and the target offer, no narrower than
    `at_least` where one is (the start keeps to widths that cost a trained network little)."""
    dim = objective.space.dim("quantize", key, default).restricted(objective.offered_bits[key])
    values = sorted(dim.values()) if "quantize" in objective.space.sections else [default]
    return next((v for v in values if v >= at_least), values[-1])


def accuracy_before_training(objective: Any, plan: CompressionPlan) -> float:
    """`plan`'s primary metric on the search's validation rows, built and readied as a trial
    is (BatchNorm re-estimated, activation ranges calibrated), before any recovery."""
    compressed, _ = objective.build_and_cost(plan)
    prepare(compressed, plan, objective.task)
    return objective.task.evaluate(compressed.model, "val", subset=True)[objective.primary]


def uniform_plans(
    objective: Any, fractions: Sequence[float], *, activation_bits: int
) -> dict[float, CompressionPlan]:
    """Per latency fraction, the engineer's plan: one weight width everywhere and the least
    uniform L1 prune ratio of the space that meets the fraction (every other budget in full);
    fractions none meets are left out."""
    layers = list(objective.layers_for(ArchitectureConfig()))
    bits = _narrowest(objective, "weight_bits", 32, 8)
    ratios = [0.0]
    if "prune" in objective.space.sections:
        ratios = sorted(objective.space.dim("prune", "ratio", 0.0).values())
    costed = []
    for r in ratios:
        chosen = {(x.name, "prune"): r for x in layers if x.prunable and r > 0}
        plan = allocate.plan_of(layers, chosen, floor_bits=bits, activation_bits=activation_bits)
        costed.append((plan, allocate.budget_fractions(objective, plan)))
    out = {}
    for f in fractions:
        least = next((p for p, fr in costed if _fits(fr, f)), None)
        if least is not None:
            out[f] = least
    return out


def network_plans(
    objective: Any, *, log: Callable[[str], None]
) -> tuple[list[StartPlan], allocate.Sensitivities]:
    """The plans of the user's network at each of `allocate.LATENCY_FRACTIONS` (the allocated
    or the uniform one, whichever is more accurate before training), and the sensitivities
    the allocation came from."""
    sens = allocate.measure(objective, log=log)
    allocated = {p.fraction: p.plan for p in allocate.budget_plans(objective, sens)}
    uniform = uniform_plans(
        objective, allocate.LATENCY_FRACTIONS, activation_bits=sens.activation_bits
    )
    layers = objective.layers_for(ArchitectureConfig())
    out: list[StartPlan] = []
    for f in allocate.LATENCY_FRACTIONS:
        candidates = {"allocated": allocated.get(f), "uniform": uniform.get(f)}
        found = {k: p for k, p in candidates.items() if p is not None}
        if len(found) == 2 and found["allocated"] != found["uniform"]:
            scores = {k: accuracy_before_training(objective, p) for k, p in found.items()}
            kind = max(scores, key=lambda k: scores[k])
            log(
                f"start at {f:.0%} of the latency budget: {kind} plan "
                f"({', '.join(f'{k} {v:.3f}' for k, v in scores.items())} before training)"
            )
        elif found:
            kind = next(iter(found))
        else:
            continue
        plan = found[kind]
        if any(s.plan == plan for s in out):
            continue
        q = plan.quantize
        params = objective.space.plan_params(
            layers,
            bits=dict(q.weight_bits),
            prune=dict(plan.prune.ratios),
            ranks=dict(plan.lowrank.ranks),
            activation_bits=q.activation_bits,
            offered=objective.offered_bits,
        )
        out.append(StartPlan(f"budget fit: {f:.0%} of the latency budget, {kind}", plan, params))
    return out, sens


def student_plans(objective: Any, fraction: float = STUDENT_FRACTION) -> list[StartPlan]:
    """Per student family the space offers, the widest student within `fraction` of the
    latency budget at the start's weight width, else the cheapest one within the budgets."""
    space = objective.space
    offered = space.dim("architecture", "family", BASE_FAMILY).values()
    families = [f for f in offered if f != BASE_FAMILY]
    bits = _narrowest(objective, "weight_bits", 32, 8)
    acts = _narrowest(objective, "activation_bits", 32, 8)
    out = []
    for family in families:
        sizes = space.sizes(family)
        depth = min((d for _, d in sizes), default=1)
        costed = []
        for width in sorted(w for w, d in sizes if d == depth):
            arch = ArchitectureConfig(family, width, depth)
            layers = objective.layers_for(arch)
            weights = tuple((x.name, bits) for x in layers)
            plan = CompressionPlan(
                architecture=arch,
                quantize=QuantizeConfig(weight_bits=weights, activation_bits=acts),
            )
            costed.append((plan, allocate.budget_fractions(objective, plan), layers))
        within = [c for c in costed if _fits(c[1], fraction)]
        for plan, fr, layers in within[-1:] or [c for c in costed if _fits(c[1], 1.0)][:1]:
            params = space.recipe_params(
                layers,
                family=family,
                width=plan.architecture.width,
                weight_bits=bits,
                activation_bits=acts,
                offered=objective.offered_bits,
            )
            name = f"budget fit: student at {fr['latency_ms']:.0%} of the latency budget"
            out.append(StartPlan(name, plan, params))
    return out


def warm_start(study: optuna.Study, objective: Any, *, log: Callable[[str], None] = print) -> None:
    """Enqueue the first trials of a new study: the network's plan at 100 % of the latency
    budget, the students, then the network's smaller plans, with the layer sensitivities
    stored for the report; a multi-target study, or one none of them fits, starts from
    `RECIPES`."""
    families = objective.space.dim("architecture", "family", BASE_FAMILY).values()
    if not getattr(objective, "profiles", None):
        network: list[StartPlan] = []
        if BASE_FAMILY in families:
            log("budget-aware start: measuring each layer's sensitivity (no training)")
            network, sens = network_plans(objective, log=log)
            write_study_attrs(
                study,
                {
                    StudyAttr.SENSITIVITIES: sens.table(),
                    StudyAttr.SENSITIVITY_S: round(sens.seconds, 2),
                },
            )
            log(f"budget-aware start: {len(sens.table())} layer settings in {sens.seconds:.1f} s")
        students = student_plans(objective)
        # The extremes first: the network's most accurate plan and the cheapest ones there are.
        plans = network[:1] + students + network[1:]
        for p in plans:
            enqueue_plan(study, p.params, p.name)
        log(
            f"budget-aware start: {len(network)} plans of the network and {len(students)} "
            "students enqueued"
        )
        if plans:
            return
    _enqueue_recipes(study, objective, families)


def _enqueue_recipes(study: optuna.Study, objective: Any, families: Sequence[Any]) -> None:
    for name, recipe in RECIPES.items():
        family = recipe.get("family", BASE_FAMILY)
        if family not in families:
            continue
        arch = ArchitectureConfig(family=family, width=recipe.get("width", 1.0))
        params = objective.space.recipe_params(
            objective.layers_for(arch), offered=objective.offered_bits, **recipe
        )
        enqueue_plan(study, params, name)

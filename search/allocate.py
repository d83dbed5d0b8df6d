"""A budget-aware start: per-layer sensitivities measured without training, then plans that meet
the budgets with the least summed sensitivity, costed by the target's own profile.

1. `measure`: for each compressible layer of the user's network and each setting the space and
   the target offer (weight bits, prune ratio, kept rank), the plan that compresses that layer
   alone is built, readied as the search readies a plan (`pipeline.prepare`: BatchNorm
   re-estimated, activation ranges set), costed on the profile and scored on fixed validation
   rows. Its sensitivity is the rise in cross-entropy over the least-compressed plan. Nothing
   is trained.
2. `allocate`: from the least-compressed plan, greedily take the layer setting that removes the
   most budget excess per unit of sensitivity, with each setting's cost taken as its change
   from that plan, until the summed figures fit the targets; then the real cost model checks
   the whole plan, and the targets tighten by what it found (the changes are not exactly
   additive: pruning a layer also thins the next one's input).
3. `budget_plans`: such plans at 100 %, 70 % and 50 % of the latency budget, as trial
   parameters of the space (`SearchSpace.plan_params`), for the search to try first.

AIMET's AMP allocates bits on bit-ops and ModelOpt's AutoQuantize on effective bits; here the
figures are the device's own (latency, SRAM, flash), and pruning and rank share the budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from spaces import CompressionPlan, LayerInfo, LowRankConfig, PruneConfig, QuantizeConfig

from .hardware import constraint_values
from .pipeline import prepare
from .tasks import predict

SENSITIVITY_ROWS = 256  # fixed validation rows every setting is scored on
MAX_PRUNE_SETTINGS = 4  # prune ratios measured per layer, spread over the space's range
LATENCY_FRACTIONS = (1.0, 0.7, 0.5)
ROUNDS = 4  # allocate, check the whole plan's real cost, tighten, again


@dataclass(frozen=True)
class Setting:
    """One layer at one operator setting, measured alone."""

    layer: str
    op: str  # "bits", "prune" or "rank"
    value: float
    sensitivity: float  # cross-entropy rise over the least-compressed plan
    delta: Mapping[str, float]  # change of each budget's fraction (value / budget)


@dataclass
class Floor:
    """A uniform starting plan (every layer at `bits`, nothing pruned or factorised) and each
    layer setting measured from it."""

    bits: int
    loss: float  # cross-entropy of the floor plan itself
    fractions: dict[str, float]  # budget key -> value / budget
    settings: list[Setting] = field(default_factory=list)


@dataclass
class Sensitivities:
    """What `measure` found, from each uniform weight width the target runs.

    Several floors, because a device's cost is not a sum over layers at every step: a TFLite
    Micro model is int8 throughout only when every layer is, so one int8 layer in a float model
    saves no flash, and int8 everywhere saves most of it.
    """

    activation_bits: int
    floors: list[Floor] = field(default_factory=list)
    seconds: float = 0.0

    def table(self) -> list[dict[str, Any]]:
        """Rows for storage and the report: floor, layer, operator, setting, sensitivity."""
        return [
            {
                "floor_bits": f.bits,
                "layer": s.layer,
                "op": s.op,
                "value": s.value,
                "sensitivity": round(s.sensitivity, 6),
            }
            for f in self.floors
            for s in f.settings
        ]


def _spread(values: Sequence[float], n: int) -> list[float]:
    if len(values) <= n:
        return list(values)
    step = (len(values) - 1) / (n - 1)
    return [values[round(i * step)] for i in range(n)]


def _options(objective: Any, layers: Sequence[LayerInfo], floor_bits: int) -> list[tuple]:
    """(layer, op, value) for every setting the space and the target offer."""
    space = objective.space
    out: list[tuple[str, str, float]] = []
    if "quantize" in space.sections:
        offered = objective.offered_bits["weight_bits"]
        bits = space.dim("quantize", "weight_bits", 32).restricted(offered).values()
        out += [(x.name, "bits", b) for x in layers for b in bits if b < floor_bits]
    if "prune" in space.sections:
        ratios = [r for r in space.dim("prune", "ratio", 0.0).values() if r > 0]
        ratios = _spread(sorted(ratios), MAX_PRUNE_SETTINGS)
        out += [(x.name, "prune", r) for x in layers if x.prunable for r in ratios]
    if "lowrank" in space.sections:
        ranks = [r for r in space.dim("lowrank", "rank", 1.0).values() if r < 1]
        out += [(x.name, "rank", r) for x in layers if x.factorizable for r in ranks]
    return out


def plan_of(
    layers: Sequence[LayerInfo],
    chosen: Mapping[tuple[str, str], float],
    *,
    floor_bits: int,
    activation_bits: int,
) -> CompressionPlan:
    """The plan of the user's network with `chosen[(layer, op)]` settings, the rest at the
    least-compressed one."""
    bits = {x.name: int(chosen.get((x.name, "bits"), floor_bits)) for x in layers}
    ratios = {x.name: chosen.get((x.name, "prune"), 0.0) for x in layers if x.prunable}
    ranks = {x.name: chosen.get((x.name, "rank"), 1.0) for x in layers if x.factorizable}
    return CompressionPlan(
        lowrank=LowRankConfig(ranks=tuple(ranks.items()), mode="svd"),
        prune=PruneConfig(ratios=tuple(ratios.items()), importance="l1"),
        quantize=QuantizeConfig(weight_bits=tuple(bits.items()), activation_bits=activation_bits),
    )


class _Scorer:
    """Builds, readies, costs and scores plans of the user's network."""

    def __init__(self, objective: Any) -> None:
        self.objective = objective
        task = objective.task
        # Rows of the search's own fixed validation subset: nothing beyond it is read.
        self.x, self.y = task.val.subset(task.val_subset).take(SENSITIVITY_ROWS)

    def fractions(self, plan: CompressionPlan) -> dict[str, float]:
        """Each budget's value / budget for `plan` (1.0 is at the budget)."""
        o = self.objective
        _, cost = o.build_and_cost(plan)
        return self._fractions(cost)

    def _fractions(self, cost: Any) -> dict[str, float]:
        o = self.objective
        limits = constraint_values(
            cost, o.budgets, profile=o.profile, latency_margin=o.latency_margin
        )
        return {k: v + 1.0 for k, v in limits.items()}

    def score(self, plan: CompressionPlan) -> tuple[float, dict[str, float]]:
        """(cross-entropy on the fixed rows, budget fractions) of `plan`, untrained."""
        o = self.objective
        compressed, cost = o.build_and_cost(plan)
        prepare(compressed, plan, o.task)
        logits = predict(compressed.model, self.x, device=o.task.device)
        compressed.model.cpu()
        loss = nn.functional.cross_entropy(logits, torch.as_tensor(self.y)).item()
        return loss, self._fractions(cost)


def measure(objective: Any, *, log: Callable[[str], None] = lambda _m: None) -> Sensitivities:
    """Every setting's sensitivity and cost change, each layer compressed alone from each
    uniform floor (no training)."""
    from spaces import ArchitectureConfig

    t0 = time.perf_counter()
    layers = list(objective.layers_for(ArchitectureConfig()))
    offered = objective.offered_bits
    space = objective.space
    quantized = "quantize" in space.sections
    widths = space.dim("quantize", "weight_bits", 32).restricted(offered["weight_bits"]).values()
    floors = sorted({b for b in widths if b >= 8} if quantized else {32}, reverse=True)
    acts = space.dim("quantize", "activation_bits", 32).restricted(offered["activation_bits"])
    # Activations at the narrowest width the device runs: edge runtimes run them there, and
    # calibrated 8-bit activations cost a trained network little (experiments/results/recovery.md).
    activation_bits = min(acts.values()) if quantized else 32
    scorer = _Scorer(objective)
    result = Sensitivities(activation_bits)
    # A pruning or rank setting loses about as much from any floor: measured once, from the
    # widest; from the others only its cost is (building and costing is the cheap half).
    known: dict[tuple[str, str, float], float] = {}
    for bits in floors or [32]:
        kw = {"floor_bits": bits, "activation_bits": activation_bits}
        loss, fractions = scorer.score(plan_of(layers, {}, **kw))
        floor = Floor(bits, loss, fractions)
        options = _options(objective, layers, bits)
        for i, (layer, op, value) in enumerate(options):
            plan = plan_of(layers, {(layer, op): value}, **kw)
            if (layer, op, value) in known:
                rise, fr = known[(layer, op, value)], scorer.fractions(plan)
            else:
                lo, fr = scorer.score(plan)
                rise = known[(layer, op, value)] = max(lo - loss, 0.0)
            delta = {k: fr[k] - fractions[k] for k in fractions}
            floor.settings.append(Setting(layer, op, value, rise, delta))
            if (i + 1) % 20 == 0:
                log(f"sensitivity: {i + 1}/{len(options)} settings from {bits}-bit weights")
        result.floors.append(floor)
    result.seconds = time.perf_counter() - t0
    return result


def _excess(figures: Mapping[str, float], targets: Mapping[str, float]) -> float:
    return sum(max(0.0, figures[k] / targets[k] - 1.0) for k in targets)


def allocate(
    floor: Floor,
    targets: Mapping[str, float],
    *,
    check: Callable[[dict[tuple[str, str], float]], dict[str, float]] | None = None,
) -> tuple[dict[tuple[str, str], float], dict[str, float]] | None:
    """Settings {(layer, op): value} from `floor` whose figures fit `targets` (budget key ->
    the fraction of its budget allowed), greedily by excess removed per unit of sensitivity;
    None when no choice of settings fits. `check(chosen)` gives a plan's real fractions: the
    targets tighten by how far the summed changes were off, for up to ROUNDS rounds."""
    chosen: dict[tuple[str, str], float] = {}
    by_slot: dict[tuple[str, str], list[Setting]] = {}
    for s in floor.settings:
        by_slot.setdefault((s.layer, s.op), []).append(s)
    goal = dict(targets)
    for _ in range(ROUNDS):
        figures = _summed(floor, by_slot, chosen)
        while _excess(figures, goal) > 0:
            best, best_gain = None, 0.0
            for slot, options in by_slot.items():
                now = _at(by_slot, slot, chosen.get(slot))
                for s in options:
                    moved = {
                        k: figures[k] + s.delta[k] - (now.delta[k] if now else 0.0)
                        for k in figures
                    }
                    removed = _excess(figures, goal) - _excess(moved, goal)
                    cost = s.sensitivity - (now.sensitivity if now else 0.0)
                    gain = removed / max(cost, 1e-6)
                    if removed > 1e-9 and gain > best_gain:
                        best, best_gain = s, gain
            if best is None:
                return None  # nothing left removes excess: these targets are out of reach
            chosen[(best.layer, best.op)] = best.value
            figures = _summed(floor, by_slot, chosen)
        _drop_unneeded(floor, by_slot, chosen, goal)
        figures = _summed(floor, by_slot, chosen)
        if check is None:
            return chosen, figures
        real = check(chosen)
        over = {k: real[k] / targets[k] for k in targets if real[k] > targets[k]}
        if not over:
            return chosen, real
        for k, ratio in over.items():  # ask the sum for that much less next round
            goal[k] = goal[k] / ratio
    return None


def _drop_unneeded(
    floor: Floor, by_slot: Mapping, chosen: dict[tuple[str, str], float], goal: Mapping
) -> None:
    """Undo the settings the targets no longer need, the most sensitive first (a greedy
    step taken early can be made redundant by a later, larger one)."""

    def sensitivity(slot: tuple[str, str]) -> float:
        s = _at(by_slot, slot, chosen[slot])
        return s.sensitivity if s is not None else 0.0

    for slot in sorted(chosen, key=sensitivity, reverse=True):
        value = chosen.pop(slot)
        if _excess(_summed(floor, by_slot, chosen), goal) > 0:
            chosen[slot] = value


def _at(by_slot: Mapping, slot: tuple[str, str], value: float | None) -> Setting | None:
    if value is None:
        return None
    return next(s for s in by_slot[slot] if s.value == value)


def _summed(floor: Floor, by_slot: Mapping, chosen: Mapping) -> dict[str, float]:
    figures = dict(floor.fractions)
    for slot, value in chosen.items():
        s = _at(by_slot, slot, value)
        assert s is not None
        for k in figures:
            figures[k] += s.delta[k]
    return figures


@dataclass
class BudgetPlan:
    fraction: float  # of the latency budget aimed at
    plan: CompressionPlan
    fractions: dict[str, float]  # the real cost's value / budget per budget
    sensitivity: float  # the floor's loss plus the chosen settings' summed rises


def budget_plans(
    objective: Any,
    sens: Sensitivities,
    fractions: Sequence[float] = LATENCY_FRACTIONS,
) -> list[BudgetPlan]:
    """A plan of the user's network at each fraction of the latency budget (every other budget
    in full), checked on the real cost model: from each floor, the allocation that fits, and
    of those the least sensitive (the floor's own loss counted). Fractions no choice of
    settings reaches are left out, and so are repeats."""
    from spaces import ArchitectureConfig

    layers = list(objective.layers_for(ArchitectureConfig()))
    scorer = _Scorer(objective)
    out: list[BudgetPlan] = []
    for f in fractions:
        best: BudgetPlan | None = None
        for floor in sens.floors:
            kw = {"floor_bits": floor.bits, "activation_bits": sens.activation_bits}
            targets = {k: (f if k == "latency_ms" else 1.0) for k in floor.fractions}

            def check(chosen: dict[tuple[str, str], float], kw: dict = kw) -> dict[str, float]:
                return scorer.fractions(plan_of(layers, chosen, **kw))

            found = allocate(floor, targets, check=check)
            if found is None:
                continue
            chosen, real = found
            by_key = {(s.layer, s.op, s.value): s.sensitivity for s in floor.settings}
            total = floor.loss + sum(by_key[(lay, op, v)] for (lay, op), v in chosen.items())
            if best is None or total < best.sensitivity:
                best = BudgetPlan(f, plan_of(layers, chosen, **kw), real, total)
        if best is not None and all(p.plan != best.plan for p in out):
            out.append(best)
    return out

"""A budget-aware start: per-layer sensitivities measured without training, then plans that meet
the budgets with the least summed sensitivity, costed by the target's own profile.

1. `measure`: for each compressible layer of the user's network and each setting the space and
   the target offer (weight bits, prune ratio, kept rank), the rise in loss from compressing
   that layer alone, predicted as the Fisher-weighted weight change 0.5 * sum(F * dW^2) from
   one backward pass over fixed validation rows, and the change in each budget's figure,
   from building and costing that plan on the profile. Nothing is trained.
2. `allocate`: from a uniform floor plan, greedily take the layer setting that removes the
   most budget excess per unit of sensitivity until the summed figures fit the targets; then
   the real cost model checks the whole plan and the greedy goes on from its real figures
   (the changes are not additive: pruning a layer also thins the next one's input).
3. `budget_plans`: such plans at 100 %, 70 % and 50 % of the latency budget, as trial
   parameters of the space (`SearchSpace.plan_params`), for the search to try first.

AIMET's AMP allocates bits on bit-ops and ModelOpt's AutoQuantize on effective bits; here the
figures are the device's own (latency, SRAM, flash), and pruning and rank share the budget.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from spaces import CompressionPlan, LayerInfo, LowRankConfig, PruneConfig, QuantizeConfig

from .compress import explicit_attention, fake_quant_weight
from .hardware import constraint_values

SENSITIVITY_ROWS = 256  # fixed validation rows the Fisher is estimated on
FISHER_CHUNKS = 16  # backward passes over them (see `fisher`)
MAX_PRUNE_SETTINGS = 4  # prune ratios measured per layer, spread over the space's range
LATENCY_FRACTIONS = (1.0, 0.7, 0.5)
ROUNDS = 12  # allocate, check the whole plan's real cost, go on from there


@dataclass(frozen=True)
class Setting:
    """One layer at one operator setting, measured alone."""

    layer: str
    op: str  # "bits", "prune" or "rank"
    value: float
    sensitivity: float  # predicted cross-entropy rise over the floor plan (Fisher)
    delta: Mapping[str, float]  # change of each budget's fraction (value / budget)


@dataclass
class Floor:
    """A uniform starting plan (every layer at `bits`, nothing pruned or factorised) and each
    layer setting measured from it."""

    bits: int
    loss: float  # predicted cross-entropy rise of the floor plan over the base model
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


def budget_fractions(objective: Any, plan: CompressionPlan) -> dict[str, float]:
    """Each budget's value / budget for `plan`, built and costed on the target's profile
    (1.0 is at the budget)."""
    o = objective
    _, cost = o.build_and_cost(plan)
    limits = constraint_values(cost, o.budgets, profile=o.profile, latency_margin=o.latency_margin)
    return {k: v + 1.0 for k, v in limits.items()}


def fisher(model: nn.Module, x: torch.Tensor, y: Any, *, chunks: int = FISHER_CHUNKS) -> dict:
    """The diagonal empirical Fisher of the mean cross-entropy, per parameter name.

    Gradients of small chunks stand in for per-sample ones: for a chunk of B rows,
    B * g_chunk^2 estimates the mean squared per-sample gradient (cross terms average out).
    """
    model.eval()  # running BatchNorm statistics: the network as it is deployed
    params = dict(model.named_parameters())
    out = {n: torch.zeros_like(p) for n, p in params.items()}
    xs, ys = torch.as_tensor(x).chunk(chunks), torch.as_tensor(y).chunk(chunks)
    for xb, yb in zip(xs, ys):
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(xb), yb).backward()
        for n, p in params.items():
            if p.grad is not None:
                out[n] += len(xb) * p.grad.detach() ** 2 / len(xs)
    model.zero_grad(set_to_none=True)
    return out


@torch.no_grad()
def _changed(w: torch.Tensor, op: str, value: float, fraction_rank: Callable[[float], int]):
    """`w` with one layer setting applied the way the compressor applies it: `bits`
    rounds per output channel, `prune` zeroes the output channels of least L1 norm, `rank`
    keeps the leading singular directions of the (out, in * kh * kw) matrix."""
    if op == "bits":
        return fake_quant_weight(w, int(value))
    if op == "prune":
        drop = int(value * w.shape[0])
        out = w.clone()
        out[w.flatten(1).abs().sum(1).argsort()[:drop]] = 0
        return out
    w2d = w.flatten(1).double()
    u, s, vh = torch.linalg.svd(w2d, full_matrices=False)
    k = fraction_rank(value)
    return ((u[:, :k] * s[:k]) @ vh[:k]).to(w.dtype).reshape(w.shape)


def measure(objective: Any, *, log: Callable[[str], None] = lambda _m: None) -> Sensitivities:
    """Every setting's sensitivity and cost change, each layer compressed alone from each
    uniform floor (no training).

    A setting's sensitivity is its predicted rise in cross-entropy on the search's fixed
    validation rows, 0.5 * sum(F * dW^2) with F the diagonal Fisher of the loss (the
    second-order term OBD and HAWQ-style allocators use; the first-order term vanishes at
    a trained minimum). One backward pass serves every setting, so measuring costs about one
    evaluation of those rows; the cost changes come from building and costing each plan.
    """
    from spaces import ArchitectureConfig

    from .compress import full_rank

    t0 = time.perf_counter()
    o = objective
    layers = list(o.layers_for(ArchitectureConfig()))
    space = o.space
    quantized = "quantize" in space.sections
    widths = space.dim("quantize", "weight_bits", 32).restricted(o.offered_bits["weight_bits"])
    floors = sorted({b for b in widths.values() if b >= 8} if quantized else {32}, reverse=True)
    acts = space.dim("quantize", "activation_bits", 32).restricted(
        o.offered_bits["activation_bits"]
    )
    # Activations at the narrowest width the device runs: edge runtimes run them there, and
    # calibrated 8-bit activations cost a trained network little (experiments/results/recovery.md).
    activation_bits = min(acts.values()) if quantized else 32
    model = explicit_attention(copy.deepcopy(o.task.base_model), inplace=True).to(o.task.device)
    x, y = o.task.val.subset(o.task.val_subset).take(SENSITIVITY_ROWS)
    grads = fisher(model, x.to(o.task.device), torch.as_tensor(y).to(o.task.device))
    modules = dict(model.named_modules())

    def rise(layer: LayerInfo, op: str, value: float) -> float:
        m = modules[layer.name]
        w = m.weight.detach()

        def rank_of(fraction: float) -> int:
            return max(1, round(fraction * full_rank(m, "svd")))

        dw = w - _changed(w, op, value, rank_of)
        return 0.5 * float((grads[f"{layer.name}.weight"] * dw**2).sum())

    base = {(x.name, "bits", b): rise(x, "bits", b) for x in layers for b in widths.values()}
    rises: dict[tuple[str, str, float], float] = {}  # prune and rank settings
    result = Sensitivities(activation_bits)
    for bits in floors or [32]:
        kw = {"floor_bits": bits, "activation_bits": activation_bits}
        floor_loss = sum(base[(x.name, "bits", bits)] for x in layers)
        fractions = budget_fractions(o, plan_of(layers, {}, **kw))
        floor = Floor(bits, floor_loss, fractions)
        options = _options(o, layers, bits)
        by_name = {x.name: x for x in layers}
        deltas = _deltas(o, layers, options, kw, fractions)
        for i, (name, op, value) in enumerate(options):
            if op == "bits":  # relative to the floor's own rounding of this layer
                r = base[(name, op, value)] - base[(name, op, bits)]
            else:  # the same from every floor: computed once
                if (name, op, value) not in rises:
                    rises[(name, op, value)] = rise(by_name[name], op, value)
                r = rises[(name, op, value)]
            floor.settings.append(Setting(name, op, value, max(r, 0.0), deltas[(name, op, value)]))
            if (i + 1) % 20 == 0:
                log(f"sensitivity: {i + 1}/{len(options)} settings from {bits}-bit weights")
        result.floors.append(floor)
    result.seconds = time.perf_counter() - t0
    return result


def _deltas(
    o: Any,
    layers: Sequence[LayerInfo],
    options: Sequence[tuple[str, str, float]],
    kw: Mapping[str, int],
    fractions: Mapping[str, float],
) -> dict[tuple[str, str, float], dict[str, float]]:
    """Each option's change of every budget fraction from the floor plan. Pruning's savings
    are linear in the ratio (MACs and weights of the layer and of the next one's input), so
    one build per layer, at its largest ratio, serves all its ratios."""
    strongest: dict[str, float] = {}
    for name, op, value in options:
        if op == "prune":
            strongest[name] = max(value, strongest.get(name, 0.0))
    costed: dict[tuple[str, str, float], dict[str, float]] = {}
    out = {}
    for name, op, value in options:
        at = strongest[name] if op == "prune" else value
        if (name, op, at) not in costed:
            fr = budget_fractions(o, plan_of(layers, {(name, op): at}, **kw))
            costed[(name, op, at)] = {k: fr[k] - fractions[k] for k in fractions}
        out[(name, op, value)] = {k: v * value / at for k, v in costed[(name, op, at)].items()}
    return out


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
    None when no choice of settings fits.

    The figures are the floor's plus each chosen setting's change, which overstates the
    savings of settings that overlap (pruning a layer also thins the next one's input; rank
    and pruning of one layer share its work). So `check(chosen)`, the plan's real fractions,
    replaces the summed figures after each round, and the greedy goes on from there, for up
    to ROUNDS rounds."""
    chosen: dict[tuple[str, str], float] = {}
    by_slot: dict[tuple[str, str], list[Setting]] = {}
    for s in floor.settings:
        by_slot.setdefault((s.layer, s.op), []).append(s)
    figures = dict(floor.fractions)
    for round_ in range(ROUNDS):
        while _excess(figures, targets) > 0:
            step = _best_step(by_slot, chosen, figures, targets)
            if step is None:
                return None  # nothing left removes excess: these targets are out of reach
            now = _at(by_slot, (step.layer, step.op), chosen.get((step.layer, step.op)))
            figures = {
                k: figures[k] + step.delta[k] - (now.delta[k] if now else 0.0) for k in figures
            }
            chosen[(step.layer, step.op)] = step.value
        if round_ == 0:  # later rounds start from real figures the sums cannot undo
            _drop_unneeded(floor, by_slot, chosen, targets)
        if check is None:
            return chosen, _summed(floor, by_slot, chosen)
        figures = check(chosen)
        if _excess(figures, targets) <= 0:
            return chosen, figures
    return None


def _best_step(
    by_slot: Mapping, chosen: Mapping, figures: Mapping[str, float], targets: Mapping
) -> Setting | None:
    """The setting that removes the most excess per unit of added sensitivity."""
    best, best_gain = None, 0.0
    for slot, options in by_slot.items():
        now = _at(by_slot, slot, chosen.get(slot))
        for s in options:
            moved = {k: figures[k] + s.delta[k] - (now.delta[k] if now else 0.0) for k in figures}
            removed = _excess(figures, targets) - _excess(moved, targets)
            cost = s.sensitivity - (now.sensitivity if now else 0.0)
            gain = removed / max(cost, 1e-6)
            if removed > 1e-9 and gain > best_gain:
                best, best_gain = s, gain
    return best


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
    out: list[BudgetPlan] = []
    for f in fractions:
        best: BudgetPlan | None = None
        for floor in sens.floors:
            kw = {"floor_bits": floor.bits, "activation_bits": sens.activation_bits}
            targets = {k: (f if k == "latency_ms" else 1.0) for k in floor.fractions}

            def check(chosen: dict[tuple[str, str], float], kw: dict = kw) -> dict[str, float]:
                return budget_fractions(objective, plan_of(layers, chosen, **kw))

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

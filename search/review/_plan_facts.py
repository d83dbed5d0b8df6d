"""Plain facts about one trial's plan for the review: summary features and per-layer shares.

Compute first, draw second: `summary_features` gives the few numbers the parallel-coordinates
view plots for every trial (one axis per feature, whatever the network's depth), and
`layer_shares` explains one plan layer by layer from the cost model's rows recorded at search
time (`objective.layer_costs`): each layer's latency, weight bytes and activation memory in
the base model and in the plan. The report only draws these objects; tests check them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from spaces import BASE_FAMILY, is_student, layer_rows

from ..record import TrialRecord
from ._run import RunData

__all__ = [
    "FEATURES",
    "SHARE_FIGURES",
    "LayerShare",
    "PlanShares",
    "latency_band",
    "latency_error",
    "latency_note",
    "latency_text",
    "layer_shares",
    "summary_features",
]

# The parallel-coordinates axes, in order (label -> what it is).
FEATURES = {
    "family": "architecture family (base = the model itself, else a distilled student)",
    "mean weight bits": "weight bits averaged over the compressible layers",
    "kept MACs": "the plan's multiply-accumulates / the base model's",
    "mean prune ratio": "fraction of channels removed, averaged over the layers",
    "kept rank": "kept low-rank fraction, averaged over the layers (1 = not factorized)",
    "sparsity": "unstructured: fraction of the remaining weights zeroed",
}
# The per-layer figures of a cost row: (key, label, unit). Activation memory is the bytes a
# layer reads and writes (input + output): its largest layer sets the peak.
PEAK = "activation_bytes"
SHARE_FIGURES = (
    ("latency_ms", "latency", "ms"),
    ("weight_bytes", "weight bytes", "bytes"),
    (PEAK, "peak activations", "bytes"),
)


def latency_error(run: RunData) -> float | None:
    """The profile's measured latency error (`latency_error.p90`: the 90th percentile of
    |predicted/measured - 1|), when the run's latency is the cost model's prediction and its
    profile stores one; else None."""
    if run.experiment.get("latency") == "measured":
        return None  # measured latencies: the prediction's error does not apply
    # The study stores `HardwareProfile.to_dict()`; read the field, not a rebuilt profile
    # (JSON storage turns the profile's integer keys into strings).
    err = run.profile.get("latency_error") if run.profile else None
    p90 = err.get("p90") if isinstance(err, Mapping) else None
    if isinstance(p90, bool) or not isinstance(p90, (int, float)) or not 0 <= p90 < 100:
        return None
    return float(p90)


def _mean(values: Sequence[float], default: float) -> float:
    return sum(values) / len(values) if values else default


def summary_features(run: RunData, t: TrialRecord) -> dict[str, Any]:
    """The plan of `t` as the `FEATURES` (None where a figure is unknown)."""
    plan = t.plan or {}
    rows = layer_rows(plan)
    arch = plan.get("architecture") or {}
    prune = plan.get("prune") or {}
    macs, base_macs = t.value("macs"), run.base_metrics.get("macs")
    kept = (
        macs / float(base_macs)
        if macs is not None and isinstance(base_macs, (int, float)) and base_macs > 0
        else None
    )
    return {
        "family": str(arch.get("family", BASE_FAMILY)),
        "mean weight bits": _mean([float(r["bits"]) for r in rows], 32.0),
        "kept MACs": kept,
        "mean prune ratio": _mean([r["prune_ratio"] for r in rows], 0.0),
        "kept rank": _mean([r["rank"] for r in rows], 1.0),
        "sparsity": float(prune.get("sparsity") or 0.0),
    }


@dataclass(frozen=True)
class LayerShare:
    """One layer of the base model or the plan, before (base) and after (plan) compression.

    `before`/`after` map each `SHARE_FIGURES` key to the layer's figure (0 where the layer does
    not exist on that side: a student's layers replace the base model's).
    """

    layer: str
    kind: str
    before: Mapping[str, float]
    after: Mapping[str, float]
    plan: str = ""  # the plan's decisions for this layer ("w8 p25% r0.5"), when it has any


@dataclass(frozen=True)
class PlanShares:
    """Where one plan's cost goes, layer by layer, against the base model."""

    trial: int
    plan_text: str
    layers: tuple[LayerShare, ...]
    student: bool  # a different network: its layers are not the base model's

    def total(self, key: str, side: str) -> float:
        """A side's total of a figure, `side` = "before" | "after": the sum over layers, but
        for activation memory the largest layer's (what sets the peak)."""
        values = [float(getattr(s, side)[key]) for s in self.layers]
        return max(values, default=0.0) if key == PEAK else sum(values)

    def share(self, s: LayerShare, key: str, side: str) -> float:
        """A layer's fraction of its own side's total or peak (0 when that is 0)."""
        total = self.total(key, side)
        return float(getattr(s, side)[key]) / total if total > 0 else 0.0

    def of_base(self, s: LayerShare, key: str, side: str) -> float:
        """A layer's figure as a fraction of the base model's total or peak (latency and
        weight bars of the base sum to 1, the plan's to its total over the base's)."""
        total = self.total(key, "before")
        return float(getattr(s, side)[key]) / total if total > 0 else 0.0


def _figures(row: Sequence[Any]) -> tuple[str, str, dict[str, float]]:
    name, kind, latency, weight, act = row[:5]
    return (
        str(name),
        str(kind),
        {"latency_ms": float(latency), "weight_bytes": float(weight), "activation_bytes": act},
    )


def _module_path(name: str, roots: set[str]) -> str:
    """The cost model names element-wise kernels after their graph node (`features_6`), the
    others after their module (`features.3`): show both as module paths (`features.6`) where
    the name starts with a module the other rows name. `add_1`, `cat` stay as they are."""
    head, sep, rest = name.partition("_")
    if "." in name or not sep or head not in roots or not rest[:1].isdigit():
        return name
    return re.sub(r"_(?=\d)|(?<=\d)_", ".", name)  # only the separators around indices


def _owner(kernel: str, layers: Sequence[str]) -> str:
    """The base layer a kernel belongs to: itself, or the layer it was factorized from
    (`conv2.0`, `conv2.1` -> `conv2`)."""
    for name in layers:
        if kernel == name or kernel.startswith(name + "."):
            return name
    return kernel


def _block(kernel: str, kind: str) -> str:
    """A student's kernel grouped into its block (`features.2.branch.0.0` -> `features.2`);
    its element-wise glue (concatenations, shuffles, adds) into one row."""
    if kind == "elementwise":
        return "element-wise ops"
    parts = kernel.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else kernel


def layer_shares(run: RunData, t: TrialRecord) -> PlanShares | None:
    """Per-layer shares of trial `t` against the base model; None when the run did not record
    the cost rows (older runs) or the trial was never costed."""
    if not run.base_layer_costs or not t.layer_costs:
        return None
    base = [_figures(r) for r in run.base_layer_costs]
    rows = [_figures(r) for r in t.layer_costs]
    roots = {n.split(".")[0] for n, _, _ in base + rows if "." in n}
    base = [(_module_path(n, roots), k, f) for n, k, f in base]
    rows = [(_module_path(n, roots), k, f) for n, k, f in rows]
    names = [n for n, _, _ in base]
    student = is_student(t.plan)
    keys = [k for k, _, _ in SHARE_FIGURES]
    zero = dict.fromkeys(keys, 0.0)
    order: list[str] = []
    kinds: dict[str, str] = {}
    before: dict[str, dict[str, float]] = {}
    after: dict[str, dict[str, float]] = {}
    for name, kind, figs in base:
        order.append(name)
        kinds[name] = kind
        before[name] = {k: float(figs[k]) for k in keys}
    for kernel, kind, figs in rows:
        # A student's layers are its own, even where a name matches one of the base model's.
        name = f"student {_block(kernel, kind)}" if student else _owner(kernel, names)
        if name not in kinds:
            order.append(name)
            kinds[name] = kind
        acc = after.setdefault(name, dict(zero))
        for k in keys:
            if k == "activation_bytes":  # a factorized layer's widest kernel sets its memory
                acc[k] = max(acc[k], float(figs[k]))
            else:
                acc[k] += float(figs[k])
    decisions = {
        r["layer"]: f"w{r['bits']} p{r['prune_ratio']:.0%} r{r['rank']:.2g}"
        for r in layer_rows(t.plan)
    }
    return PlanShares(
        trial=t.number,
        plan_text=t.plan_text,
        layers=tuple(
            LayerShare(
                layer=n,
                kind=kinds[n],
                before=before.get(n, dict(zero)),
                after=after.get(n, dict(zero)),
                plan=decisions.get(n, ""),
            )
            for n in order
        ),
        student=student,
    )


def latency_band(latency_ms: float, error: float) -> tuple[float, float]:
    """The band `latency_ms / (1 + error)` to `latency_ms * (1 + error)` around a prediction,
    for a profile's measured relative error (its p90 of |predicted/measured - 1|). The lower
    end is the least a measurement can be (predicted/measured <= 1 + error): positive, so the
    band shows on a log axis even when the error exceeds 100 % (cloud_gpu). The upper end is
    the pessimistic bound `budget_margin: p90` checks the latency budget against."""
    return latency_ms / (1.0 + error), latency_ms * (1.0 + error)


def latency_text(latency_ms: float, error: float | None) -> str:
    """`2.7 ms (2.2-3.2 ms, p90)`: a predicted latency with the profile's error band."""
    if error is None:
        return f"{latency_ms:.3g} ms"
    lo, hi = latency_band(latency_ms, error)
    return f"{latency_ms:.3g} ms ({lo:.3g}-{hi:.3g} ms, p90)"


def latency_note(run: RunData, latency_ms: float | None) -> str:
    """The model card's sentence on how far a predicted latency can be trusted, and which bound
    the budget was checked against ("" when the latency was measured, not predicted)."""
    if run.experiment.get("latency") == "measured" or latency_ms is None:
        return ""
    error = latency_error(run)
    if error is None:
        return " The profile stores no measured latency error, so the prediction has no band."
    err = run.profile.get("latency_error")
    source = err.get("source") if isinstance(err, Mapping) else ""
    text = (
        f" Predicted latency {latency_text(latency_ms, error)}: the band is the profile's "
        f"measured error (p90 of |predicted/measured - 1|{'; ' + source if source else ''})."
    )
    if run.experiment.get("budget_margin") == "p90":
        text += (
            " The latency budget was checked against the pessimistic bound, "
            f"{latency_band(latency_ms, error)[1]:.3g} ms (`budget_margin: p90`)."
        )
    return text

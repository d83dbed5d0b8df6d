"""CompressionPlan: the frozen, typed record of every decision one trial makes.

A plan is made of one config per operator. The operators apply in the fixed order
architecture -> low-rank -> prune -> quantize; distillation configures recovery.
Per-layer decisions are keyed by the module name in the model the operator sees
(the base model, or the student when an architecture is chosen).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

BASE_FAMILY = "base"  # the user's own network; every other family is a student
ARCH_FAMILIES = (BASE_FAMILY, "mobilenetv2", "shufflenetv2")
IMPORTANCES = ("l1", "l2", "taylor")
LOWRANK_MODES = ("svd", "spatial")
WEIGHT_BITS = (2, 4, 8, 16, 32)
ACTIVATION_BITS = (8, 16, 32)

LayerValues = tuple[tuple[str, float], ...]


class PlanError(ValueError):
    """A plan field holds a value the operators cannot apply."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def _per_layer(name: str, values: Any, lo: float, hi: float) -> LayerValues:
    """Normalise a mapping or pair sequence to a sorted tuple of (layer, value) pairs."""
    items = values.items() if isinstance(values, Mapping) else values
    out = []
    for item in items:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise PlanError(name, "must map layer names to numbers")
        layer, value = item
        if not isinstance(layer, str) or isinstance(value, bool):
            raise PlanError(name, "must map layer names to numbers")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise PlanError(f"{name}.{layer}", f"must be a number in [{lo}, {hi}]") from None
        if not lo <= value <= hi:
            raise PlanError(f"{name}.{layer}", f"{value} is outside [{lo}, {hi}]")
        out.append((layer, value))
    return tuple(sorted(out))


def _choice(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed or isinstance(value, bool):
        raise PlanError(name, f"{value!r} is not one of {list(allowed)}")


@dataclass(frozen=True)
class ArchitectureConfig:
    """Which network to compress: the user's own (`base`) or a compact student."""

    family: str = BASE_FAMILY
    width: float = 1.0  # channel multiplier of the student
    depth: int = 1  # blocks per stage of the student

    def __post_init__(self) -> None:
        _choice("architecture.family", self.family, ARCH_FAMILIES)
        if not 0.05 <= float(self.width) <= 4.0:
            raise PlanError("architecture.width", f"{self.width} is outside [0.05, 4]")
        if not (isinstance(self.depth, int) and 1 <= self.depth <= 8):
            raise PlanError("architecture.depth", f"{self.depth!r} is not an integer in [1, 8]")

    @property
    def is_student(self) -> bool:
        """A compact network trained from the user's by distillation, not the user's own."""
        return self.family != BASE_FAMILY


def is_student(plan: Mapping[str, Any] | None) -> bool:
    """`ArchitectureConfig.is_student` of a stored plan (`CompressionPlan.to_dict`)."""
    arch = (plan or {}).get("architecture") or {}
    return str(arch.get("family", BASE_FAMILY)) != BASE_FAMILY


@dataclass(frozen=True)
class LowRankConfig:
    """Per-layer kept-rank fraction (1.0 keeps the layer whole)."""

    ranks: LayerValues = ()
    mode: str = "svd"  # svd: kxk(r) then 1x1; spatial: kx1(r) then 1xk

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranks", _per_layer("lowrank.ranks", self.ranks, 0.0, 1.0))
        _choice("lowrank.mode", self.mode, LOWRANK_MODES)

    def rank(self, layer: str) -> float:
        return dict(self.ranks).get(layer, 1.0)


@dataclass(frozen=True)
class PruneConfig:
    """Structured channel pruning (per layer or global), whole attention heads, and
    unstructured sparsity."""

    ratios: LayerValues = ()  # fraction of output channels removed, per layer
    global_ratio: float | None = None  # when set, one ratio ranked across all layers
    importance: str = "l1"
    sparsity: float = 0.0  # unstructured: fraction of remaining weights zeroed
    heads: LayerValues = ()  # fraction of each attention block's heads removed, per block

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratios", _per_layer("prune.ratios", self.ratios, 0.0, 0.95))
        object.__setattr__(self, "heads", _per_layer("prune.heads", self.heads, 0.0, 0.95))
        _choice("prune.importance", self.importance, IMPORTANCES)
        if self.global_ratio is not None and not 0.0 <= float(self.global_ratio) <= 0.95:
            raise PlanError("prune.global_ratio", f"{self.global_ratio} is outside [0, 0.95]")
        if not 0.0 <= float(self.sparsity) <= 0.99:
            raise PlanError("prune.sparsity", f"{self.sparsity} is outside [0, 0.99]")

    def ratio(self, layer: str) -> float:
        return dict(self.ratios).get(layer, 0.0)


@dataclass(frozen=True)
class QuantizeConfig:
    """Weight bits per layer (symmetric per-channel), activation bits (asymmetric per-tensor)."""

    weight_bits: tuple[tuple[str, int], ...] = ()
    default_weight_bits: int = 32  # layers not named above
    activation_bits: int = 32

    def __post_init__(self) -> None:
        pairs = _per_layer("quantize.weight_bits", self.weight_bits, 2, 32)
        for layer, bits in pairs:
            _choice(f"quantize.weight_bits.{layer}", int(bits), WEIGHT_BITS)
        object.__setattr__(self, "weight_bits", tuple((k, int(v)) for k, v in pairs))
        _choice("quantize.default_weight_bits", self.default_weight_bits, WEIGHT_BITS)
        _choice("quantize.activation_bits", self.activation_bits, ACTIVATION_BITS)

    def bits(self, layer: str) -> int:
        return dict(self.weight_bits).get(layer, self.default_weight_bits)


@dataclass(frozen=True)
class DistillConfig:
    """Hinton distillation: alpha * T^2 * KL(s/T || t/T) + (1 - alpha) * CE."""

    enabled: bool = True
    alpha: float = 0.7
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise PlanError("distill.enabled", "must be true or false")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise PlanError("distill.alpha", f"{self.alpha} is outside [0, 1]")
        if not 0.5 <= float(self.temperature) <= 20.0:
            raise PlanError("distill.temperature", f"{self.temperature} is outside [0.5, 20]")


_SECTIONS: dict[str, type] = {
    "architecture": ArchitectureConfig,
    "lowrank": LowRankConfig,
    "prune": PruneConfig,
    "quantize": QuantizeConfig,
    "distill": DistillConfig,
}


@dataclass(frozen=True)
class CompressionPlan:
    """Every decision of one trial. Round-trips through `to_dict`/`from_dict` and YAML.

    Example:
        >>> plan = CompressionPlan(prune=PruneConfig(ratios={"conv1": 0.5}))
        >>> CompressionPlan.from_yaml(plan.to_yaml()) == plan
        True
    """

    architecture: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    lowrank: LowRankConfig = field(default_factory=LowRankConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        for name, kind in _SECTIONS.items():
            if not isinstance(getattr(self, name), kind):
                raise PlanError(name, f"must be a {kind.__name__}")

    def operators(self) -> tuple[Any, ...]:
        """The structural operator configs, in the order they apply."""
        return (self.architecture, self.lowrank, self.prune, self.quantize)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in _SECTIONS:
            section = {}
            for f in fields(getattr(self, name)):
                value = getattr(getattr(self, name), f.name)
                section[f.name] = dict(value) if isinstance(value, tuple) else value
            out[name] = section
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompressionPlan:
        if not isinstance(data, Mapping):
            raise PlanError("plan", "must be a mapping of sections")
        unknown = set(data) - set(_SECTIONS)
        if unknown:
            raise PlanError(sorted(unknown)[0], f"unknown section; allowed: {list(_SECTIONS)}")
        kwargs = {}
        for name, kind in _SECTIONS.items():
            section = data.get(name) or {}
            if not isinstance(section, Mapping):
                raise PlanError(name, "must be a mapping")
            allowed = {f.name for f in fields(kind)}
            bad = set(section) - allowed
            if bad:
                raise PlanError(
                    f"{name}.{sorted(bad)[0]}", f"unknown key; allowed: {sorted(allowed)}"
                )
            try:
                kwargs[name] = kind(**section)
            except TypeError as exc:
                raise PlanError(name, str(exc)) from None
        return cls(**kwargs)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> CompressionPlan:
        return cls.from_dict(yaml.safe_load(text) or {})

    def replace(self, **sections: Any) -> CompressionPlan:
        return dataclasses.replace(self, **sections)

    def flat(self) -> dict[str, Any]:
        """The plan as flat columns (`flatten_plan` of its dict form)."""
        return flatten_plan(self.to_dict())

    def layer_rows(self) -> list[dict[str, Any]]:
        """The plan's per-layer decisions (`layer_rows` of its dict form)."""
        return layer_rows(self.to_dict())

    def describe(self) -> str:
        """One short line a person can read in a hover or a table."""
        parts = []
        a = self.architecture
        parts.append(f"{a.family} w{a.width:g} d{a.depth}" if a.is_student else a.family)
        if self.lowrank.ranks and any(r < 1 for _, r in self.lowrank.ranks):
            mean = sum(r for _, r in self.lowrank.ranks) / len(self.lowrank.ranks)
            parts.append(f"rank~{mean:.2f} {self.lowrank.mode}")
        p = self.prune
        if p.global_ratio:
            parts.append(f"prune {p.global_ratio:.0%} global {p.importance}")
        elif any(r > 0 for _, r in p.ratios):
            mean = sum(r for _, r in p.ratios) / len(p.ratios)
            parts.append(f"prune~{mean:.0%} {p.importance}")
        if any(r > 0 for _, r in p.heads):
            mean = sum(r for _, r in p.heads) / len(p.heads)
            parts.append(f"heads~{mean:.0%}")
        if p.sparsity:
            parts.append(f"sparse {p.sparsity:.0%}")
        bits = sorted(
            {b for _, b in self.quantize.weight_bits} or {self.quantize.default_weight_bits}
        )
        parts.append("w" + "/".join(str(b) for b in bits) + f" a{self.quantize.activation_bits}")
        return ", ".join(parts)


# --- flat views: stored trials hold a plan's dict form, so these read that ---------------------
def flatten_plan(plan: Mapping[str, Any] | None) -> dict[str, Any]:
    """`{"prune": {"ratios": {"conv1": .5}}}` -> `{"prune.ratios.conv1": .5}` (flat columns)."""
    out: dict[str, Any] = {}
    for section, body in (plan or {}).items():
        if not isinstance(body, Mapping):
            out[str(section)] = body
            continue
        for key, value in body.items():
            if isinstance(value, Mapping):
                for layer, v in value.items():
                    out[f"{section}.{key}.{layer}"] = v
            else:
                out[f"{section}.{key}"] = value
    return out


def _natural(name: str) -> list[Any]:
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name)]


def layer_rows(plan: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Per-layer decisions of a plan: layer, weight bits, prune ratio, kept-rank fraction.

    A global prune ratio is ranked across layers at build time, so each row shows it with
    `prune_global=True` rather than a per-layer figure the plan does not hold.
    """
    plan = plan or {}
    lowrank = plan.get("lowrank") or {}
    prune = plan.get("prune") or {}
    quant = plan.get("quantize") or {}
    ranks = lowrank.get("ranks") or {}
    ratios = prune.get("ratios") or {}
    bits = quant.get("weight_bits") or {}
    glob = prune.get("global_ratio")
    layers = sorted(set(ranks) | set(ratios) | set(bits), key=_natural)
    return [
        {
            "layer": layer,
            "bits": int(bits.get(layer, quant.get("default_weight_bits", 32))),
            "prune_ratio": float(glob if glob is not None else ratios.get(layer, 0.0)),
            "prune_global": glob is not None,
            "rank": float(ranks.get(layer, 1.0)),
        }
        for layer in layers
    ]

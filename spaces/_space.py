"""Search spaces: a YAML definition, and the only code that calls `trial.suggest_*`.

Each entry of a section is one of:
  - a list: a categorical choice (`weight_bits: [4, 8, 32]`)
  - a mapping `{low, high, step}`: an ordered numeric range
    (`ratio: {low: 0, high: 0.7, step: 0.1}`)
  - a single value: fixed, not searched (`mode: svd`)
A section that is absent or `null` switches its operator off.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import yaml

from ._plan import (
    ACTIVATION_BITS,
    ARCH_FAMILIES,
    BASE_FAMILY,
    IMPORTANCES,
    LOWRANK_MODES,
    WEIGHT_BITS,
    ArchitectureConfig,
    CompressionPlan,
    DistillConfig,
    LowRankConfig,
    PruneConfig,
    QuantizeConfig,
)


class SpaceError(ValueError):
    """A space definition is malformed. Names the file and the field."""

    def __init__(self, file: str, field: str, message: str) -> None:
        super().__init__(f"{file}: {field}: {message}")
        self.file, self.field, self.message = file, field, message


@dataclass(frozen=True)
class LayerInfo:
    """What the space needs to know about one compressible layer."""

    name: str
    kind: str  # "conv", "dwconv" or "linear"
    in_channels: int
    out_channels: int
    kernel: tuple[int, int] = (1, 1)
    prunable: bool = True  # False for the classifier and layers the pruner must keep
    factorizable: bool = True  # low-rank would cut its MACs
    attention: str = ""  # the attention block whose heads it projects (heads pruned whole)


class Trial(Protocol):  # the part of optuna.Trial the space uses
    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...
    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = ...
    ) -> float: ...
    def suggest_int(self, name: str, low: int, high: int, *, step: int = ...) -> int: ...


@dataclass(frozen=True)
class Dim:
    """One searchable (or fixed) dimension."""

    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None

    @property
    def fixed(self) -> bool:
        return self.choices is not None and len(self.choices) == 1

    def values(self) -> tuple[Any, ...]:
        if self.choices is not None:
            return self.choices
        assert self.low is not None and self.high is not None and self.step is not None
        n = int(round((self.high - self.low) / self.step))
        return tuple(round(self.low + i * self.step, 10) for i in range(n + 1))

    def suggest(self, trial: Trial, name: str) -> Any:
        if self.choices is not None:
            if len(self.choices) == 1:
                return self.choices[0]
            return trial.suggest_categorical(name, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.low == self.high:
            return self.low
        if all(float(v).is_integer() for v in (self.low, self.high, self.step or 1)):
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1))
        return trial.suggest_float(name, self.low, self.high, step=self.step)

    def restricted(self, allowed: Sequence[Any]) -> Dim:
        """Only the values in `allowed` (e.g. the precisions a target runs natively)."""
        kept = tuple(v for v in self.values() if v in allowed)
        return Dim(choices=kept) if kept else self


def _size_name(width: float, depth: int) -> str:
    """A student size as one categorical choice: `w0.5 d1`."""
    return f"w{width:g} d{depth}"


# The switch that lets an operator's layers deviate from its plan-wide setting (`suggest`).
VARY = "vary"
_SCHEMA: dict[str, dict[str, tuple[Any, ...] | str]] = {
    "architecture": {"family": ARCH_FAMILIES, "width": "number", "depth": "int"},
    "lowrank": {"rank": "fraction", "mode": LOWRANK_MODES},
    "prune": {
        "mode": ("per_layer", "global"),
        "ratio": "fraction",
        "importance": IMPORTANCES,
        "sparsity": "fraction",
        "heads": "fraction",
    },
    "quantize": {"weight_bits": WEIGHT_BITS, "activation_bits": ACTIVATION_BITS},
    "distill": {"alpha": "fraction", "temperature": "number"},
}


def _parse_dim(file: str, field: str, raw: Any, allowed: tuple[Any, ...] | str) -> Dim:
    def check(value: Any) -> Any:
        if isinstance(allowed, tuple):
            if value not in allowed or isinstance(value, bool):
                raise SpaceError(file, field, f"{value!r} is not one of {list(allowed)}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise SpaceError(file, field, f"{value!r} is not a number")
        if allowed == "fraction" and not 0 <= value <= 1:
            raise SpaceError(file, field, f"{value!r} is outside [0, 1]")
        if allowed == "int" and not (isinstance(value, int) and 1 <= value <= 8):
            raise SpaceError(file, field, f"{value!r} is not an integer in [1, 8]")
        if allowed == "number" and not 0 < value <= 100:
            raise SpaceError(file, field, f"{value!r} is outside (0, 100]")
        return value

    if isinstance(raw, Mapping):
        if isinstance(allowed, tuple):
            raise SpaceError(file, field, f"must be a list of choices from {list(allowed)}")
        if set(raw) - {"low", "high", "step"} or not {"low", "high"} <= set(raw):
            raise SpaceError(file, field, "a range needs low, high and optional step")
        low, high = check(raw["low"]), check(raw["high"])
        step = raw.get("step", 1 if allowed == "int" else 0.1)
        if isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0:
            raise SpaceError(file, field, f"step {step!r} must be a positive number")
        if low > high:
            raise SpaceError(file, field, f"low {low} is above high {high}")
        return Dim(low=float(low), high=float(high), step=float(step))
    if isinstance(raw, list):
        if not raw:
            raise SpaceError(file, field, "an empty list of choices")
        return Dim(choices=tuple(dict.fromkeys(check(v) for v in raw)))
    return Dim(choices=(check(raw),))


@dataclass(frozen=True)
class SearchSpace:
    """A parsed space. `suggest` turns one Optuna trial into a `CompressionPlan`."""

    name: str
    sections: Mapping[str, Mapping[str, Dim]]
    source: str = "<dict>"
    # The (width, depth) sizes offered per student family; None: every width with every depth.
    student_sizes: Mapping[str, tuple[tuple[float, int], ...]] | None = None

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> SearchSpace:
        if not isinstance(data, Mapping):
            raise SpaceError(source, "<top>", "a space file must be a mapping of sections")
        allowed_top = {"name", "description", *_SCHEMA}
        for key in data:
            if key not in allowed_top:
                raise SpaceError(source, str(key), f"unknown key; allowed: {sorted(allowed_top)}")
        name = data.get("name", Path(source).stem)
        if not isinstance(name, str) or not name:
            raise SpaceError(source, "name", "must be a non-empty string")
        sections: dict[str, dict[str, Dim]] = {}
        for section, schema in _SCHEMA.items():
            raw = data.get(section)
            if raw is None:
                continue
            if not isinstance(raw, Mapping):
                raise SpaceError(source, section, "must be a mapping (or null to switch it off)")
            parsed = {}
            for key, value in raw.items():
                if key not in schema:
                    raise SpaceError(
                        source, f"{section}.{key}", f"unknown key; allowed: {sorted(schema)}"
                    )
                parsed[key] = _parse_dim(source, f"{section}.{key}", value, schema[key])
            sections[section] = parsed
        return cls(name=name, sections=sections, source=source)

    @classmethod
    def from_file(cls, path: str | Path) -> SearchSpace:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise SpaceError(str(path), "<file>", f"cannot read: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            where = f"line {line + 1}" if line is not None else "<yaml>"
            raise SpaceError(str(path), where, "malformed YAML") from None
        if data is None:
            raise SpaceError(str(path), "<file>", "the file is empty")
        return cls.from_dict(data, source=str(path))

    def sizes(self, family: str) -> tuple[tuple[float, int], ...]:
        """The (width, depth) sizes a student family is offered at (`student_sizes`)."""
        if self.student_sizes is not None:
            return tuple(self.student_sizes.get(family, ()))
        widths = self.dim("architecture", "width", 1.0).values()
        depths = self.dim("architecture", "depth", 1).values()
        return tuple((float(w), int(d)) for w in widths for d in depths)

    def with_student_sizes(self, sizes: Mapping[str, Sequence[tuple[float, int]]]) -> SearchSpace:
        """This space offering each student family only `sizes[family]`; a family with none
        is no longer offered."""
        kept = {f: tuple(v) for f, v in sizes.items() if v}
        families = self.dim("architecture", "family", BASE_FAMILY).values()
        allowed = [f for f in families if f == BASE_FAMILY or f in kept]
        sections = dict(self.sections)
        if "architecture" in sections and allowed:
            sections["architecture"] = {
                **sections["architecture"],
                "family": Dim(choices=tuple(allowed)),
            }
        return replace(self, sections=sections, student_sizes=kept)

    def dim(self, section: str, key: str, default: Any) -> Dim:
        return self.sections.get(section, {}).get(key, Dim(choices=(default,)))

    def recipe_params(
        self,
        layers: Sequence[LayerInfo],
        *,
        family: str = BASE_FAMILY,
        width: float = 1.0,
        prune: float = 0.0,
        importance: str = "l1",
        weight_bits: int = 32,
        activation_bits: int = 32,
        offered: Mapping[str, Sequence[Any]] | None = None,
    ) -> dict[str, Any]:
        """Trial parameters for a hand-made recipe, for `study.enqueue_trial` (warm start):
        one uniform setting per operator (see `plan_params`)."""
        if family != BASE_FAMILY:
            params: dict[str, Any] = {}
            put = self._putter(params, offered or {})
            put("arch.family", "architecture", "family", family)
            sizes = self.sizes(family)
            if len(sizes) > 1:  # the nearest width offered, at depth 1 where it can be
                size = min(sizes, key=lambda wd: (abs(wd[0] - width), wd[1]))
                params[f"arch.size.{family}"] = _size_name(*size)
            put("act_bits", "quantize", "activation_bits", activation_bits)
            put("bits.student", "quantize", "weight_bits", weight_bits)
            return params
        return self.plan_params(
            layers,
            bits={x.name: weight_bits for x in layers},
            prune={x.name: prune for x in layers if x.prunable},
            importance=importance,
            activation_bits=activation_bits,
            offered=offered,
        )

    def plan_params(
        self,
        layers: Sequence[LayerInfo],
        *,
        bits: Mapping[str, int] | None = None,
        prune: Mapping[str, float] | None = None,
        ranks: Mapping[str, float] | None = None,
        importance: str = "l1",
        activation_bits: int = 32,
        offered: Mapping[str, Sequence[Any]] | None = None,
    ) -> dict[str, Any]:
        """Trial parameters (`suggest`'s names) for a plan of the user's own network with
        these per-layer settings (the rest at none), for `study.enqueue_trial`.

        Each value snaps to the nearest one the space offers, so the enqueued trial is a point
        of this space; `offered` narrows a dimension as `suggest` does (e.g.
        `{"weight_bits": profile.weight_bits}`). An operator whose layers all share a setting
        is uniform (`vary` off).
        """
        params: dict[str, Any] = {}
        put = self._putter(params, offered or {})
        put("arch.family", "architecture", "family", BASE_FAMILY)
        put("act_bits", "quantize", "activation_bits", activation_bits)
        put("lowrank.mode", "lowrank", "mode", "svd")
        put("prune.mode", "prune", "mode", "per_layer")
        put("prune.importance", "prune", "importance", importance)
        put("prune.sparsity", "prune", "sparsity", 0.0)
        ranks = ranks or {}
        prune = prune or {}
        bits = bits or {}
        for prefix, section, key, default, eligible in (
            ("rank", "lowrank", "rank", 1.0, [x.name for x in layers if x.factorizable]),
            ("prune", "prune", "ratio", 0.0, [x.name for x in layers if x.prunable]),
            ("bits", "quantize", "weight_bits", 32, [x.name for x in layers]),
        ):
            if section not in self.sections or not eligible:
                continue
            given = {"rank": ranks, "prune": prune, "bits": bits}[prefix]
            per_layer: dict[str, Any] = {}
            for name in eligible:
                put(f"{prefix}.{name}", section, key, given.get(name, default), into=per_layer)
            if not per_layer:  # a fixed setting: nothing to choose
                continue
            values = list(per_layer.values())
            common = max(set(values), key=values.count)
            params[f"{prefix}.all"] = common
            params[f"{prefix}.{VARY}"] = len(set(values)) > 1
            if params[f"{prefix}.{VARY}"]:
                params.update(per_layer)
        return params

    def _putter(
        self, params: dict[str, Any], offered: Mapping[str, Sequence[Any]]
    ) -> Callable[..., None]:
        """`put(name, section, key, value)`: store `value`, snapped to the nearest value the
        space (narrowed by `offered`) has, unless the space fixes it or lacks the section."""

        def put(
            name: str, section: str, key: str, value: Any, into: dict[str, Any] | None = None
        ) -> None:
            if section not in self.sections:
                return
            dim = self.dim(section, key, value)
            if key in offered:
                dim = dim.restricted(offered[key])
            if dim.fixed:
                return
            allowed = dim.values()
            if value not in allowed:
                numeric = [v for v in allowed if isinstance(v, (int, float))]
                if not numeric or isinstance(value, str):
                    return
                value = min(numeric, key=lambda v: abs(v - value))
            (params if into is None else into)[name] = value

        return put

    def suggest(
        self,
        trial: Trial,
        layers_for: Callable[[ArchitectureConfig], Sequence[LayerInfo]],
        *,
        weight_bits: Sequence[int] | None = None,
        activation_bits: Sequence[int] | None = None,
    ) -> CompressionPlan:
        """Sample one plan.

        Args:
            trial: an Optuna trial (or `optuna.trial.FixedTrial` in tests).
            layers_for: the compressible layers of the network an architecture choice yields.
            weight_bits / activation_bits: precisions the target runs; others are not offered.

        On the user's own network each per-layer operator (bits, prune ratio, kept rank) is
        one plan-wide setting (`bits.all`) and a switch (`bits.vary`): off, every layer takes
        the plan-wide setting, so a uniform plan is one choice away; on, each layer draws its
        own (`bits.<layer>`), so the per-layer freedom stays. (Drawn layer by layer alone, a
        uniform plan of 10 layers had odds of 2^-10.)

        A student is already the compact network: its width and depth are its size, and it
        gets one shared bit width for all its layers (`bits.student`). Low-rank, pruning and
        sparsity rank the weights of a trained network, so they apply to the user's own
        (`base`) network only; a student starts from random weights.
        """
        arch = ArchitectureConfig(
            family=self.dim("architecture", "family", BASE_FAMILY).suggest(trial, "arch.family"),
        )
        if arch.is_student:
            # One choice of size per family: each family may be offered other sizes.
            sizes = {_size_name(w, d): (w, d) for w, d in self.sizes(arch.family)}
            name = Dim(choices=tuple(sizes)).suggest(trial, f"arch.size.{arch.family}")
            width, depth = sizes[name]
            arch = ArchitectureConfig(family=arch.family, width=width, depth=depth)
        layers = list(layers_for(arch))
        shared = arch.is_student

        def per_layer(prefix: str, dim: Dim, eligible: Sequence[LayerInfo]) -> dict[str, Any]:
            if not eligible:
                return {}
            if shared:
                value = dim.suggest(trial, f"{prefix}.student")
                return {layer.name: value for layer in eligible}
            value = dim.suggest(trial, f"{prefix}.all")
            single = len(dim.values()) == 1
            if single or not trial.suggest_categorical(f"{prefix}.{VARY}", (False, True)):
                return {layer.name: value for layer in eligible}
            return {layer.name: dim.suggest(trial, f"{prefix}.{layer.name}") for layer in eligible}

        lowrank = LowRankConfig()
        if "lowrank" in self.sections and not shared:
            ranks = per_layer(
                "rank", self.dim("lowrank", "rank", 1.0), [x for x in layers if x.factorizable]
            )
            mode = self.dim("lowrank", "mode", "svd").suggest(trial, "lowrank.mode")
            lowrank = LowRankConfig(ranks=tuple(ranks.items()), mode=mode)

        prune = PruneConfig()
        if "prune" in self.sections and not shared:
            mode = self.dim("prune", "mode", "per_layer").suggest(trial, "prune.mode")
            importance = self.dim("prune", "importance", "l1").suggest(trial, "prune.importance")
            sparsity = float(self.dim("prune", "sparsity", 0.0).suggest(trial, "prune.sparsity"))
            ratio = self.dim("prune", "ratio", 0.0)
            blocks = dict.fromkeys(x.attention for x in layers if x.attention)
            heads = per_layer(
                "heads",
                self.dim("prune", "heads", 0.0),
                [LayerInfo(b, "attention", 0, 0) for b in blocks],
            )
            if mode == "global":
                prune = PruneConfig(
                    global_ratio=float(ratio.suggest(trial, "prune.global")),
                    importance=importance,
                    sparsity=sparsity,
                    heads=tuple(heads.items()),
                )
            else:
                ratios = per_layer("prune", ratio, [x for x in layers if x.prunable])
                prune = PruneConfig(
                    ratios=tuple(ratios.items()),
                    importance=importance,
                    sparsity=sparsity,
                    heads=tuple(heads.items()),
                )

        quantize = QuantizeConfig()
        if "quantize" in self.sections:
            wdim = self.dim("quantize", "weight_bits", 32)
            adim = self.dim("quantize", "activation_bits", 32)
            if weight_bits is not None:
                wdim = wdim.restricted(weight_bits)
            if activation_bits is not None:
                adim = adim.restricted(activation_bits)
            quantize = QuantizeConfig(
                weight_bits=tuple((k, int(v)) for k, v in per_layer("bits", wdim, layers).items()),
                activation_bits=int(adim.suggest(trial, "act_bits")),
            )

        distill = DistillConfig()
        if "distill" in self.sections:
            distill = DistillConfig(
                alpha=float(self.dim("distill", "alpha", 0.7).suggest(trial, "distill.alpha")),
                temperature=float(
                    self.dim("distill", "temperature", 4.0).suggest(trial, "distill.temperature")
                ),
            )
        return CompressionPlan(
            architecture=arch, lowrank=lowrank, prune=prune, quantize=quantize, distill=distill
        )

"""HardwareProfile: the typed, validated form of a profile YAML (hardware_profiles/*.yaml)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from .._resources import resolve
from ..budgets import BUDGET_KEYS  # one list of budget names for experiments and profiles
from ..errors import ConfigError
from ..files import atomic_write_text

OP_KINDS = ("conv", "dwconv", "linear", "elementwise")
PRECISIONS = (4, 8, 16, 32)
UNALIGNED_KINDS = ("conv", "dwconv")  # dense convs; depthwise and other grouped convs
MEMORY_KEYS = ("ram_kb", "sram_kb", "flash_kb")
WEIGHT_PLACES = ("ram", "flash")
# How activation memory is placed: `liveness` = the peak of live buffers (TinyEngine's in-place
# scheme with `depthwise_in_place`); `tflm` = TFLite Micro's greedy planner plus its arena tail.
MEMORY_PLANNERS = ("liveness", "tflm")

_FIELDS_DOC = (
    "name, description, sources, peak_macs_per_s, native_precisions, fallback_precision, "
    "bandwidth_bytes_per_s, efficiency, layer_overhead_us, model_overhead_us, threads, batch, "
    "memory, weights_in, runtime_flash_kb, budgets, sparse_support, depthwise_in_place, "
    "fused_add, fused_activation, concat_in_place, fused_pointwise, channel_block, "
    "unaligned_efficiency, output_overhead_ns, saturation_outputs, flash_read_ns_per_byte, "
    "input_ns_per_byte, "
    "runtime, latency_error, memory_planner"
)
RUNTIME_KEYS = ("name", "version", "note")
LATENCY_ERROR_KEYS = ("p90", "source", "rows")


def _number(file: str, key: str, value: Any, *, lo: float, hi: float = math.inf) -> float:
    if isinstance(value, str):
        # YAML 1.1 reads `4.32e8` (no sign in the exponent) as a string; accept it as a number.
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(file, key, f"must be a number in [{lo:g}, {hi:g}], got {value!r}")
    value = float(value)
    if not (lo <= value <= hi) or math.isnan(value):
        raise ConfigError(file, key, f"{value:g} is outside [{lo:g}, {hi:g}]")
    return value


def _positive(file: str, key: str, value: Any) -> float:
    out = _number(file, key, value, lo=0.0)
    if out <= 0:
        raise ConfigError(file, key, f"must be a number > 0, got {value!r}")
    return out


def _mapping(file: str, key: str, value: Any, allowed: tuple[Any, ...]) -> dict[Any, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(file, key, f"must be a mapping with keys from {list(allowed)}")
    for k in value:
        if k not in allowed or isinstance(k, bool):
            raise ConfigError(file, f"{key}.{k}", f"unknown key; allowed: {list(allowed)}")
    return dict(value)


@dataclass(frozen=True)
class HardwareProfile:
    """What the cost model needs to know about one device.

    Times: `peak_macs_per_s[bits]` is the theoretical multiply-accumulate rate at a precision;
    `efficiency[kind]` the fraction of it (or of the bandwidth, for element-wise work) that a
    layer of that kind reaches; `layer_overhead_us[kind]` a fixed cost per layer and
    `model_overhead_us` one per inference. Memory limits are in kB (1 kB = 1024 bytes).

    Example:
        >>> p = load_profile("mcu")
        >>> p.weight_bits, p.budgets["memory_kb"]
        ((8, 16, 32), 320.0)
    """

    name: str
    description: str
    sources: tuple[str, ...]
    peak_macs_per_s: Mapping[int, float]
    native_precisions: tuple[int, ...]
    fallback_precision: int
    bandwidth_bytes_per_s: float
    efficiency: Mapping[str, float]
    layer_overhead_us: Mapping[str, float]
    model_overhead_us: float = 0.0
    threads: int = 1
    batch: int = 1
    memory: Mapping[str, float | None] = field(default_factory=dict)
    weights_in: str = "ram"
    runtime_flash_kb: float = 0.0
    budgets: Mapping[str, float] = field(default_factory=dict)
    sparse_support: bool = False
    depthwise_in_place: bool = False
    fused_add: bool = False
    # The runtime compiles the graph and runs the activations that CPU runtimes leave as
    # passes of their own (SiLU, hardswish, GELU, x * sigmoid(x)) in the output stage of the
    # conv/linear before them, as it does a ReLU (an NPU such as Qualcomm QNN on the Hexagon
    # HTP): those kernels cost nothing (`Kernel.fused_activation`). Off: each is a pass over
    # memory, as in ONNX Runtime and TFLite.
    fused_activation: bool = False
    # The runtime writes each input of a concat straight into its slice of the output buffer
    # (TensorRT's concatenation elimination): a concat is no pass over memory
    # (`Kernel.concat`). Off: it copies its inputs, as ONNX Runtime and TFLite do.
    concat_in_place: bool = False
    # The runtime runs an activation in the pass of the element-wise op before it (TensorRT's
    # Scale + Activation and pointwise fusions: DenseNet's batch norm + ReLU on a concat, which
    # no conv absorbs, is one kernel) (`Kernel.follows_pointwise`). Off: two passes.
    fused_pointwise: bool = False
    channel_block: int = 1
    unaligned_efficiency: Mapping[str, float] = field(
        default_factory=lambda: {"conv": 1.0, "dwconv": 1.0}
    )
    # Time per output element of a conv/linear (requantize, clamp, store), in ns: on an MCU
    # ~10 cycles each, what makes a depthwise or small-channel layer slow per MAC.
    output_overhead_ns: float = 0.0
    # GPUs: output elements a conv/linear needs to give every streaming multiprocessor work. A
    # smaller layer (at batch 1, a late layer of a classifier) leaves SMs idle and takes as long
    # per MAC as if it had that many outputs (wave quantization); 0: no such rule.
    saturation_outputs: float = 0.0
    # MCUs whose kernels read weights from flash with wait states the caches do not hide: time
    # per weight byte read once per inference, on top of the MAC work (what makes a 1,000-class
    # classifier head slow on an STM32H7); 0: no such cost.
    flash_read_ns_per_byte: float = 0.0
    # Accelerators behind a delegate (a phone NPU): time per byte of the network's input handed
    # over each inference (the copy into the accelerator's buffer, and a float model's
    # conversion). `input_bytes` says how wide an input element is; 0: no such cost.
    input_ns_per_byte: float = 0.0
    # The software the latencies are for ({name, version, note}): the same chip runs a network
    # 2-4x faster or slower under another runtime, so a profile is calibrated on one.
    runtime: Mapping[str, str] | None = None
    # How far its latencies can be trusted ({p90, source, rows}): the 90th percentile of
    # |predicted / measured - 1| over measurements the fit did not see.
    latency_error: Mapping[str, Any] | None = None
    memory_planner: str = "liveness"
    file: str = field(default="<profile>", compare=False, repr=False)

    def __post_init__(self) -> None:
        f = self.file
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f, "name", "must be a non-empty string")
        if not isinstance(self.description, str):
            raise ConfigError(f, "description", "must be a string")
        sources = self.sources
        if isinstance(sources, str) or not all(isinstance(s, str) for s in sources):
            raise ConfigError(
                f, "sources", "must be a list of strings (where each figure is from)"
            )
        object.__setattr__(self, "sources", tuple(sources))

        natives = self.native_precisions
        if (
            isinstance(natives, (str, bytes))
            or not natives
            or any(p not in PRECISIONS or isinstance(p, bool) for p in natives)
        ):
            raise ConfigError(
                f, "native_precisions", f"must be a non-empty list of bits from {list(PRECISIONS)}"
            )
        natives = tuple(sorted(set(int(p) for p in natives)))
        object.__setattr__(self, "native_precisions", natives)
        peaks = _mapping(f, "peak_macs_per_s", self.peak_macs_per_s, PRECISIONS)
        for p in natives:
            if p not in peaks:
                raise ConfigError(
                    f, "peak_macs_per_s", f"needs a rate for every native precision; {p} missing"
                )
        peaks = {int(k): _positive(f, f"peak_macs_per_s.{k}", v) for k, v in peaks.items()}
        object.__setattr__(self, "peak_macs_per_s", dict(sorted(peaks.items())))
        if self.fallback_precision not in natives or isinstance(self.fallback_precision, bool):
            raise ConfigError(
                f, "fallback_precision", f"must be one of the native precisions {list(natives)}"
            )
        object.__setattr__(
            self,
            "bandwidth_bytes_per_s",
            _positive(f, "bandwidth_bytes_per_s", self.bandwidth_bytes_per_s),
        )

        eff = _mapping(f, "efficiency", self.efficiency, OP_KINDS)
        missing = [k for k in OP_KINDS if k not in eff]
        if missing:
            raise ConfigError(
                f, "efficiency", f"needs every op kind {list(OP_KINDS)}; missing {missing}"
            )
        eff = {k: _number(f, f"efficiency.{k}", eff[k], lo=1e-6, hi=1.0) for k in OP_KINDS}
        object.__setattr__(self, "efficiency", eff)

        over = self.layer_overhead_us
        if isinstance(over, (int, float)) and not isinstance(over, bool):
            over = {k: over for k in OP_KINDS}
        over = _mapping(f, "layer_overhead_us", over, OP_KINDS)
        missing = [k for k in OP_KINDS if k not in over]
        if missing:
            raise ConfigError(
                f,
                "layer_overhead_us",
                f"a number or a mapping with every op kind; missing {missing}",
            )
        over = {k: _number(f, f"layer_overhead_us.{k}", over[k], lo=0.0) for k in OP_KINDS}
        object.__setattr__(self, "layer_overhead_us", over)
        object.__setattr__(
            self,
            "model_overhead_us",
            _number(f, "model_overhead_us", self.model_overhead_us, lo=0.0),
        )
        for key in ("threads", "batch"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
                raise ConfigError(f, key, f"must be an integer in [1, 4096], got {value!r}")

        mem = _mapping(f, "memory", self.memory, MEMORY_KEYS)
        mem = {
            k: (None if mem.get(k) is None else _positive(f, f"memory.{k}", mem[k]))
            for k in MEMORY_KEYS
        }
        if mem["ram_kb"] is None and mem["sram_kb"] is None:
            raise ConfigError(f, "memory", "needs ram_kb or sram_kb (where activations live)")
        object.__setattr__(self, "memory", mem)
        if self.weights_in not in WEIGHT_PLACES:
            raise ConfigError(
                f, "weights_in", f"{self.weights_in!r} is not one of {list(WEIGHT_PLACES)}"
            )
        if self.weights_in == "flash" and mem["flash_kb"] is None:
            raise ConfigError(f, "weights_in", "is flash but memory.flash_kb is not given")
        object.__setattr__(
            self, "runtime_flash_kb", _number(f, "runtime_flash_kb", self.runtime_flash_kb, lo=0.0)
        )

        budgets = _mapping(f, "budgets", self.budgets, BUDGET_KEYS)
        budgets = {k: _positive(f, f"budgets.{k}", v) for k, v in budgets.items()}
        # A default budget above the board would let the search accept a plan that cannot run.
        limit = self.memory_limit_kb
        if "memory_kb" in budgets and limit is not None and budgets["memory_kb"] > limit:
            raise ConfigError(
                f,
                "budgets.memory_kb",
                f"{budgets['memory_kb']:g} exceeds the device's {limit:g} kB",
            )
        flash = mem["flash_kb"]
        if "flash_kb" in budgets and flash is not None and budgets["flash_kb"] > flash:
            raise ConfigError(
                f, "budgets.flash_kb", f"{budgets['flash_kb']:g} exceeds memory.flash_kb {flash:g}"
            )
        object.__setattr__(self, "budgets", budgets)
        block = self.channel_block
        if isinstance(block, bool) or not isinstance(block, int) or not 1 <= block <= 256:
            raise ConfigError(f, "channel_block", f"must be an integer in [1, 256], got {block!r}")
        un = self.unaligned_efficiency
        if isinstance(un, (int, float, str)) and not isinstance(un, bool):
            un = {"conv": un, "dwconv": un}
        un = _mapping(f, "unaligned_efficiency", un, UNALIGNED_KINDS)
        object.__setattr__(
            self,
            "unaligned_efficiency",
            {
                k: _number(f, f"unaligned_efficiency.{k}", un.get(k, 1.0), lo=1e-6, hi=1.0)
                for k in UNALIGNED_KINDS
            },
        )
        flags = ("sparse_support", "depthwise_in_place", "fused_add", "fused_activation")
        for key in (*flags, "concat_in_place", "fused_pointwise"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f, key, "must be true or false")
        if self.memory_planner not in MEMORY_PLANNERS:
            raise ConfigError(
                f,
                "memory_planner",
                f"{self.memory_planner!r} is not one of {list(MEMORY_PLANNERS)}",
            )
        for key in (
            "output_overhead_ns",
            "saturation_outputs",
            "flash_read_ns_per_byte",
            "input_ns_per_byte",
        ):
            object.__setattr__(self, key, _number(f, key, getattr(self, key), lo=0.0))
        if self.runtime is not None:
            rt = _mapping(f, "runtime", self.runtime, RUNTIME_KEYS)
            for key in RUNTIME_KEYS:
                value = rt.get(key, "")
                if not isinstance(value, str) or (key == "name" and not value.strip()):
                    raise ConfigError(
                        f, f"runtime.{key}", "must be a string" + (" (required)" * (key == "name"))
                    )
            object.__setattr__(self, "runtime", {k: rt.get(k, "") for k in RUNTIME_KEYS})
        if self.latency_error is not None:
            le = _mapping(f, "latency_error", self.latency_error, LATENCY_ERROR_KEYS)
            if "p90" not in le:
                raise ConfigError(f, "latency_error.p90", "is required (a number >= 0)")
            rows = le.get("rows", 0)
            if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
                raise ConfigError(
                    f, "latency_error.rows", f"must be an integer >= 0, got {rows!r}"
                )
            source = le.get("source", "")
            if not isinstance(source, str):
                raise ConfigError(f, "latency_error.source", "must be a string")
            object.__setattr__(
                self,
                "latency_error",
                {
                    "p90": _number(f, "latency_error.p90", le["p90"], lo=0.0, hi=100.0),
                    "source": source,
                    "rows": rows,
                },
            )

    # -- derived views -------------------------------------------------------------------------
    @property
    def latency_error_p90(self) -> float | None:
        """90th percentile of |predicted / measured - 1| of its latencies, if measured."""
        return None if self.latency_error is None else float(self.latency_error["p90"])

    @property
    def weight_bits(self) -> tuple[int, ...]:
        """Weight bit widths a plan may use on this device: the ones it runs natively."""
        return tuple(self.native_precisions)

    @property
    def activation_bits(self) -> tuple[int, ...]:
        """Activation bit widths the device computes with (8 bits and up)."""
        return tuple(p for p in self.native_precisions if p >= 8)

    @property
    def memory_limit_kb(self) -> float | None:
        """Where activations live: SRAM on an MCU, RAM elsewhere."""
        mem = self.memory
        return mem["sram_kb"] if mem.get("sram_kb") is not None else mem.get("ram_kb")

    def hard_limits(self) -> dict[str, float]:
        """Budget keys the board itself caps (a plan above them cannot run at all)."""
        out: dict[str, float] = {}
        if self.memory_limit_kb is not None:
            out["memory_kb"] = float(self.memory_limit_kb)
        if self.memory.get("flash_kb") is not None:
            out["flash_kb"] = float(self.memory["flash_kb"])  # type: ignore[arg-type]
        return out

    def checked_budgets(self, budgets: Mapping[str, float]) -> dict[str, float]:
        """The budgets plans are checked against, in BUDGET_KEYS order: each one cut to the
        board's own limit, and a limit the experiment sets no budget for added."""
        limits = self.hard_limits()
        out: dict[str, float] = {}
        for key in BUDGET_KEYS:
            if key in budgets or key in limits:
                out[key] = min(float(budgets.get(key, math.inf)), limits.get(key, math.inf))
        return out

    def aligned(self, in_channels: int, out_channels: int, groups: int) -> bool:
        """Whether a conv's channels suit the fast kernels (multiples of `channel_block`).

        Per group; a dense conv with fewer input channels than a block (an RGB stem) counts as
        aligned, as ONNX Runtime's NCHWc kernels take such an input directly.
        """
        b = self.channel_block
        if b <= 1:
            return True
        cin, cout = in_channels // max(groups, 1), out_channels // max(groups, 1)
        if groups > 1 and groups == in_channels:  # depthwise: the channels themselves
            return in_channels % b == 0
        return cout % b == 0 and (cin % b == 0 or (groups == 1 and cin < b))

    def unaligned_factor(self, in_channels: int, out_channels: int, groups: int) -> float:
        """Efficiency multiplier of a conv: 1 when aligned, else the dense or grouped factor.

        Grouped convs (depthwise included) take the `dwconv` factor: off the fast path a
        runtime runs them group by group.
        """
        if self.aligned(in_channels, out_channels, groups):
            return 1.0
        return float(self.unaligned_efficiency["conv" if groups <= 1 else "dwconv"])

    def occupancy_factor(self, outputs: float) -> float:
        """How much longer per MAC a conv/linear with `outputs` output elements runs than one
        that fills the device: `saturation_outputs / outputs`, at least 1."""
        if self.saturation_outputs <= 0 or outputs <= 0:
            return 1.0
        return max(1.0, self.saturation_outputs / outputs)

    def compute_precision(self, weight_bits: int, activation_bits: int) -> int:
        """The precision a layer runs at: the wider operand, or the fallback if not native."""
        need = max(int(weight_bits), int(activation_bits))
        # 4-bit weights with 8-bit activations run on the 8-bit units; a width with no kernel
        # (int16 on a device without it) is charged at the fallback the runtime would use.
        return need if need in self.native_precisions else self.fallback_precision

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f_ in fields(self):
            if f_.name == "file":
                continue
            value = getattr(self, f_.name)
            if isinstance(value, Mapping):
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f_.name] = value
        return out

    def with_updates(self, **changes: Any) -> HardwareProfile:
        return replace(self, **changes)


def profile_from_dict(data: Any, *, file: str = "<profile>") -> HardwareProfile:
    """Validate a parsed YAML mapping; ConfigError(file, field, ...) for any bad field."""
    if not isinstance(data, Mapping):
        raise ConfigError(file, "<top>", f"a profile is a mapping with keys: {_FIELDS_DOC}")
    known = {f_.name for f_ in fields(HardwareProfile)} - {"file"}
    for key in data:
        if key not in known:
            raise ConfigError(file, str(key), f"unknown key; allowed: {_FIELDS_DOC}")
    required = (
        "name",
        "peak_macs_per_s",
        "native_precisions",
        "fallback_precision",
        "bandwidth_bytes_per_s",
        "efficiency",
        "layer_overhead_us",
        "memory",
    )
    for key in required:
        if key not in data:
            raise ConfigError(file, key, "is required")
    kwargs = dict(data)
    kwargs.setdefault("description", "")
    kwargs.setdefault("sources", ())
    if kwargs["sources"] is None:
        kwargs["sources"] = ()
    if kwargs.get("description") is None:
        kwargs["description"] = ""
    if not isinstance(kwargs["native_precisions"], (list, tuple)):
        raise ConfigError(
            file, "native_precisions", f"must be a list of bits from {list(PRECISIONS)}"
        )
    for key in ("memory", "budgets"):
        if kwargs.get(key) is None and key == "budgets":
            kwargs[key] = {}
    return HardwareProfile(**kwargs, file=file)


def load_profile(
    name_or_path: str | Path, *, file: str = "<command line>", field: str = "target"
) -> HardwareProfile:
    """A built-in profile by name (`phone`, `mcu`, `cloud_gpu`) or a user's YAML by path.

    Raises:
        ConfigError: unknown name, missing file, unreadable YAML, or any bad field (the error
            then names the profile file and the field).
    """
    path = resolve("profile", name_or_path, file=file, field=field)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), "<yaml>", f"not valid YAML: {exc}") from None
    except OSError as exc:
        raise ConfigError(str(path), "<file>", f"cannot read: {exc}") from None
    return profile_from_dict(data, file=str(path))


def write_profile(profile: HardwareProfile, path: str | Path, *, header: str = "") -> Path:
    """Write a profile as YAML that `load_profile` reads back to an equal profile."""
    text = yaml.safe_dump(profile.to_dict(), sort_keys=False, default_flow_style=False)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    return atomic_write_text(path, text)  # never leave a half-written profile behind

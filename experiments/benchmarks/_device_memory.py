"""Memory half of the device benchmark: predicted SRAM and flash against TFLite Micro.

    python experiments/benchmarks/_device_memory.py   # alone: prints the markdown

`memory_section()` (called by devices.py) converts each network below to a `.tflite` as
`export --format tflite` does (full-integer int8 when every layer is at 8 bits, else float32;
litert-torch + PT2E, `search.tflite.convert`), runs it in the TFLite Micro Python
interpreter and reads the arena it allocated (`print_allocations()` after `invoke()`), then
compares:

* SRAM: the `mcu` profile's `memory_bytes` (its `memory_planner` predicts TFLM's arena: greedy
  planner head + persistent tail) with the arena total; also the head alone against
  `peak_activation_bytes`, and what the liveness model with TinyEngine's in-place depthwise
  (the profile's planner before) predicted;
* flash: `flash_bytes` with the `.tflite` size plus the profile's `runtime_flash_kb`.

Networks: the four MLPerf Tiny references and an ST MobileNetV2 from the zoo, plans of the
built-in digits task built with `search.compress.compress` (pruned, low-rank, students), and a
user network with residual adds, a concat and depthwise convolutions. Weights are random (memory
does not depend on them); calibration rows are random normal. Needs the `[tflite]` extra.
Asserts nothing.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from search.compress import compress, compressible_layers  # noqa: E402
from search.hardware import (  # noqa: E402
    REFERENCE_NETWORKS,
    estimate_cost,
    load_profile,
    reference_network,
)
from search.hardware._tflm import full_integer  # noqa: E402
from spaces import (  # noqa: E402
    ArchitectureConfig,
    CompressionPlan,
    LowRankConfig,
    PruneConfig,
    QuantizeConfig,
)

PROFILE = "mcu"
ARENA_TOLERANCE = 0.10
FLASH_TOLERANCE = 0.05
REFERENCES = (
    "resnet8",
    "ds_cnn",
    "mobilenet_v1_025",
    "fc_autoencoder",
    "st_mobilenet_v2_035_128",
)


class UserNet(nn.Module):
    """A user's network: residual adds, a channel concat, depthwise convs, stride-2 stages."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.dw = nn.Sequential(
            nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.pw = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.branch = nn.Sequential(nn.Conv2d(16, 8, 3, 1, 1), nn.ReLU())
        self.down = nn.Sequential(
            nn.Conv2d(24, 24, 3, 2, 1, groups=24), nn.ReLU(), nn.Conv2d(24, 32, 1), nn.ReLU()
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.stem(x)
        b = torch.relu(a + self.pw(self.dw(a)))  # residual add
        c = torch.cat([b[:, :16], self.branch(b)], 1)  # concat of two paths
        return self.head(self.down(c))


def _digits_plans() -> dict[str, CompressionPlan]:
    int8 = QuantizeConfig(default_weight_bits=8, activation_bits=8)
    return {
        "digits: int8": CompressionPlan(quantize=int8),
        "digits: pruned 50% int8": CompressionPlan(
            prune=PruneConfig(global_ratio=0.5), quantize=int8
        ),
        "digits: low-rank 0.5 + pruned 25% int8": CompressionPlan(
            lowrank=LowRankConfig(ranks=(("conv2", 0.5),)),
            prune=PruneConfig(global_ratio=0.25),
            quantize=int8,
        ),
        "digits: MobileNetV2 student x0.5 int8": CompressionPlan(
            architecture=ArchitectureConfig("mobilenetv2", 0.5, 1), quantize=int8
        ),
        "digits: MobileNetV2 student x1.0 d2 int8": CompressionPlan(
            architecture=ArchitectureConfig("mobilenetv2", 1.0, 2), quantize=int8
        ),
        "digits: ShuffleNetV2 student x0.5 int8": CompressionPlan(
            architecture=ArchitectureConfig("shufflenetv2", 0.5, 1), quantize=int8
        ),
        # Wider than 8 bits: the export is float32, which TFLM runs on its float kernels.
        "digits: pruned 25% w16 a8 (float32 in TFLM)": CompressionPlan(
            prune=PruneConfig(global_ratio=0.25),
            quantize=QuantizeConfig(default_weight_bits=16, activation_bits=8),
        ),
    }


Built = tuple[nn.Module, tuple[int, ...], dict[str, int]]


def _int8(model: nn.Module, shape: tuple[int, ...]) -> Built:
    return model, shape, {x.name: 8 for x in compressible_layers(model)}


def networks() -> list[tuple[str, str, Callable[[], Built]]]:
    """(name, kind, build) for every network checked; build returns (model, input shape,
    weight bits per layer); activations are at 8 bits."""
    out: list[tuple[str, str, Callable[[], Built]]] = []
    for name in REFERENCES:
        out.append(
            (
                name,
                "reference",
                lambda n=name: _int8(
                    reference_network(n), tuple(REFERENCE_NETWORKS[n].input_shape)
                ),
            )
        )
    for name, plan in _digits_plans().items():
        kind = "student" if plan.architecture.family != "base" else "digits plan"
        out.append((name, kind, lambda p=plan: _digits_model(p)))
    out.append(
        ("user net (add, concat, depthwise)", "user", lambda: _int8(UserNet(), (3, 32, 32)))
    )
    return out


def _digits_model(plan: CompressionPlan) -> Built:
    from search.tasks import DigitsCNN

    torch.manual_seed(0)
    base = DigitsCNN().eval()
    shape = (1, 8, 8)
    x = torch.rand(64, *shape)
    y = torch.randint(0, 10, (64,))
    done = compress(
        plan, base, input_shape=shape, num_classes=10, calib_inputs=x, grad_batch=(x, y)
    )
    return done.model.eval(), shape, dict(done.layer_bits)


def measure(name: str, kind: str, build: Callable[[], Any], profile: Any) -> dict[str, Any]:
    """One row: TFLM's arena and the .tflite size beside the predictions."""
    from search.errors import ConfigError
    from search.tflite import TflmModel, convert, operators

    model, shape, bits = build()
    int8 = full_integer(bits.values(), 8)  # what export --format tflite writes
    cost = estimate_cost(model, shape, profile, layer_bits=bits, activation_bits=8)
    old = estimate_cost(
        model,
        shape,
        profile.with_updates(memory_planner="liveness", depthwise_in_place=True),
        layer_bits=bits,
        activation_bits=8,
    )
    row: dict[str, Any] = {"network": name, "kind": kind, "input_shape": list(shape)}
    row["tflite_kind"] = "int8" if int8 else "float32"
    row["macs"] = int(cost.macs)
    row["params"] = int(cost.params)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.tflite"
        try:
            convert(
                model, path, input_shape=shape, calib_inputs=torch.randn(32, *shape), int8=int8
            )
            tflm = TflmModel(path)
            arena = tflm.arena()
        except ConfigError as exc:
            row["error"] = str(exc)
            return row
        size = path.stat().st_size
        ops = operators(path)
    runtime_flash = int(profile.runtime_flash_kb * 1024)
    flash = size + runtime_flash
    row.update(
        {
            "tflite_bytes": size,
            "tflite_operators": len(ops),
            "arena_head": arena.head,
            "arena_tail": arena.tail,
            "arena_total": arena.total,
            "predicted_peak_activation_bytes": int(cost.peak_activation_bytes),
            "predicted_memory_bytes": int(cost.memory_bytes),
            "liveness_in_place_peak_bytes": int(old.peak_activation_bytes),
            "flash_bytes": flash,
            "predicted_flash_bytes": int(cost.flash_bytes),
            "head_error": round(cost.peak_activation_bytes / arena.head - 1, 4),
            "arena_error": round(cost.memory_bytes / arena.total - 1, 4),
            "liveness_error": round(old.peak_activation_bytes / arena.total - 1, 4),
            "flash_error": round(cost.flash_bytes / flash - 1, 4),
            "convert_s": round(time.perf_counter() - start, 1),
        }
    )
    row["arena_within_10pct"] = abs(row["arena_error"]) <= ARENA_TOLERANCE
    row["flash_within_5pct"] = abs(row["flash_error"]) <= FLASH_TOLERANCE
    return row


def memory_section(log: Callable[[str], None] = print) -> tuple[dict[str, Any], list[str]]:
    """The `memory` key of devices.json and its markdown lines."""
    from search.tflite import missing_extra

    why = missing_extra()
    if why:
        return {"skipped": why}, ["## Memory vs TFLite Micro", "", f"Skipped: {why}", ""]
    profile = load_profile(PROFILE)
    rows = []
    for name, kind, build in networks():
        log(f"memory: {name}")
        rows.append(measure(name, kind, build, profile))
    ok = [r for r in rows if "error" not in r]
    n = max(len(ok), 1)
    summary = {
        "profile": PROFILE,
        "memory_planner": profile.memory_planner,
        "runtime_flash_bytes": int(profile.runtime_flash_kb * 1024),
        "networks": len(rows),
        "converted": len(ok),
        "arena_within_10pct": round(sum(r["arena_within_10pct"] for r in ok) / n, 4),
        "flash_within_5pct": round(sum(r["flash_within_5pct"] for r in ok) / n, 4),
        "head_within_10pct": round(sum(abs(r["head_error"]) <= 0.10 for r in ok) / n, 4),
        "liveness_in_place_within_10pct": round(
            sum(abs(r["liveness_error"]) <= 0.10 for r in ok) / n, 4
        ),
        "max_abs_arena_error": max((abs(r["arena_error"]) for r in ok), default=None),
        "max_abs_flash_error": max((abs(r["flash_error"]) for r in ok), default=None),
        "rows": rows,
    }
    return summary, markdown(summary)


def _pct(x: float) -> str:
    return f"{x * 100:+.1f} %"


def markdown(s: dict[str, Any]) -> list[str]:
    lines = [
        "## Memory vs TFLite Micro",
        "",
        f"Profile `{s['profile']}` (memory_planner: `{s['memory_planner']}`) against the arena "
        "the TFLite Micro interpreter allocated for the `.tflite` of each network (int8; float32 "
        "where the name says so) "
        "(`print_allocations()` after `invoke()`), and against the `.tflite` size plus the "
        f"profile's runtime ({s['runtime_flash_bytes']:,} B).",
        "",
        f"- SRAM (arena total) within +-10 %: **{s['arena_within_10pct']:.0%}** of "
        f"{s['converted']} networks (largest error {s['max_abs_arena_error']:.1%}); "
        f"the liveness model with in-place depthwise used before: "
        f"{s['liveness_in_place_within_10pct']:.0%}.",
        f"- Flash within +-5 %: **{s['flash_within_5pct']:.0%}** (largest error "
        f"{s['max_abs_flash_error']:.1%}).",
        "",
        "| network | kind | arena head: TFLM / predicted | arena total: TFLM / predicted "
        "| error | before (liveness, in-place dw) | flash: .tflite + runtime / predicted "
        "| error |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in s["rows"]:
        if "error" in r:
            lines.append(f"| {r['network']} | {r['kind']} | not converted: {r['error']} |||||")
            continue
        lines.append(
            f"| {r['network']} | {r['kind']} | {r['arena_head']:,} / "
            f"{r['predicted_peak_activation_bytes']:,} | {r['arena_total']:,} / "
            f"{r['predicted_memory_bytes']:,} | {_pct(r['arena_error'])} | "
            f"{r['liveness_in_place_peak_bytes']:,} ({_pct(r['liveness_error'])}) | "
            f"{r['flash_bytes']:,} / {r['predicted_flash_bytes']:,} | "
            f"{_pct(r['flash_error'])} |"
        )
    lines.append("")
    return lines


if __name__ == "__main__":
    _, md = memory_section()
    print("\n".join(md))

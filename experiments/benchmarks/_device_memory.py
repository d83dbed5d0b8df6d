"""Memory half of the device benchmark: predicted SRAM and flash against TFLite Micro.

    python experiments/benchmarks/_device_memory.py [--held-out]  # alone: prints the markdown

`memory_section()` (called by devices.py) converts each network below to a `.tflite` as
`export --format tflite` does (full-integer int8 when every layer is at 8 bits, else float32;
litert-torch + PT2E, `search.export.convert`), runs it in the TFLite Micro Python
interpreter and reads the arena it allocated (`print_allocations()` after `invoke()`), then
compares:

* SRAM: the `mcu` profile's `memory_bytes` (its `memory_planner` predicts TFLM's arena: greedy
  planner head + persistent tail) with the arena total; also the head alone against
  `peak_activation_bytes`, and what the liveness model with TinyEngine's in-place depthwise
  (the profile's planner before) predicted;
* flash: `flash_bytes` with the `.tflite` size plus the profile's `runtime_flash_kb`.

Networks come in two sets. *In-sample*: the networks the constants of `search/hardware/cost/_tflm`
(flatbuffer table sizes, the arena tail's per-tensor and per-op bytes) were fitted on, the four
MLPerf Tiny references, an ST MobileNetV2 from the zoo, plans of the built-in digits task built
with `search.compress.compress` (pruned, low-rank, students) and a user network with residual
adds, a concat and depthwise convolutions. *Held-out*: networks no constant was fitted on (an ST
Keras MobileNetV1 at another width and input, plans of the `gratings` task, digits plans from
other seeds and ratios, students of other widths, the user network at another width and input);
the headline `arena_within_10pct` / `flash_within_5pct` are over the held-out set, the in-sample
figures sit under `in_sample`. Weights are random (memory does not depend on them); calibration
rows are random normal. Needs the `[tflite]` extra. Asserts nothing.
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

from search.compress import compress, compressible_layers
from search.hardware import (
    REFERENCE_NETWORKS,
    estimate_cost,
    load_profile,
    reference_network,
)
from search.hardware.cost import full_integer
from spaces import (
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
# What the fitted constants of search/hardware/cost/_tflm were fitted on (see the comment there).
FITTED_ON = (
    "its 12 int8 networks (the benchmark's first version, dd81c33) and the two _Branchy models "
    "of tests/test_tflite.py; the float32 digits plan came with the float32 memory model "
    "(87b071f) and counts as in-sample too"
)
HELD_OUT_REFERENCES = ("st_mobilenet_v1_025_96_gray", "st_mobilenet_v1_050_224")


class UserNet(nn.Module):
    """A user's network: residual adds, a channel concat, depthwise convs, stride-2 stages."""

    def __init__(self, classes: int = 5, width: int = 16) -> None:
        super().__init__()
        w, h = width, width // 2
        self.w = w
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()
        )
        self.dw = nn.Sequential(
            nn.Conv2d(w, w, 3, 1, 1, groups=w, bias=False), nn.BatchNorm2d(w), nn.ReLU()
        )
        self.pw = nn.Sequential(nn.Conv2d(w, w, 1, bias=False), nn.BatchNorm2d(w))
        self.branch = nn.Sequential(nn.Conv2d(w, h, 3, 1, 1), nn.ReLU())
        self.down = nn.Sequential(
            nn.Conv2d(w + h, w + h, 3, 2, 1, groups=w + h),
            nn.ReLU(),
            nn.Conv2d(w + h, 2 * w, 1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * w, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.stem(x)
        b = torch.relu(a + self.pw(self.dw(a)))  # residual add
        c = torch.cat([b[:, : self.w], self.branch(b)], 1)  # concat of two paths
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


def _held_out_plans() -> dict[str, tuple[str, int, CompressionPlan]]:
    """Plans no constant was fitted on: name -> (task, seed, plan)."""
    int8 = QuantizeConfig(default_weight_bits=8, activation_bits=8)
    return {
        # The benchmark task's base as it is: its float32 activations break the board's SRAM.
        "gratings: base (float32)": ("gratings", 0, CompressionPlan()),
        "gratings: int8": ("gratings", 0, CompressionPlan(quantize=int8)),
        "gratings: pruned 40% int8 (seed 1)": (
            "gratings",
            1,
            CompressionPlan(prune=PruneConfig(global_ratio=0.4), quantize=int8),
        ),
        "gratings: low-rank 0.25 classifier + pruned 20% int8": (
            "gratings",
            2,
            CompressionPlan(
                lowrank=LowRankConfig(ranks=(("classifier.0", 0.25),)),
                prune=PruneConfig(global_ratio=0.2),
                quantize=int8,
            ),
        ),
        "gratings: pruned 30% w16 a8 (float32 in TFLM)": (
            "gratings",
            3,
            CompressionPlan(
                prune=PruneConfig(global_ratio=0.3),
                quantize=QuantizeConfig(default_weight_bits=16, activation_bits=8),
            ),
        ),
        "digits: pruned 35% int8 (seed 1)": (
            "digits",
            1,
            CompressionPlan(prune=PruneConfig(global_ratio=0.35), quantize=int8),
        ),
        "digits: low-rank 0.25 + pruned 60% int8 (seed 2)": (
            "digits",
            2,
            CompressionPlan(
                lowrank=LowRankConfig(ranks=(("conv2", 0.25),)),
                prune=PruneConfig(global_ratio=0.6),
                quantize=int8,
            ),
        ),
        "digits: MobileNetV2 student x0.75 int8 (seed 3)": (
            "digits",
            3,
            CompressionPlan(
                architecture=ArchitectureConfig("mobilenetv2", 0.75, 1), quantize=int8
            ),
        ),
        "digits: ShuffleNetV2 student x1.0 d2 int8 (seed 4)": (
            "digits",
            4,
            CompressionPlan(
                architecture=ArchitectureConfig("shufflenetv2", 1.0, 2), quantize=int8
            ),
        ),
    }


Built = tuple[nn.Module, tuple[int, ...], dict[str, int]]


def _int8(model: nn.Module, shape: tuple[int, ...]) -> Built:
    return model, shape, {x.name: 8 for x in compressible_layers(model)}


def networks() -> list[tuple[str, str, str, Callable[[], Built]]]:
    """(name, set, kind, build) for every network checked, set "in-sample" or "held-out";
    build returns (model, input shape, weight bits per layer); activations are at 8 bits."""
    out: list[tuple[str, str, str, Callable[[], Built]]] = []
    for group, names in (("in-sample", REFERENCES), ("held-out", HELD_OUT_REFERENCES)):
        for name in names:
            out.append(
                (
                    name,
                    group,
                    "reference",
                    lambda n=name: _int8(
                        reference_network(n), tuple(REFERENCE_NETWORKS[n].input_shape)
                    ),
                )
            )
    for name, plan in _digits_plans().items():
        kind = "student" if plan.architecture.is_student else "digits plan"
        out.append((name, "in-sample", kind, lambda p=plan: _task_model("digits", p, 0)))
    out.append(
        (
            "user net (add, concat, depthwise)",
            "in-sample",
            "user",
            lambda: _int8(UserNet(), (3, 32, 32)),
        )
    )
    for name, (task, seed, plan) in _held_out_plans().items():
        kind = "student" if plan.architecture.is_student else f"{task} plan"
        out.append((name, "held-out", kind, lambda t=task, p=plan, s=seed: _task_model(t, p, s)))
    out.append(
        (
            "user net x1.5 (add, concat, depthwise), 48x40",
            "held-out",
            "user",
            lambda: _int8(UserNet(classes=7, width=24), (3, 48, 40)),
        )
    )
    return out


def _task_model(task: str, plan: CompressionPlan, seed: int) -> Built:
    from search.tasks import DigitsCNN, GratingsCNN

    torch.manual_seed(seed)
    base, shape = (
        (DigitsCNN().eval(), (1, 8, 8))
        if task == "digits"
        else (GratingsCNN().eval(), (3, 16, 16))
    )
    x = torch.rand(64, *shape)
    y = torch.randint(0, 10, (64,))
    done = compress(
        plan, base, input_shape=shape, num_classes=10, calib_inputs=x, grad_batch=(x, y)
    )
    return done.model.eval(), shape, dict(done.layer_bits)


def measure(
    name: str, group: str, kind: str, build: Callable[[], Any], profile: Any
) -> dict[str, Any]:
    """One row: TFLM's arena and the .tflite size beside the predictions."""
    from search.errors import ConfigError
    from search.export import TflmModel, convert, operators

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
    row: dict[str, Any] = {
        "network": name,
        "set": group,
        "kind": kind,
        "input_shape": list(shape),
    }
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


def _shares(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if "error" not in r]
    n = max(len(ok), 1)
    return {
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
    }


def memory_section(
    log: Callable[[str], None] = print, only: str | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The `memory` key of devices.json and its markdown lines.

    The top-level shares are over the held-out networks (no constant of the memory model was
    fitted on them); `in_sample` gives the same figures over the networks it was fitted on.
    `only` ("in-sample" or "held-out") measures one set alone.
    """
    from search.export import missing_extra

    why = missing_extra()
    if why:
        return {"skipped": why}, ["## Memory vs TFLite Micro", "", f"Skipped: {why}", ""]
    profile = load_profile(PROFILE)
    rows = []
    for name, group, kind, build in networks():
        if only and group != only:
            continue
        log(f"memory: {name} ({group})")
        rows.append(measure(name, group, kind, build, profile))
    held = [r for r in rows if r["set"] == "held-out"]
    summary = {
        "profile": PROFILE,
        "memory_planner": profile.memory_planner,
        "runtime_flash_bytes": int(profile.runtime_flash_kb * 1024),
        "headline_set": "held-out",
        "fitted_on": FITTED_ON,
        **_shares(held),
        "in_sample": _shares([r for r in rows if r["set"] == "in-sample"]),
        "all": _shares(rows),
        "rows": rows,
    }
    return summary, markdown(summary)


def _pct(x: float) -> str:
    return f"{x * 100:+.1f} %"


def _figures(s: dict[str, Any], label: str) -> list[str]:
    if not s["converted"]:
        return [f"- {label}: no network converted."]
    return [
        f"- {label}, SRAM (arena total) within +-10 %: **{s['arena_within_10pct']:.0%}** of "
        f"{s['converted']} networks (largest error {s['max_abs_arena_error']:.1%}); "
        f"the liveness model with in-place depthwise used before: "
        f"{s['liveness_in_place_within_10pct']:.0%}. Flash within +-5 %: "
        f"**{s['flash_within_5pct']:.0%}** (largest error {s['max_abs_flash_error']:.1%}).",
    ]


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
        "The memory model's fitted constants (flatbuffer bytes per tensor, per operator and "
        "fixed; the arena tail's bytes per tensor and per-op data) were fitted on the *in-sample* "
        f"set: {s['fitted_on']}. The *held-out* networks were never used to fit anything; "
        "the headline is theirs.",
        "",
        *_figures(s, "Held-out"),
        *_figures(s["in_sample"], "In-sample"),
        "",
        "| network | set | kind | arena head: TFLM / predicted | arena total: TFLM / predicted "
        "| error | before (liveness, in-place dw) | flash: .tflite + runtime / predicted "
        "| error |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in s["rows"]:
        if "error" in r:
            lines.append(
                f"| {r['network']} | {r['set']} | {r['kind']} | not converted: {r['error']} ||||||"
            )
            continue
        lines.append(
            f"| {r['network']} | {r['set']} | {r['kind']} | {r['arena_head']:,} / "
            f"{r['predicted_peak_activation_bytes']:,} | {r['arena_total']:,} / "
            f"{r['predicted_memory_bytes']:,} | {_pct(r['arena_error'])} | "
            f"{r['liveness_in_place_peak_bytes']:,} ({_pct(r['liveness_error'])}) | "
            f"{r['flash_bytes']:,} / {r['predicted_flash_bytes']:,} | "
            f"{_pct(r['flash_error'])} |"
        )
    lines.append("")
    return lines


if __name__ == "__main__":
    _, md = memory_section(only="held-out" if "--held-out" in sys.argv[1:] else None)
    print("\n".join(md))

"""The zoo benchmark's networks: which ones a run measures (`zoo`, `select`), and every stage
for one network in this process (`measure_here`: build, cost, the joint plan, cost, forward)."""

from __future__ import annotations

import re
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

MAX_PARAMS = 60e6
EXTRA = ("vit_b_16",)  # named by the issue, 86.6 M parameters: reported beside the summary
# One backbone per distinct feature extractor (Mask R-CNN, Keypoint R-CNN and the 320 px
# Faster R-CNN share one of these; RetinaNet v2's differs from v1 only in its norm and P6 input).
DETECTION = (
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "retinanet_resnet50_fpn",
    "fcos_resnet50_fpn",
    "ssd300_vgg16",
    "ssdlite320_mobilenet_v3_large",
)
BACKBONE = ".backbone"
MIN_SIZE = {"ssd300_vgg16.backbone": 300}  # its extra layers need 300 px (3x3 kernels at 1x1)
NUM_CLASSES = {"classification": 1000, "segmentation": 21, "detection": 91}
QUICK = ("shufflenet_v2_x0_5", "squeezenet1_1", "mobilenet_v3_small", "lraspp_mobilenet_v3_large")
PRUNE_RATIO, RANK_RATIO, HEAD_RATIO, BITS = 0.3, 0.5, 0.25, 8
SQUARE_RANK_RATIO = 0.25  # an attention block's square q/k/v/out: half the rank saves nothing
NEXT_PRUNE_RATIO = 0.35  # the second plan: a study's next trial, on the study's SVDs


# -- which networks --------------------------------------------------------------------------


def _segmentation() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models.segmentation))


def kind_of(name: str) -> str:
    if name.endswith(BACKBONE):
        return "detection"
    return "segmentation" if name in _segmentation() else "classification"


def family_of(name: str) -> str:
    """resnet18 -> resnet, efficientnet_v2_s -> efficientnet, fcn_resnet50 -> fcn."""
    head = name.removesuffix(BACKBONE).split("_")[0]
    return head if kind_of(name) != "classification" else re.sub(r"\d.*$", "", head)


def published_params(name: str) -> int | None:
    """torchvision's `num_params` for the network (its smallest weights entry), no download."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name.removesuffix(BACKBONE))
        return min(int(w.meta["num_params"]) for w in weights)
    except (ValueError, KeyError):
        return None


def zoo(max_params: float = MAX_PARAMS) -> list[dict[str, Any]]:
    """Every network the full run measures: name, kind, family, published parameters and
    whether it counts in the summary (a classifier up to `max_params`)."""
    import torchvision

    out = []
    for name in sorted(torchvision.models.list_models(module=torchvision.models)):
        params = published_params(name)
        small = params is not None and params <= max_params
        if small or name in EXTRA:
            out.append(entry(name, params, summary=small))
    out += [entry(n, published_params(n), summary=False) for n in _segmentation()]
    out += [entry(n + BACKBONE, None, summary=False) for n in DETECTION]
    return out


def entry(name: str, params: int | None, *, summary: bool) -> dict[str, Any]:
    return {
        "model": name,
        "kind": kind_of(name),
        "family": family_of(name),
        "published_params": params,
        "in_summary": summary,
    }


def select(models: str | None, quick: bool, max_params: float) -> list[dict[str, Any]]:
    if not models and not quick:
        return zoo(max_params)
    names = [n.strip() for n in models.split(",") if n.strip()] if models else list(QUICK)
    out = []
    for n in names:
        params = published_params(n)
        small = kind_of(n) == "classification" and params is not None and params <= max_params
        out.append(entry(n, params, summary=small))
    return out


def build_model(name: str) -> Any:
    """The torchvision network with random weights (a detection entry: its backbone)."""
    import torchvision

    if name.endswith(BACKBONE):
        det = torchvision.models.get_model(
            name.removesuffix(BACKBONE), weights=None, weights_backbone=None
        )
        return det.backbone.eval()
    extra = {"weights_backbone": None} if kind_of(name) == "segmentation" else {}
    return torchvision.models.get_model(name, weights=None, **extra).eval()


# -- one network, in this process ------------------------------------------------------------


def _shapes(out: Any) -> Any:
    """The output shape to compare: a tensor's, a dict's 'out', else every tensor in the dict."""
    if isinstance(out, dict):
        if "out" in out:
            return list(out["out"].shape)
        return {k: list(v.shape) for k, v in out.items() if hasattr(v, "shape")}
    if isinstance(out, (tuple, list)):
        return [list(v.shape) for v in out if hasattr(v, "shape")]
    return list(out.shape)


def _out_channels(model: Any) -> dict[str, int]:
    """Output channels of every Conv2d / Linear, read from the (unparametrized) weight."""
    from torch import nn

    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            p = getattr(m, "parametrizations", None)
            w = p.weight.original if p is not None and "weight" in p else m.weight
            out[name] = int(w.shape[0])
    return out


def channels_removed(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    """Per base layer: its output channels after compression (a low-rank pair: its second
    half's) against before. Rank channels are not counted; a layer not found is listed."""
    removed, pruned, missing = 0, 0, []
    for name, c in before.items():
        c2 = after.get(name, after.get(f"{name}.1"))
        if c2 is None:
            missing.append(name)
            continue
        removed += c - c2
        pruned += c2 < c
    total = sum(before.values())
    return {
        "channels_before": total,
        "channels_removed": removed,
        "channels_removed_fraction": round(removed / total, 4) if total else 0.0,
        "layers_pruned": pruned,
        "layers_not_found": missing,
    }


def attention_heads(model: Any) -> int:
    """Heads of every attention block (`attention_modules`: a block that holds another one, as
    ViT's encoder block holds its attention, is not counted again)."""
    from search.compress._layers import attention_modules, head_count

    return sum(head_count(m) or 0 for m in attention_modules(model).values())


def joint_plan(model: Any, prune_ratio: float = PRUNE_RATIO) -> Any:
    """The issue's joint plan for `model`: low-rank 0.5 where it cuts MACs (0.25 on an
    attention block's square projections, where 0.5 saves nothing), 30 % global L1
    channel pruning, a quarter of each attention block's heads, int8 weights and activations."""
    from search.compress import compressible_layers
    from spaces import CompressionPlan, LowRankConfig, PruneConfig, QuantizeConfig

    layers = compressible_layers(model)
    square = {x.name for x in layers if x.kind == "linear" and x.in_channels == x.out_channels}
    ranks = {
        x.name: SQUARE_RANK_RATIO if x.name in square else RANK_RATIO
        for x in layers
        if x.factorizable
    }
    heads = {x.attention: HEAD_RATIO for x in layers if x.attention}
    return CompressionPlan(
        lowrank=LowRankConfig(ranks=ranks),
        prune=PruneConfig(global_ratio=prune_ratio, importance="l1", heads=heads),
        quantize=QuantizeConfig(default_weight_bits=BITS, activation_bits=BITS),
    )


def measure_here(
    name: str,
    size: int = 224,
    profile: str = "phone",
    emit: Callable[[dict[str, Any]], None] = lambda row: None,
) -> dict[str, Any]:
    """Every stage for one network in this process. Never raises: a stage that fails records
    its error in `errors` and the stages that need it are not run. `emit(row)` is called as
    each stage starts (row["stage"] names it) and at the end (row["stage"] == "done")."""
    import torch

    from search.compress import compress
    from search.hardware import estimate_cost, load_profile

    kind = kind_of(name)
    size = max(size, MIN_SIZE.get(name, 0))
    row: dict[str, Any] = {
        "model": name,
        "kind": kind,
        "family": family_of(name),
        "size": size,
        "profile": profile,
        "threads": torch.get_num_threads(),
        "built": False,
        "costed": False,
        "forward": False,
        "timed_out": False,
        "stage": None,
        "errors": {},
    }
    state: dict[str, Any] = {}

    def stage(key: str, fn: Callable[[], None]) -> bool:
        row["stage"] = key
        emit(row)
        try:
            fn()
            return True
        except Exception as exc:  # noqa: BLE001 - the benchmark records, never raises
            tb = traceback.extract_tb(exc.__traceback__)
            where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
            row["errors"][key] = f"{type(exc).__name__}: {exc}"[:600] + where
            return False

    shape = (3, size, size)
    gen = torch.Generator().manual_seed(0)
    x_calib = torch.randn(2, *shape, generator=gen)
    x_one = torch.randn(1, *shape, generator=gen)
    prof = load_profile(profile)

    def base() -> None:
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            state["base"] = build_model(name)
        row["model_seconds"] = round(time.perf_counter() - t0, 3)
        row["params_before"] = sum(p.numel() for p in state["base"].parameters())
        row["attention_heads_before"] = attention_heads(state["base"])

    def base_cost() -> None:
        t0 = time.perf_counter()
        cost = estimate_cost(state["base"], shape, prof)
        row["base_cost_seconds"] = round(time.perf_counter() - t0, 3)
        row["latency_ms_before"] = round(float(cost.latency_ms), 4)
        row["macs_before"] = int(cost.macs)

    def build(prune_ratio: float) -> tuple[Any, float]:
        """The joint plan at `prune_ratio`, built: (compressed, seconds)."""
        t0 = time.perf_counter()
        p = joint_plan(state["base"], prune_ratio)
        row.setdefault("plan", p.describe())  # the first plan's
        row.setdefault("lowrank_layers", len(p.lowrank.ranks))
        c = compress(
            p,
            state["base"],
            input_shape=shape,
            num_classes=NUM_CLASSES[kind],
            calib_inputs=x_calib,
            grad_batch=(x_calib, torch.zeros(len(x_calib), dtype=torch.long)),
        )
        return c, time.perf_counter() - t0

    def cost_of(c: Any) -> tuple[Any, float]:
        t0 = time.perf_counter()
        r = estimate_cost(
            c.model,
            shape,
            prof,
            layer_bits=c.layer_bits,
            activation_bits=c.activation_bits,
            layer_density=c.layer_density,
        )
        return r, time.perf_counter() - t0

    def plan() -> None:
        c, seconds = build(PRUNE_RATIO)
        state["c"] = c
        row["first_build_seconds"] = round(seconds, 3)
        row["built"] = True
        row["params_after"] = sum(p.numel() for p in c.model.parameters())
        row.update(channels_removed(_out_channels(state["base"]), _out_channels(c.model)))
        heads = attention_heads(c.model)
        row["attention_heads_after"] = heads
        row["attention_heads_removed"] = row["attention_heads_before"] - heads
        row["skipped"] = dict(c.skipped)

    def cost() -> None:
        r, seconds = cost_of(state["c"])
        row["first_cost_seconds"] = round(seconds, 3)
        row["first_plan_seconds"] = round(
            row["first_build_seconds"] + row["first_cost_seconds"], 3
        )
        row["latency_ms_after"] = round(float(r.latency_ms), 4)
        row["macs_after"] = int(r.macs)
        row["cost_traced"] = bool(r.traced)
        row["cost_notes"] = list(r.notes)

    def next_plan() -> None:
        """A study's next trial: another prune ratio, on the SVDs the first plan computed."""
        c, build_s = build(NEXT_PRUNE_RATIO)
        _, cost_s = cost_of(c)
        row["build_seconds"], row["cost_seconds"] = round(build_s, 3), round(cost_s, 3)
        row["plan_seconds"] = round(row["build_seconds"] + row["cost_seconds"], 3)

    def forward() -> None:
        t0 = time.perf_counter()
        with torch.no_grad():
            want = _shapes(state["base"](x_one))
            got = _shapes(state["c"].model(x_one))
        row["forward_seconds"] = round(time.perf_counter() - t0, 3)
        row["output_shape_before"], row["output_shape_after"] = want, got
        if got != want:
            raise RuntimeError(f"output shape {got}, the base model's {want}")
        row["forward"] = True

    if stage("model", base):
        base_ok = stage("base_cost", base_cost)
        if stage("plan", plan):
            row["costed"] = base_ok and stage("cost", cost)
            if stage("forward", forward):
                stage("next_plan", next_plan)
    row["stage"] = "done"
    emit(row)
    return row

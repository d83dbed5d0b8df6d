"""compress(): apply a CompressionPlan to a model, operator by operator."""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass, field, fields

import torch
from torch import nn

from spaces import CompressionPlan

from . import _architecture, _lowrank, _pruning, _quantization  # noqa: F401 - register handlers
from ._attention import explicit_attention
from ._layers import layer_modules
from ._pruning import WeightMask
from ._registry import Context, handler_for


@dataclass
class Compressed:
    """A compressed model and what the cost model needs to know about it.

    Attributes:
        model: the network with fake quant attached; trainable (straight-through estimator).
        layer_bits: final module name -> weight bits, for every Conv2d / Linear.
        activation_bits: bits of the activations (32: not quantized).
        layer_density: final module name -> fraction of weights kept (1.0: dense).
        skipped: layer -> why an operator left it whole.
    """

    model: nn.Module
    layer_bits: dict[str, int] = field(default_factory=dict)
    activation_bits: int = 32
    layer_density: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class _Structure:
    model: nn.Module
    ctx: Context
    rng: torch.Tensor  # the RNG state the quantize operator starts from in a fresh build
    nbytes: int

    def restore(self, ctx: Context) -> nn.Module:
        """A copy of the model, with `ctx` and the RNG as a fresh build leaves them."""
        done = copy.deepcopy(self.ctx)
        for f in fields(Context):
            if f.name not in ("calib_inputs", "grad_batch"):
                setattr(ctx, f.name, getattr(done, f.name))
        torch.set_rng_state(self.rng)
        return copy.deepcopy(self.model)


class Structures:
    """Models after the structural operators (architecture, low rank, pruning), by those
    operators' configs: the start costs one structure at several bit widths, and each such
    build skips the pruning and the SVDs. Holds up to `max_bytes` of parameters; the least
    recently used leave first."""

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, _Structure] = OrderedDict()

    def get(self, key: tuple) -> _Structure | None:
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
        return hit

    def put(self, key: tuple, model: nn.Module, ctx: Context) -> None:
        nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        if nbytes > self.max_bytes:
            return
        kept = copy.copy(ctx)
        kept.calib_inputs = torch.empty(0)  # the caller's; never restored
        kept.grad_batch = (torch.empty(0), torch.empty(0))
        self._items[key] = _Structure(
            copy.deepcopy(model), copy.deepcopy(kept), torch.get_rng_state(), nbytes
        )
        while sum(s.nbytes for s in self._items.values()) > self.max_bytes:
            self._items.popitem(last=False)


def _density(layer: nn.Module) -> float:
    for p in getattr(getattr(layer, "parametrizations", {}), "weight", []):
        if isinstance(p, WeightMask):
            return float(p.mask.float().mean())
    return 1.0


def compress(
    plan: CompressionPlan,
    base_model: nn.Module,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    calib_inputs: torch.Tensor,
    grad_batch: tuple[torch.Tensor, torch.Tensor],
    calibrate: bool = True,
    structures: Structures | None = None,
) -> Compressed:
    """Apply `plan` (architecture -> low-rank -> prune -> quantize) to a copy of `base_model`.

    Deterministic: the same plan, base model and inputs give the same structure, so the
    state_dict of a fine-tuned result loads into a fresh `compress(...)` of the same plan.
    An operator that cannot handle a layer leaves it whole and records why in `skipped`.

    Args:
        plan: every decision of the trial.
        base_model: the user's trained network (not modified).
        input_shape: one sample's shape, without the batch dimension.
        num_classes: the logits width.
        calib_inputs: a few batches of inputs for graph tracing and activation ranges.
        grad_batch: (inputs, targets) for gradient-based (Taylor) importance.
        calibrate: set the activation quantizers' first ranges on `calib_inputs`; without it
            they stay unset (pass-through) until the first training batch or `calibrate()`.
        structures: a cache of the structure before quantization, shared by the calls of one
            base model and inputs (one study): a plan that differs from an earlier one only in
            its bit widths is quantized from a copy of that structure, with the same result.

    Returns:
        A `Compressed` with the model in eval mode; call `.train()` to fine-tune it.
    """
    ctx = Context(
        input_shape=tuple(input_shape),
        num_classes=int(num_classes),
        calib_inputs=calib_inputs,
        grad_batch=grad_batch,
        calibrate=calibrate,
    )
    *structural, last = plan.operators()
    key = (*structural, calibrate)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hit = structures.get(key) if structures is not None else None
        if hit is None:
            model = explicit_attention(copy.deepcopy(base_model), inplace=True).eval()
            for cfg in structural:
                model = handler_for(cfg)(model, cfg, ctx).eval()
            if structures is not None:
                structures.put(key, model, ctx)
        else:
            model = hit.restore(ctx)
        model = handler_for(last)(model, last, ctx).eval()
    model.zero_grad(set_to_none=True)
    layers = layer_modules(model)
    return Compressed(
        model=model,
        layer_bits={n: ctx.layer_bits.get(n, 32) for n, _ in layers},
        activation_bits=ctx.activation_bits,
        layer_density={n: _density(m) for n, m in layers},
        skipped=dict(sorted(ctx.skipped.items())),
    )

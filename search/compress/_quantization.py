"""Quantization-aware fake quant: per-layer weight bits and per-tensor activation bits.

Weights: symmetric per-output-channel, attached with `torch.nn.utils.parametrize`, so the layer
stays an ordinary (leaf) Conv2d/Linear for torch.fx and for code that reads `.weight`.
Activations: asymmetric per-tensor on the input of every Conv2d/Linear, ranges set by min/max
calibration. Both use a straight-through estimator so recovery training sees the rounding.
Built on plain torch rather than torch.ao.quantization, which is deprecated.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from spaces import QuantizeConfig

from ._layers import layer_modules
from ._registry import Context, register_handler

INPUT_QUANT = "input_quant"  # child-module name of a layer's activation quantizer


def fake_quant_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-channel (dim 0) rounding to `bits`, gradient passed straight through."""
    if bits >= 32:
        return w
    qmax = 2 ** (bits - 1) - 1
    dims = tuple(range(1, w.dim()))
    scale = w.detach().abs().amax(dim=dims, keepdim=True).clamp_min(1e-12) / qmax
    q = torch.clamp(torch.round(w / scale), -qmax, qmax) * scale
    return w + (q - w).detach()


class WeightFakeQuant(nn.Module):
    """Parametrization: the weight as seen in the forward pass is its `bits`-bit rounding."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = int(bits)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quant_weight(w, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class ActivationFakeQuant(nn.Module):
    """Asymmetric per-tensor fake quant with a calibrated [min, max] range.

    Until calibrated (or while observing) it passes the input through unchanged. In training
    mode the range follows the batches (an exponential moving average of their min/max, as
    PyTorch's QAT observers do): a student fresh from initialisation has tiny activations at
    calibration time, and a frozen range would clamp everything once it starts learning.
    """

    EMA = 0.1

    min_val: torch.Tensor
    max_val: torch.Tensor

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = int(bits)
        self.observing = False
        self.tracking = False  # set by the first training batch after a (re)calibration
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    def reset(self) -> None:
        self.tracking = False
        self.min_val.fill_(float("inf"))
        self.max_val.fill_(float("-inf"))

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point) of the calibrated range, which always includes 0."""
        qmax = 2**self.bits - 1
        lo = torch.clamp(self.min_val, max=0.0)
        hi = torch.clamp(self.max_val, min=0.0)
        scale = ((hi - lo) / qmax).clamp_min(1e-8)
        return scale, torch.round(-lo / scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.min_val.copy_(torch.minimum(self.min_val, x.detach().min()))
            self.max_val.copy_(torch.maximum(self.max_val, x.detach().max()))
            return x
        if self.bits >= 32:
            return x
        # Under autocast (mixed-precision recovery on a GPU) x is bfloat16 or float16: ranges
        # and rounding stay float32 (lerp_ takes one dtype; 8-bit levels need the precision).
        xf = x.float()
        if self.training:
            lo, hi = xf.detach().min(), xf.detach().max()
            if not self.tracking:
                self.min_val.copy_(lo)
                self.max_val.copy_(hi)
                self.tracking = True
            else:
                self.min_val.lerp_(lo, self.EMA)
                self.max_val.lerp_(hi, self.EMA)
        elif not bool(torch.isfinite(self.min_val)):
            return x
        scale, zero = self.qparams()
        q = (torch.clamp(torch.round(xf / scale) + zero, 0, 2**self.bits - 1) - zero) * scale
        return (xf + (q - xf).detach()).to(x.dtype)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    # A module-level function (not a closure), so deepcopy and pickling keep it pointing at the
    # copied module's own quantizer.
    return (getattr(module, INPUT_QUANT)(args[0]), *args[1:])


def attach_weight_quant(layer: nn.Module, bits: int) -> None:
    if bits < 32:
        parametrize.register_parametrization(layer, "weight", WeightFakeQuant(bits))


def attach_activation_quant(layer: nn.Module, bits: int) -> None:
    if bits < 32 and not hasattr(layer, INPUT_QUANT):
        layer.add_module(INPUT_QUANT, ActivationFakeQuant(bits))
        layer.register_forward_pre_hook(_quantize_input)


def activation_quantizers(model: nn.Module) -> list[ActivationFakeQuant]:
    return [m for m in model.modules() if isinstance(m, ActivationFakeQuant)]


def calibrate(model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 128) -> None:
    """(Re)set every activation quantizer's range to the min/max seen on `inputs`.

    Runs in eval mode (BatchNorm statistics untouched) and restores the training flag. Grad
    stays enabled: nn.TransformerEncoderLayer takes a fused path under no_grad that never calls
    its Linear children, and their quantizers would then never see data.
    """
    quants = activation_quantizers(model)
    if not quants:
        return
    was_training = model.training
    model.eval()
    for q in quants:
        q.reset()
        q.observing = True
    try:
        with torch.enable_grad():
            for start in range(0, len(inputs), batch_size):
                model(inputs[start : start + batch_size])
    finally:
        for q in quants:
            q.observing = False
        model.train(was_training)


@register_handler(QuantizeConfig)
def quantize(model: nn.Module, cfg: QuantizeConfig, ctx: Context) -> nn.Module:
    """Attach weight fake quant (per plan layer) and activation fake quant (all layers)."""
    for name, layer in layer_modules(model):
        bits = cfg.bits(ctx.key(name))
        attach_weight_quant(layer, bits)
        ctx.layer_bits[name] = bits
        attach_activation_quant(layer, cfg.activation_bits)
    ctx.activation_bits = cfg.activation_bits
    if ctx.calibrate:
        calibrate(model, ctx.calib_inputs)
    return model

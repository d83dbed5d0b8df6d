"""ONNX export: fp32 with the fake quant folded in, or int8 QDQ through ONNX Runtime.

The int8 path quantizes, per output channel, exactly the Conv/Gemm/MatMul nodes of the layers
the plan put at 8 bits (ONNX Runtime's static QDQ quantization, min/max calibrated on the given
inputs); every other layer stays fp32 (with its own fake-quant rounding already folded into its
weights) through `nodes_to_exclude`.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._layers import layer_modules
from ._quantization import INPUT_QUANT, WeightFakeQuant, _quantize_input

_LAYER_OPS = ("Conv", "Gemm", "MatMul")


def weight_bits(model: nn.Module) -> dict[str, int]:
    """Module name -> weight bits of every Conv2d/Linear (32 where no fake quant is attached)."""
    out = {}
    for name, layer in layer_modules(model):
        chain = getattr(getattr(layer, "parametrizations", None), "weight", [])
        bits = [p.bits for p in chain if isinstance(p, WeightFakeQuant)]
        out[name] = bits[0] if bits else 32
    return out


@torch.no_grad()
def _bake(layer: Any) -> None:
    """Replace a parametrized weight by its current value, in place.

    Not `parametrize.remove_parametrizations`: a deepcopy shares its Parametrized* class with
    the original, and removing deletes the weight property from that shared class, which
    would break the original model.
    """
    weight = layer.weight.detach().clone()
    layer.__class__ = type(layer).__bases__[0]
    del layer._modules["parametrizations"]
    layer.weight = nn.Parameter(weight)


def folded(model: nn.Module) -> nn.Module:
    """A plain fp32 copy: parametrized weights baked in, activation fake quant removed."""
    model = copy.deepcopy(model).cpu().eval()
    for _, layer in layer_modules(model):
        if parametrize.is_parametrized(layer, "weight"):
            _bake(layer)
        if hasattr(layer, INPUT_QUANT):
            for key, hook in list(layer._forward_pre_hooks.items()):
                if hook is _quantize_input:
                    del layer._forward_pre_hooks[key]
            delattr(layer, INPUT_QUANT)
    return model


def _scope_name(module: str) -> str:
    """The name the TorchScript exporter gives module `module` in node scopes: its dotted name
    from the last non-numeric atom on ("features.1.conv.0.0" -> "conv.0.0", "layer2.0" ->
    "layer2.0", "0.1" -> "0.1"), as torch.onnx's `_unqualified_variable_name` computes it."""
    atoms = module.split(".")
    for i in range(len(atoms) - 1, -1, -1):
        if not atoms[i].isnumeric():
            return ".".join(atoms[i:])
    return module


def _module_of(node_name: str, modules: Iterable[str]) -> str | None:
    """The module an exported node belongs to, from its scope path.

    The TorchScript exporter names a node "/s1/s2/.../Op", one segment per module whose forward
    was running, each segment that module's `_scope_name`: neither its full name nor its name
    in its parent ("/features/features.1/conv/conv.0/conv.0.0/Conv" is features.1.conv.0.0). So
    each segment is resolved as the nearest module below the one before whose scope name it
    is. Matching the segments as full or parent-relative names instead missed every layer two
    Sequentials deep (ResNet's downsample.0, MobileNetV2's conv.0.0), which then stayed fp32.
    The weight initializers are no better a key: BatchNorm folding renames them
    ("onnx::Conv_538"). None when the path does not resolve to exactly one module.
    """
    parts = node_name.split("/")
    if not node_name.startswith("/") or len(parts) < 3:
        return None
    by_scope: dict[str, list[str]] = {}
    for name in modules:
        if name:
            by_scope.setdefault(_scope_name(name), []).append(name)
    path = ""
    for segment in parts[1:-1]:
        below = [n for n in by_scope.get(segment, []) if not path or n.startswith(path + ".")]
        if not below:
            return None
        depth = min(n.count(".") for n in below)
        nearest = [n for n in below if n.count(".") == depth]
        if len(nearest) > 1:
            return None
        path = nearest[0]
    return path


def output_names(out: Any, prefix: str = "") -> list[str]:
    """ONNX names of a model output's tensors, in the exporter's order: "logits" for a tensor,
    a dict's keys, a list's positions (nested: "aux.0")."""
    if isinstance(out, torch.Tensor):
        return [prefix or "logits"]
    items = out.items() if isinstance(out, dict) else enumerate(out)
    return [n for k, v in items for n in output_names(v, f"{prefix}.{k}" if prefix else str(k))]


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    input_shape: tuple[int, ...],
    int8: bool = False,
    calib_inputs: torch.Tensor | None = None,
    symmetric: bool = False,
) -> Path:
    """Write `model` as ONNX and return the path.

    Args:
        model: a (possibly compressed) network; not modified.
        path: the .onnx file to write.
        input_shape: one sample's shape; the batch dimension is dynamic.
        int8: quantize the layers at 8 bits to int8 QDQ (needs `calib_inputs`).
        calib_inputs: a few batches of inputs for ONNX Runtime's activation calibration.
        symmetric: int8 activations with zero point 0, as TensorRT requires (its QDQ import
            refuses uint8); otherwise uint8 activations, ONNX Runtime's faster CPU path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bits = weight_bits(model)
    plain = folded(model)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx" if int8 else path
        x = torch.zeros(1, *input_shape)
        with torch.no_grad():
            names = output_names(plain(x))  # a segmentation model's {"out", "aux"}: both
        with warnings.catch_warnings():
            # the TorchScript exporter is deprecated in favour of dynamo, which fails on
            # adaptive pooling at sizes that do not divide (LIBRARY_NOTES)
            warnings.simplefilter("ignore")
            torch.onnx.export(
                plain,
                (x,),
                str(fp32),
                dynamo=False,
                input_names=["input"],
                output_names=names,
                dynamic_axes={n: {0: "batch"} for n in ["input", *names]},
            )
        if int8:
            if calib_inputs is None:
                raise ValueError("int8 export needs calib_inputs")
            modules = [name for name, _ in plain.named_modules()]
            _quantize_int8(fp32, path, bits, modules, calib_inputs, Path(tmp), symmetric=symmetric)
    return path


def saturating_cpu() -> bool:
    """Whether ONNX Runtime's uint8 x int8 kernels saturate on this CPU: x86 with AVX2 but no
    VNNI sums pairs of products in int16 (VPMADDUBSW), which overflows for full-range weights,
    so weights are quantized to 7 bits there (ONNX Runtime's `reduce_range`)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx2" in flags and not {"avx512_vnni", "avx_vnni"} & set(flags)


def int8_weight_bits(*, symmetric: bool) -> int:
    """Bits of the int8 weight range this machine's export uses: 7 where ONNX Runtime's
    uint8 x int8 kernels would saturate (`saturating_cpu`), else 8."""
    return 7 if not symmetric and saturating_cpu() else 8


def _quantize_int8(
    fp32: Path,
    out: Path,
    bits: dict[str, int],
    modules: list[str],
    calib_inputs: torch.Tensor,
    tmp: Path,
    *,
    symmetric: bool = False,
) -> None:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    pre = tmp / "pre.onnx"
    try:
        quant_pre_process(str(fp32), str(pre))
    except Exception:  # noqa: BLE001 - symbolic shape inference fails on some graphs
        try:
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - quantize the exported graph as it is
            pre = fp32
    graph = onnx.load(str(pre)).graph
    nodes = [n for n in graph.node if n.op_type in _LAYER_OPS]
    keep = [n.name for n in nodes if bits.get(_module_of(n.name, modules) or "", 32) == 8]
    exclude = [n.name for n in nodes if n.name not in keep]
    if not keep:  # nothing at 8 bits: the fp32 model is the answer
        out.write_bytes(fp32.read_bytes())
        return

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            batches = calib_inputs.detach().cpu().float().split(32)
            self.it = iter([{"input": b.numpy()} for b in batches])

        def get_next(self):
            return next(self.it, None)

    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(_LAYER_OPS),
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
        nodes_to_exclude=exclude,
        reduce_range=int8_weight_bits(symmetric=symmetric) == 7,
        extra_options={"ActivationSymmetric": True} if symmetric else None,
    )

"""Quantization: fake-quant weights and calibrated activations, and the ONNX export that folds
them (fp32) or lowers them to int8 QDQ (ONNX Runtime, TensorRT), on the operator suite's tiny
networks (tests/_operator_nets.py).
"""

from __future__ import annotations

import pytest
import torch

from search.compress import calibrate, compressible_layers, export_onnx
from search.compress._quantization import fake_quant_weight
from spaces import CompressionPlan, LowRankConfig, PruneConfig, QuantizeConfig
from tests._operator_nets import ResConcatNet, _compress, _setup

torch.set_num_threads(1)


# --- quantization ------------------------------------------------------------------------------
def test_fake_quant_error_shrinks_with_bits_and_passes_gradients() -> None:
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3)
    errors = [(fake_quant_weight(w, b) - w).norm().item() for b in (2, 4, 8, 16)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-3 * w.norm()
    assert torch.equal(fake_quant_weight(w, 32), w)
    for b in (2, 4, 8):  # at most 2^b - 1 levels per output channel
        assert all(len(row.unique()) <= 2**b - 1 for row in fake_quant_weight(w, b).flatten(1))
    w.requires_grad_(True)
    (fake_quant_weight(w, 4) * torch.arange(w.numel()).view_as(w)).sum().backward()
    torch.testing.assert_close(w.grad, torch.arange(w.numel()).view_as(w).float())


def test_activation_quant_is_calibrated_and_error_shrinks_with_bits() -> None:
    base, x, y = _setup("cnn")
    ref = base(x)
    errs = {}
    for bits in (8, 16):
        out = _compress(CompressionPlan(quantize=QuantizeConfig(activation_bits=bits)), base, x, y)
        q = out.model.conv2.input_quant
        assert q.min_val <= q.max_val and torch.isfinite(q.min_val)
        errs[bits] = (out.model(x) - ref).norm().item()
        assert errs[bits] > 0
    assert errs[16] < errs[8]
    calibrate(out.model, x * 10)  # recalibration widens the range
    assert out.model.conv1.input_quant.max_val > x.max() * 5


def test_quantized_layers_stay_fx_leaves() -> None:
    base, x, y = _setup("cnn")
    out = _compress(
        CompressionPlan(quantize=QuantizeConfig(default_weight_bits=4, activation_bits=8)),
        base,
        x,
        y,
    )
    graph = torch.fx.symbolic_trace(out.model).graph
    called = [n.target for n in graph.nodes if n.op == "call_module"]
    assert {"conv1", "conv2", "conv3", "fc"} <= set(called)
    assert not any("parametrizations" in str(t) or "input_quant" in str(t) for t in called)


# --- ONNX export -------------------------------------------------------------------------------
def _ort(path, x):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def test_fp32_export_folds_the_fake_quant(tmp_path) -> None:
    base, x, y = _setup("resconcat")
    plan = CompressionPlan(
        lowrank=LowRankConfig(ranks={"mix": 0.5}),
        prune=PruneConfig(sparsity=0.5),
        quantize=QuantizeConfig(default_weight_bits=4),
    )
    out = _compress(plan, base, x, y)
    path = export_onnx(out.model, tmp_path / "m.onnx", input_shape=ResConcatNet.input_shape)
    with torch.no_grad():
        ref = out.model(x)
    torch.testing.assert_close(_ort(path, x), ref, rtol=1e-4, atol=1e-4)
    # exporting must not touch the model it was given
    assert out.model.mix[0].parametrizations.weight.original.requires_grad
    torch.testing.assert_close(out.model(x), ref)


@pytest.mark.parametrize("net", ["cnn", "resconcat", "transformer"])
def test_int8_export_runs_in_onnxruntime_and_agrees(net: str, tmp_path) -> None:
    import onnx

    base, x, y = _setup(net)
    layers = compressible_layers(base)
    last = layers[-1].name
    plan = CompressionPlan(
        quantize=QuantizeConfig(weight_bits={last: 4}, default_weight_bits=8, activation_bits=8)
    )
    out = _compress(plan, base, x, y)
    path = export_onnx(
        out.model, tmp_path / "q.onnx", input_shape=type(base).input_shape, int8=True,
        calib_inputs=x,
    )  # fmt: skip
    with torch.no_grad():
        ref = out.model(x)
    got = _ort(path, x)
    assert got.shape == ref.shape
    assert (got - ref).norm() / ref.norm() < 0.05
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.9
    graph = onnx.load(str(path)).graph
    int8_weights = {
        i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and i.dims
    }
    quantized = [
        n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int8_weights
    ]
    assert 1 <= len(quantized) < len(layers)  # the 4-bit logits layer stays fp32


def test_int8_export_for_tensorrt_has_symmetric_int8_activations(tmp_path) -> None:
    """TensorRT's QDQ import takes int8 activations with zero point 0, never uint8."""
    import onnx
    from onnx import numpy_helper

    base, x, y = _setup("cnn")
    plan = CompressionPlan(quantize=QuantizeConfig(default_weight_bits=8, activation_bits=8))
    out = _compress(plan, base, x, y)
    shape = type(base).input_shape
    sym = export_onnx(out.model, tmp_path / "s.onnx", input_shape=shape, int8=True,
                      calib_inputs=x, symmetric=True)  # fmt: skip
    plain = export_onnx(out.model, tmp_path / "p.onnx", input_shape=shape, int8=True,
                        calib_inputs=x)  # fmt: skip

    def zero_points(path) -> list:
        graph = onnx.load(str(path)).graph
        init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        return [init[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]

    sym_zps, plain_zps = zero_points(sym), zero_points(plain)
    assert sym_zps and all(z.dtype.name == "int8" and not z.any() for z in sym_zps)
    assert any(z.dtype.name == "uint8" for z in plain_zps)  # ONNX Runtime's CPU default
    got, ref = _ort(sym, x), out.model(x).detach()
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.9

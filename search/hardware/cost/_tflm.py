"""TFLite Micro's memory, predicted from the graph: arena head, arena tail, flatbuffer size.

The arena a board reserves for the TFLM interpreter has a *head*, where its greedy memory
planner places the activation buffers (largest first, each at the lowest offset free for its
lifetime, 16-byte aligned), and a *tail* of persistent data: a 24-byte struct per tensor, a
64-byte node per operator, and each operator's data (for a conv or fully-connected layer two
int32 words per output channel: the per-channel requantization multipliers and shifts).

The constants were read from `print_allocations()` of the TFLM Python interpreter
(tflite-micro 0.dev20261023, reference kernels) on single-operator models converted by
litert-torch 0.10; the ones marked "fitted" below were then adjusted to whole converted
networks. `experiments/benchmarks/_device_memory.py` checks the whole prediction against TFLM
on those networks (its "in-sample" set) and, separately, on a held-out set fitted on nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

ALIGN = 16  # TFLM's arena buffer alignment
EVAL_TENSOR_BYTES = 24  # TfLiteEvalTensor
NODE_BYTES = 64  # NodeAndRegistration
# Fit set of the constants marked "fitted" in this module, inferred (commits bcf8428 and c019727
# do not list it): the 12 int8 networks of the memory benchmark committed minutes later
# (dd81c33; resnet8, ds_cnn, mobilenet_v1_025, fc_autoencoder,
# st_mobilenet_v2_035_128, digits int8 / pruned 50 % / low-rank 0.5 + pruned 25 % /
# MobileNetV2 students x0.5 and x1.0 d2 / ShuffleNetV2 student x0.5 at seed 0, the UserNet at
# width 16) and the two _Branchy models of tests/test_tflite.py: 14 converted models. They are
# the benchmark's in-sample rows; its held-out rows were never used to set any constant.
# Fixed tail: the input/output TfLiteTensors (2 x 64), their quantization data (64), the
# interpreter's own graph and allocation records (not derived from those parts alone: treat
# it as set on the fit set too).
TAIL_BASE_BYTES = 800
TAIL_PER_TENSOR_BYTES = 8  # allocation records besides the eval tensor (fitted)
# Operator data in the persistent tail, per op kind (bytes), plus 8 per output channel for
# convs and fully-connected layers (read from single-op models, then checked on the fit set).
OP_DATA_BYTES = {
    "conv": 80,
    "dwconv": 80,
    "linear": 72,
    "add": 60,
    "mean": 44,
    "concat": 80,
    "pool": 32,
    "pad": 56,
    "softmax": 112,
    "quantize": 32,
    "transpose": 0,
    "reshape": 0,
    "other": 32,
}
PER_CHANNEL_OP_BYTES = 8
# Constant tensors an op brings (weights + bias; a PAD's paddings, a MEAN's axes, a
# TRANSPOSE's permutation, a RESHAPE's shape).
CONST_TENSORS = {"conv": 2, "dwconv": 2, "linear": 2, "pad": 1, "mean": 1, "transpose": 1}
RESHAPE_CONSTS = 1


def full_integer(layer_bits: Iterable[int], activation_bits: int) -> bool:
    """Whether `export --format tflite` writes full-integer int8 (else float32, which TFLM
    runs on its float kernels): every layer's weights and the activations at 8 bits."""
    bits = list(layer_bits)
    return bool(bits) and activation_bits == 8 and all(b == 8 for b in bits)


def greedy_plan(buffers: Sequence[tuple[int, int, int]]) -> int:
    """Arena head TFLM's GreedyMemoryPlanner needs for (bytes, first op, last op) buffers.

    Largest buffer first (among equal sizes the later one); each goes at the lowest offset
    where it overlaps no buffer already placed both in address and in lifetime.
    """
    order = sorted(
        ((math.ceil(b / ALIGN) * ALIGN, s, e) for b, s, e in buffers if b > 0),
        key=lambda x: (-x[0], -x[1]),  # TFLM's sort: size, then first use, both descending
    )
    placed: list[tuple[int, int, int, int]] = []  # offset, size, first, last
    head = 0
    for size, first, last in order:
        live = sorted((o, sz) for o, sz, s, e in placed if not (e < first or last < s))
        offset = 0
        for o, sz in live:
            if o - offset >= size:
                break
            offset = max(offset, o + sz)
        placed.append((offset, size, first, last))
        head = max(head, offset + size)
    return head


def arena_tail(ops: Sequence[tuple[str, int]], buffers: int) -> int:
    """Persistent arena bytes for operators (kind, output channels) and activation buffers."""
    consts = sum(CONST_TENSORS.get(k, 0) + (k == "reshape") * RESHAPE_CONSTS for k, _ in ops)
    tensors = buffers + consts
    op_data = sum(
        OP_DATA_BYTES.get(k, OP_DATA_BYTES["other"])
        + (PER_CHANNEL_OP_BYTES * c if k in ("conv", "dwconv", "linear") else 0)
        for k, c in ops
    )
    return (
        TAIL_BASE_BYTES
        + (EVAL_TENSOR_BYTES + TAIL_PER_TENSOR_BYTES) * tensors
        + NODE_BYTES * len(ops)
        + op_data
    )


# The flatbuffer (names stripped, as `search.export._tflite` writes it), fitted on the 14 converted
# models of the fit set above to within 160 bytes: per tensor and per operator table entries,
# and a fixed part (model, subgraph, signature, operator codes, metadata).
FB_TENSOR_BYTES = 78
FB_OP_BYTES = 63
FB_FIXED_BYTES = 483
FB_QPARAM_BYTES = 12  # one float32 scale + one int64 zero point per channel or tensor
# Small constant tensors the converter adds (bytes): PAD paddings, TRANSPOSE permutation,
# MEAN axes, RESHAPE shape.
FB_CONST_BYTES = {"pad": 32, "transpose": 16, "mean": 8, "reshape": 8}


def flatbuffer_overhead(ops: Sequence[tuple[str, int]], buffers: int, *, int8: bool) -> int:
    """Bytes of a `.tflite` beyond the weights and int32 biases the cost model counts.

    In a full-integer model each conv/linear layer carries a scale and zero point per output
    channel for its weights and again for its bias (the cost model already counts one float32
    scale per channel), and every activation tensor one pair.
    """
    consts = sum(CONST_TENSORS.get(k, 0) + (k == "reshape") * RESHAPE_CONSTS for k, _ in ops)
    layers = [c for k, c in ops if k in ("conv", "dwconv", "linear")]
    qparams = (2 * FB_QPARAM_BYTES - 4) * sum(layers) + FB_QPARAM_BYTES * buffers if int8 else 0
    return (
        qparams
        + sum(FB_CONST_BYTES.get(k, 0) for k, _ in ops)
        + FB_TENSOR_BYTES * (buffers + consts)
        + FB_OP_BYTES * len(ops)
        + FB_FIXED_BYTES
    )

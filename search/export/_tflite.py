"""Export for a microcontroller: an int8 `.tflite` flatbuffer, its C array, and a TFLM check.

`convert` turns a compressed PyTorch model (fake quant folded away) into a `.tflite` through
litert-torch: full-integer int8 with its PT2E quantizer (per-channel symmetric weights, ranges
calibrated on training rows) when `int8`, else float32, which TFLite Micro runs on its float
reference kernels. `write_c_array` writes `model_data.cc`/`.h`, the flatbuffer as the aligned C
array a firmware links. `TflmModel` runs a `.tflite` in the TFLite Micro Python interpreter
(reference kernels, the board's memory planner) like a torch module, and reports the arena
that interpreter allocated (`print_allocations()`). `LiteRtModel` runs the same file in LiteRT
with XNNPACK, as a phone app would, and times it here.

Needs the optional extra `pip install -e ".[tflite]"` (litert-torch, tflite-micro); both are
imported only inside the functions that use them. A model the converter or TFLite Micro cannot
run is a ConfigError naming the operator.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files import atomic_write

__all__ = [
    "Arena",
    "LiteRtModel",
    "TflmModel",
    "convert",
    "missing_extra",
    "operators",
    "write_c_array",
]

# Of the calibration rows it is given (pipeline.CALIBRATION_ROWS), PT2E's observers see this
# many: the exported graph is batch 1, so each row is one forward pass; a cap, not a second
# calibration set size.
PT2E_OBSERVER_ROWS = 128
C_ALIGN = 16  # TFLM wants the flatbuffer 16-byte aligned (its tensors are read in place)
_EXTRA_HINT = (
    'install the optional extra: pip install "compression-search[tflite]" '
    '(in a checkout: pip install -e ".[tflite]")'
)


def missing_extra() -> str | None:
    """Why the tflite path cannot run here (a missing package), or None when it can."""
    import importlib.util

    for module, package in (("litert_torch", "litert-torch"), ("tflite_micro", "tflite-micro")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed; {_EXTRA_HINT}"
    return None


@contextlib.contextmanager
def _captured_fds() -> Iterator[list[str]]:
    """Capture what C++ code prints on the process's fds 1 and 2 (not Python's sys.stdout).

    TFLM's `print_allocations()` and its op-resolution errors, and the converter's progress
    lines, are written by native code straight to the file descriptors.
    """
    out: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as tmp:
        try:
            os.dup2(tmp.fileno(), 1)
            os.dup2(tmp.fileno(), 2)
            yield out
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


def _require(where: str) -> None:
    why = missing_extra()
    if why:
        raise ConfigError(where, "--format", f"tflite needs litert-torch and tflite-micro: {why}")


def _first_operator(text: str) -> str | None:
    """The operator a converter or TFLM message names (aten op, TFLite builtin), if any."""
    for pattern in (
        r"builtin opcode '([A-Z0-9_]+)'",
        r"op code ([A-Z0-9_]+)",
        r"(aten\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)",
        r"'(tfl\.[a-z0-9_]+)'",
        r"op '([A-Za-z0-9_.]+)'",
    ):
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    return None


def _one_line(text: str, limit: int = 200) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return (lines[0] if lines else "")[:limit]


# --- conversion -------------------------------------------------------------------------------
def convert(
    model: Any,
    path: str | Path,
    *,
    input_shape: tuple[int, ...],
    calib_inputs: Any = None,
    int8: bool = True,
    where: str = "<model>",
) -> Path:
    """Write `model` as a `.tflite` at `path` (written whole or not at all).

    Args:
        model: the compressed network (fake quant and parametrizations are folded first).
        path: the `.tflite` to write.
        input_shape: one sample's shape without the batch; the flatbuffer takes batch 1.
        calib_inputs: training rows for the int8 activation ranges (required with `int8`).
        int8: full-integer int8 (weights per channel, activations per tensor), else float32.
        where: names the model in an error message.

    Raises:
        ConfigError: the extra is missing, or the converter cannot lower an operator.
    """
    _require(where)
    if int8 and calib_inputs is None:
        raise ValueError("int8 conversion needs calib_inputs (training rows)")
    import torch

    from ..compress import folded

    plain = folded(model).eval()
    example = (torch.zeros((1, *input_shape)),)
    path = Path(path)

    def write(tmp: Path) -> None:
        edge = _convert(plain, example, calib_inputs if int8 else None)
        edge.export(str(tmp))
        _strip_names(tmp)

    log: list[str] = []
    try:
        with _captured_fds() as log, torch.no_grad():
            atomic_write(path, write)
    except Exception as exc:  # noqa: BLE001 - any converter failure becomes one error line
        text = f"{exc}\n{''.join(log)}"
        op = _first_operator(text)
        what = f"operator {op}" if op else f"{type(exc).__name__}: {_one_line(str(exc))}"
        raise ConfigError(
            where,
            "tflite",
            f"litert-torch cannot convert this model ({what}); "
            "replace that operator or export ONNX (the default)",
        ) from None
    return path


def _convert(model: Any, example: tuple[Any, ...], calib_inputs: Any) -> Any:
    import litert_torch
    import torch

    if calib_inputs is None:
        return litert_torch.convert(model, example)
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    )
    graph = torch.export.export(model, example).module()
    prepared = prepare_pt2e(graph, quantizer)
    rows = calib_inputs[:PT2E_OBSERVER_ROWS]
    for i in range(len(rows)):  # the exported graph is batch 1
        prepared(rows[i : i + 1].float())
    quantized = convert_pt2e(prepared, fold_quantize=False)
    return litert_torch.convert(
        quantized, example, quant_config=QuantConfig(pt2e_quantizer=quantizer)
    )


def _strip_names(path: Path) -> None:
    """Drop the tensor names (long module paths, several % of a small model's flash) in place.

    TFLM never reads them; the flatbuffer is re-packed and then re-aligned by TFLM's own tool
    (the Python packer does not align buffers). Inputs and outputs keep their signature names.
    """
    import flatbuffers
    from tflite_micro.python.tflite_micro import runtime
    from tflite_micro.tensorflow.lite.micro.tools import (
        tflite_flatbuffer_align_wrapper as align,
    )

    model = runtime.convert_bytearray_to_object(bytearray(path.read_bytes()))
    for graph in model.subgraphs:
        for tensor in graph.tensors:
            tensor.name = None
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    packed = path.with_name(path.name + ".packed")
    packed.write_bytes(builder.Output())
    try:
        align.align_tflite_model(str(packed), str(path))
    finally:
        packed.unlink(missing_ok=True)


def operators(path: str | Path) -> list[str]:
    """The TFLite builtin operator of every node, in execution order."""
    from tflite_micro.python.tflite_micro import runtime
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    model = runtime.convert_bytearray_to_object(bytearray(Path(path).read_bytes()))
    codes = [runtime.get_builtin_code_from_operator_code(c) for c in model.operatorCodes]
    return [names.get(codes[op.opcodeIndex], "?") for op in model.subgraphs[0].operators or []]


def write_c_array(tflite: str | Path, folder: str | Path, name: str = "g_model_data") -> int:
    """Write `model_data.cc`/`model_data.h` in `folder`: the flatbuffer as an aligned C array.

    Returns the array's length (the `.tflite` size in bytes).
    """
    data = Path(tflite).read_bytes()
    folder = Path(folder)
    header = (
        "// The int8 TFLite flatbuffer as a C array (made by compression-search).\n"
        "#ifndef MODEL_DATA_H_\n#define MODEL_DATA_H_\n\n"
        f"extern const unsigned char {name}[];\n"
        f"extern const unsigned int {name}_len;\n\n#endif  // MODEL_DATA_H_\n"
    )
    rows = [
        "  " + ", ".join(f"0x{b:02x}" for b in data[i : i + 12]) + ","
        for i in range(0, len(data), 12)
    ]
    source = (
        '#include "model_data.h"\n\n'
        f"// TFLite Micro reads tensors in place: keep the buffer {C_ALIGN}-byte aligned.\n"
        f"alignas({C_ALIGN}) const unsigned char {name}[] = {{\n"
        + "\n".join(rows)
        + f"\n}};\nconst unsigned int {name}_len = {len(data)};\n"
    )
    (folder / "model_data.h").write_text(header)
    (folder / "model_data.cc").write_text(source)
    return len(data)


# --- running a .tflite -----------------------------------------------------------------------
@dataclass(frozen=True)
class Arena:
    """TFLM's tensor arena after `invoke()`: head = planned activations, tail = persistent."""

    total: int
    head: int
    tail: int

    def as_dict(self) -> dict[str, int]:
        return {"total": self.total, "head": self.head, "tail": self.tail}


def _qparams(details: dict[str, Any]) -> tuple[float, int] | None:
    """(scale, zero point) of a quantized input/output tensor, None for a float one."""
    q = details.get("quantization_parameters") or {}
    scales = q.get("scales")
    if scales is None or len(scales) == 0:
        return None
    return float(scales[0]), int(q["zero_points"][0])


class _Runner:
    """A `.tflite` interpreter, callable like a torch module on a batch.

    The flatbuffer is batch 1, so rows run one at a time; inputs are quantized with the input
    tensor's scale and zero point and outputs dequantized, so `Task.evaluate` can score it.
    Subclasses set `input`/`output` (the interpreter's tensor details) and `_invoke`.
    """

    input: dict[str, Any]
    output: dict[str, Any]

    def _invoke(self, x: Any) -> Any:
        """Run one sample already in the input tensor's dtype; the raw output array."""
        raise NotImplementedError

    def to(self, *_: Any, **__: Any) -> _Runner:
        return self

    def eval(self) -> _Runner:
        return self

    def run_one(self, x: Any) -> Any:
        """One sample (numpy, the model's input shape with batch 1) -> float numpy output."""
        import numpy as np

        dtype = self.input["dtype"]
        q = _qparams(self.input)
        if q is not None and np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / q[0]) + q[1], info.min, info.max)
        y = np.array(self._invoke(np.ascontiguousarray(x).astype(dtype)))
        qo = _qparams(self.output)
        if qo is not None and np.issubdtype(y.dtype, np.integer):
            return (y.astype(np.float32) - qo[1]) * qo[0]
        return y.astype(np.float32)

    def __call__(self, x: Any) -> Any:
        import numpy as np
        import torch

        rows = x.detach().cpu().float().numpy()
        out = [self.run_one(rows[i : i + 1]) for i in range(len(rows))]
        return torch.from_numpy(np.concatenate(out, axis=0))


class TflmModel(_Runner):
    """A `.tflite` in the TFLite Micro interpreter (reference kernels, the board's planner)."""

    def __init__(self, path: str | Path, *, where: str = "<model>") -> None:
        _require(where)
        from tflite_micro.python.tflite_micro import runtime

        self.path = Path(path)
        log: list[str] = []
        try:
            with _captured_fds() as log:
                self.interp = runtime.Interpreter.from_file(str(self.path))
        except Exception as exc:  # noqa: BLE001 - an op TFLM lacks fails here
            text = f"{''.join(log)}\n{exc}"
            op = _first_operator(text)
            what = (
                f"it has no kernel for operator {op}"
                if op
                else f"{type(exc).__name__}: {_one_line(text)}"
            )
            raise ConfigError(
                where,
                "tflite",
                f"TFLite Micro cannot run the converted model ({what}); "
                "replace that operator or export ONNX (the default)",
            ) from None
        self.input = self.interp.get_input_details(0)
        self.output = self.interp.get_output_details(0)
        self.invoked = False

    def _invoke(self, x: Any) -> Any:
        self.interp.set_input(x, 0)
        self.interp.invoke()
        self.invoked = True
        return self.interp.get_output(0)

    def arena(self) -> Arena:
        """The arena TFLM allocated (run once first, so every lazy buffer is counted)."""
        if not self.invoked:
            import numpy as np

            self.run_one(np.zeros(tuple(int(d) for d in self.input["shape"]), np.float32))
        with _captured_fds() as log:
            self.interp.print_allocations()
        text = "".join(log)
        found = {
            key: int(m.group(1))
            for key in ("total", "head", "tail")
            if (m := re.search(rf"Arena allocation {key} (\d+) bytes", text))
        }
        if len(found) != 3:
            raise RuntimeError(f"unexpected print_allocations() output: {_one_line(text)}")
        return Arena(**found)


class LiteRtModel(_Runner):
    """The same `.tflite` in LiteRT (`ai-edge-litert`, XNNPACK delegate), as a phone runs it.

    LiteRT comes with litert-torch (the `[tflite]` extra). Its XNNPACK kernels round int8
    slightly differently from TFLM's reference kernels; outputs agree within a few steps.
    """

    def __init__(self, path: str | Path, *, threads: int = 1, where: str = "<model>") -> None:
        _require(where)
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        self.threads = threads
        with _captured_fds():  # "Created TensorFlow Lite XNNPACK delegate for CPU."
            self.litert = Interpreter(model_path=str(self.path), num_threads=threads)
            self.litert.allocate_tensors()
        self.input = self.litert.get_input_details()[0]
        self.output = self.litert.get_output_details()[0]

    def _invoke(self, x: Any) -> Any:
        self.litert.set_tensor(self.input["index"], x)
        self.litert.invoke()
        return self.litert.get_tensor(self.output["index"])

    def latency_ms(self) -> float:
        """Median batch-1 latency of `invoke()` on this machine, in ms.

        Timed as every host measurement of the project is (`hardware.time_callable`:
        noisy attempts rejected; with one thread, that thread's CPU time).
        """
        import numpy as np

        from ..hardware import time_callable

        x = np.zeros(tuple(int(d) for d in self.input["shape"]), self.input["dtype"])
        self.litert.set_tensor(self.input["index"], x)
        clock = "cpu" if self.threads == 1 else "wall"
        return time_callable(self.litert.invoke, clock=clock).median_ms

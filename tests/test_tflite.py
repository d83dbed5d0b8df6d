"""The microcontroller path: int8 .tflite through litert-torch, run in TFLite Micro.

Real converter, real TFLM interpreter, tiny models. Skipped (with the reason) only where the
optional extra `.[tflite]` is not installed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from search.export._tflite import missing_extra

needs_extra = pytest.mark.skipif(
    missing_extra() is not None, reason=f"optional extra absent: {missing_extra()}"
)


def test_greedy_planner_places_as_tflm_does() -> None:
    from search.hardware.cost import greedy_plan

    # Three 16-byte buffers alive together need 48; a fourth alive later reuses offset 0.
    assert greedy_plan([(16, 0, 1), (16, 1, 2), (16, 1, 3), (16, 3, 4)]) == 48
    # Sizes round up to 16 bytes; buffers that never overlap in time share the arena.
    assert greedy_plan([(10, 0, 0), (20, 1, 1), (5, 2, 2)]) == 32
    # Largest first: the 32-byte buffer sits at 0; the two 16s never meet, so share 32.
    assert greedy_plan([(16, 0, 1), (32, 1, 2), (16, 2, 3)]) == 48
    # Equal sizes: the later-used one is placed first (TFLM's descending sort; ResNet-8's arena
    # needs it), here 128 where the earlier-first order would find 112.
    assert greedy_plan([(32, 1, 2), (48, 1, 3), (32, 0, 2), (48, 3, 5)]) == 128


class _Branchy(nn.Module):
    """Residual add, concat, depthwise conv, batch norm: what a user network brings."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.mix = nn.Conv2d(16, 8, 1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.stem(x)
        b = a + torch.relu(self.pw(self.dw(a)))
        return self.head(torch.relu(self.mix(torch.cat([a, b], 1))))


@needs_extra
def test_int8_tflite_runs_in_tflm_close_to_pytorch(tmp_path: Path) -> None:
    from search.export._tflite import TflmModel, convert, operators, write_c_array

    torch.manual_seed(0)
    model = _Branchy().eval()
    calib = torch.randn(64, 1, 8, 8)
    path = convert(model, tmp_path / "m.tflite", input_shape=(1, 8, 8), calib_inputs=calib)
    ops = operators(path)
    assert "CONV_2D" in ops and "ADD" in ops and "CONCATENATION" in ops
    tflm = TflmModel(path)
    assert str(tflm.input["dtype"]).endswith("int8'>")  # full-integer: int8 in, int8 out
    x = torch.randn(16, 1, 8, 8)
    got, want = tflm(x), model(x).detach()
    assert got.shape == want.shape
    # int8 rounding: within a few output steps of the float model, same top class mostly.
    assert (got - want).abs().max() < 0.05 * want.abs().max() + 0.02
    assert (got.argmax(1) == want.argmax(1)).float().mean() >= 0.8

    arena = tflm.arena()
    assert arena.total == arena.head + arena.tail and arena.head > 0 and arena.tail > 0

    n = write_c_array(path, tmp_path)
    assert n == path.stat().st_size
    cc = (tmp_path / "model_data.cc").read_text()
    assert "alignas(16)" in cc and f"g_model_data_len = {n};" in cc
    body = cc.split("{", 1)[1].split("}", 1)[0]
    assert bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", body)) == path.read_bytes()
    assert "extern const unsigned int g_model_data_len;" in (tmp_path / "model_data.h").read_text()


@needs_extra
def test_tflm_memory_model_predicts_the_arena_and_the_flatbuffer(tmp_path: Path) -> None:
    from search.export._tflite import TflmModel, convert
    from search.hardware import estimate_cost, load_profile

    torch.manual_seed(0)
    model = _Branchy().eval()
    # A stride-2 stem with padding 1 makes the converter insert a PAD; 16x16 input.
    model.stem[0] = nn.Conv2d(1, 8, 3, 2, 1)
    shape = (1, 16, 16)
    path = convert(
        model, tmp_path / "m.tflite", input_shape=shape, calib_inputs=torch.randn(8, *shape)
    )
    arena = TflmModel(path).arena()
    bits = {n: 8 for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    profile = load_profile("mcu")
    cost = estimate_cost(model, shape, profile, layer_bits=bits, activation_bits=8)
    assert cost.peak_activation_bytes == arena.head
    assert abs(cost.memory_bytes / arena.total - 1) <= 0.10
    flash = path.stat().st_size + profile.runtime_flash_kb * 1024
    assert abs(cost.flash_bytes / flash - 1) <= 0.05
    # The liveness model (TinyEngine-style) does not include the arena's persistent tail.
    live = profile.with_updates(memory_planner="liveness")
    other = estimate_cost(model, shape, live, layer_bits=bits, activation_bits=8)
    assert other.memory_bytes < arena.total - arena.tail // 2


@needs_extra
def test_operator_tflm_lacks_is_one_error_naming_it(tmp_path: Path) -> None:
    from search.errors import ConfigError
    from search.export._tflite import TflmModel, convert

    model = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 2)).eval()
    path = convert(model, tmp_path / "g.tflite", input_shape=(8,), calib_inputs=torch.randn(8, 8))
    with pytest.raises(ConfigError, match="TFLite Micro cannot run.*operator GELU"):
        TflmModel(path)


class _CumProd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumprod(self.fc(x), -1)


@needs_extra
def test_operator_the_converter_lacks_is_one_error_naming_it(tmp_path: Path) -> None:
    from search.errors import ConfigError
    from search.export._tflite import convert

    with pytest.raises(ConfigError, match=r"litert-torch cannot convert.*aten\.cumprod"):
        convert(
            _CumProd().eval(),
            tmp_path / "c.tflite",
            input_shape=(8,),
            calib_inputs=torch.randn(4, 8),
        )
    assert list(tmp_path.iterdir()) == []  # nothing half-written


@needs_extra
def test_float_export_runs_in_tflm(tmp_path: Path) -> None:
    from search.export._tflite import TflmModel, convert

    torch.manual_seed(0)
    model = _Branchy().eval()
    path = convert(model, tmp_path / "f.tflite", input_shape=(1, 8, 8), int8=False)
    x = torch.randn(4, 1, 8, 8)
    assert torch.allclose(TflmModel(path)(x), model(x).detach(), atol=1e-4)


# --- export --format tflite through the command line -------------------------------------------
SPACE = """
name: tiny8
prune:
  mode: [per_layer]
  ratio: {low: 0.0, high: 0.5, step: 0.25}
  importance: [l1]
quantize:
  weight_bits: [8]
  activation_bits: [8]
"""


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory: pytest.TempPathFactory, _shared_cache: Path):
    """A 2-trial digits search on the mcu profile whose plans are all int8."""
    from search.cli import main

    folder = tmp_path_factory.mktemp("tfl")
    mp = pytest.MonkeyPatch()
    mp.chdir(folder)
    (folder / "tiny8.yaml").write_text(SPACE)
    exp = {
        "name": "tiny8",
        "task": "digits",
        "target": "mcu",
        "space": "tiny8.yaml",
        "max_accuracy_drop": 0.5,
        "trials": 2,
        "seed": 0,
        "recovery": {"epochs": 1},
    }
    (folder / "exp.yaml").write_text(yaml.safe_dump(exp))
    assert main(["run", "exp.yaml", "--no-progress"]) == 0
    yield folder / "experiments" / "runs" / "tiny8"
    mp.undo()


@needs_extra
@pytest.mark.slow
def test_cli_export_tflite(int8_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from search.cli import main

    assert main(["export", str(int8_run), "--format", "tflite"]) == 0
    out = capsys.readouterr().out
    assert "TFLite Micro" in out and "arena" in out
    win = int8_run / "winner"
    for name in ("winner.yaml", "model.pt", "model.tflite", "model_data.cc", "model_data.h"):
        assert (win / name).is_file(), name
    assert not (win / "model.onnx").exists()
    w = yaml.safe_load((win / "winner.yaml").read_text())
    m = w["metrics"]
    t = m["tflite"]
    assert t["kind"] == "int8" and t["bytes"] == (win / "model.tflite").stat().st_size
    assert t["predicted_peak_activation_bytes"] == m["peak_activation_bytes"]
    assert t["arena"]["total"] == t["arena"]["head"] + t["arena"]["tail"]
    assert abs(m["tflm_test"]["accuracy"] - m["test"]["accuracy"]) <= 0.01
    assert set(w["artifacts"]) == {
        "model.pt",
        "model.tflite",
        "model_data.cc",
        "model_data.h",
        "card.md",
    }
    card = (win / "card.md").read_text()
    assert "## Memory in TFLite Micro" in card and "test, TFLite Micro" in card
    assert f"{t['arena']['total']:,} B" in card
    # apply rebuilds it from the base model and checks every artifact's hash, C array included.
    from search.export import apply_winner

    assert apply_winner(win / "winner.yaml").ok


@needs_extra
@pytest.mark.slow
def test_cli_export_tflite_refuses_an_unknown_format(
    int8_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from search.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["export", str(int8_run), "--format", "coreml"])
    assert exc.value.code == 2
    assert "invalid choice: 'coreml'" in capsys.readouterr().err


@needs_extra
@pytest.mark.slow
def test_cli_export_of_an_operator_tflm_lacks_is_one_error_line(tmp_path: Path) -> None:
    try:
        import _tiny
    except ImportError:
        from tests import _tiny

    path = _tiny.write_tiny_experiment(tmp_path, "gelu", trials=1)
    task = tmp_path / "tinytask.py"
    task.write_text(
        _tiny.TASK_PY.replace(
            "nn.ReLU(),\n        nn.Conv2d(8, 8", "nn.GELU(),\n        nn.Conv2d(8, 8", 1
        )
    )
    assert "nn.GELU()" in task.read_text()
    space = {"name": "tiny", "quantize": {"weight_bits": [8], "activation_bits": [8]}}
    (tmp_path / "tiny_space.yaml").write_text(yaml.safe_dump(space))
    run = _tiny.run_cli("run", str(path), "--no-progress", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    run_dir = tmp_path / "experiments" / "runs" / "gelu"
    done = _tiny.run_cli("export", str(run_dir), "--format", "tflite", cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "operator GELU" in lines[0] and "Traceback" not in done.stderr
    assert not (run_dir / "winner").exists()  # nothing half-written


@needs_extra
def test_tflm_lut_compression_of_4_bit_weights_runs_but_decodes_into_the_arena(
    tmp_path: Path,
) -> None:
    """Why the MCU profiles offer no 4-bit weights: TFLM's look-up-table compression runs end
    to end (DECODE operators, identical outputs, a smaller flatbuffer), but each layer's weights
    are decoded into the arena at run time, which the cost model does not price."""
    import importlib

    import numpy as np

    from search.compress._quantization import attach_weight_quant
    from search.export._tflite import TflmModel, convert, operators

    compress = importlib.import_module("tflite_micro.tensorflow.lite.micro.compression.compress")
    spec = importlib.import_module("tflite_micro.tensorflow.lite.micro.compression.spec")
    from tflite_micro.python.tflite_micro import runtime

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    ).eval()
    for layer in model:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            attach_weight_quant(layer, 4)
    shape = (3, 8, 8)
    path = convert(
        model, tmp_path / "w4.tflite", input_shape=shape, calib_inputs=torch.randn(8, *shape)
    )
    data = path.read_bytes()
    fb = runtime.convert_bytearray_to_object(bytearray(data))
    specs = []
    for i, t in enumerate(fb.subgraphs[0].tensors):
        values = fb.buffers[t.buffer].data
        if values is not None and len(t.shape) >= 2 and t.type == 9:  # int8 weights
            w = np.frombuffer(bytes(values), np.int8).reshape(t.shape)
            assert max(len(np.unique(w[c])) for c in range(w.shape[0])) <= 16  # 4-bit grid
            specs.append(spec.Tensor(0, i, [spec.LookUpTableCompression(4, spec.PerChannel(0))]))
    small = tmp_path / "w4_lut.tflite"
    with pytest.warns(UserWarning, match="expansion"):  # the tiny first conv's tables
        small.write_bytes(compress.compress(data, specs))
    assert "CUSTOM" in operators(small)  # the DECODE operators
    assert small.stat().st_size < path.stat().st_size
    plain, lut = TflmModel(path), TflmModel(small)
    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    assert np.array_equal(plain.run_one(x), lut.run_one(x))
    assert lut.arena().head >= plain.arena().head + 64 * 16 * 9  # decoded conv weights


@needs_extra
def test_the_tflite_runs_in_litert_with_xnnpack(tmp_path: Path) -> None:
    from search.export._tflite import LiteRtModel, TflmModel, convert

    torch.manual_seed(0)
    model = _Branchy().eval()
    path = convert(
        model, tmp_path / "m.tflite", input_shape=(1, 8, 8), calib_inputs=torch.randn(64, 1, 8, 8)
    )
    x = torch.randn(16, 1, 8, 8)
    want = model(x).detach()
    litert = LiteRtModel(path)
    got = litert(x)
    assert (got - want).abs().max() < 0.05 * want.abs().max() + 0.02
    # XNNPACK and TFLM's reference kernels agree on the int8 model within a couple of steps.
    step = float(litert.output["quantization_parameters"]["scales"][0])
    assert (got - TflmModel(path)(x)).abs().max() <= 2 * step + 1e-6
    assert 0 < litert.latency_ms() < 1000
    fp32 = LiteRtModel(convert(model, tmp_path / "f.tflite", input_shape=(1, 8, 8), int8=False))
    assert torch.allclose(fp32(x), want, atol=1e-4)


def test_export_tflite_without_the_extra_is_one_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import search.export._tflite
    from search.errors import ConfigError
    from search.export import export_winner

    try:
        from test_pareto import make_study
    except ImportError:
        from tests.test_pareto import make_study

    make_study(tmp_path / "study.db")
    monkeypatch.setattr(
        search.export._tflite, "missing_extra", lambda: "tflite-micro is not installed"
    )
    with pytest.raises(ConfigError, match="--format.*tflite-micro is not installed"):
        export_winner(tmp_path, fmt="tflite")
    with pytest.raises(ConfigError, match="--format.*'coreml' is not one of"):
        export_winner(tmp_path, fmt="coreml")
    assert not (tmp_path / "winner").exists()


@pytest.mark.slow
def test_cli_export_onnx_fp16_for_gpus(
    int8_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnx

    from search.cli import main

    out = tmp_path / "fp16"
    assert main(["export", str(int8_run), "--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert " as onnx to " in first and "replaced" not in first
    assert main(["export", str(int8_run), "--format", "onnx-fp16", "--out", str(out)]) == 0
    # The output names the format and says what it overwrote: never a silent clobber.
    lines = capsys.readouterr().out.splitlines()
    k = next(i for i, line in enumerate(lines) if line.startswith("exported trial"))
    assert " as onnx-fp16 to " in lines[k], lines
    assert lines[k + 1].strip().startswith("replaced the onnx export of trial "), lines
    w = yaml.safe_load((out / "winner.yaml").read_text())
    assert w["onnx"]["float16"] is True and w["onnx"]["int8_qdq_layers"] == []
    assert w["export_format"] == "onnx-fp16"
    graph = onnx.load(str(out / "model.onnx")).graph
    assert {i.data_type for i in graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    m = w["metrics"]
    assert abs(m["onnx_test"]["accuracy"] - m["test"]["accuracy"]) <= 0.01
    assert "float16 weights and compute" in (out / "card.md").read_text()

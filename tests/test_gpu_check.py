"""The GPU check's engine stage on a CPU: ONNX files exported and costed, nothing timed.

experiments/benchmarks/gpu_check.py times fp16 and int8 engines on a lent GPU; here, without
one, the same code exports a small zoo network and a plan of a tiny finished search, costs them
on the GPU's profile, and writes rows that say "no GPU" instead of a figure. The agreement
figures (share within +-25 %, Spearman) are checked on hand-made rows.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests._tiny import write_tiny_experiment

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "experiments" / "benchmarks"
if str(BENCH_DIR) not in sys.path:  # it imports its siblings, as a script run from there does
    sys.path.append(str(BENCH_DIR))
_spec = importlib.util.spec_from_file_location("gpu_check", BENCH_DIR / "gpu_check.py")
assert _spec is not None and _spec.loader is not None
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)
# Its engine stage (profiles, rows, agreement) and the engines' timers, as gpu_check imports them.
gpu_section = importlib.import_module("_gpu_engine_section")
gpu_engines = importlib.import_module("_gpu_engines")


def test_a_t4_is_costed_on_its_own_profile() -> None:
    got, note = gpu_section.gpu_profile("Tesla T4")
    assert (got.name, got.batch, note) == ("cloud_gpu", 1, None)


@pytest.mark.parametrize("name", ["NVIDIA L40S", "none (--smoke)"])  # L40S is not an L4
def test_an_unmapped_gpu_falls_back_to_cloud_gpu_and_says_so(name: str) -> None:
    got, note = gpu_section.gpu_profile(name)
    assert got.name == "cloud_gpu" and got.batch == 1
    assert note is not None and "no profile is mapped" in note and "different GPUs" in note


def test_a_mapped_profile_that_does_not_exist_is_named_in_the_fallback_note(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gpu_section, "GPU_PROFILES", ((r"\bZ9\b", "no_such_gpu_profile"),))
    got, note = gpu_section.gpu_profile("NVIDIA Z9 80GB")
    assert got.name == "cloud_gpu"
    assert note is not None and "'no_such_gpu_profile'" in note and "lacks" in note


def test_engine_bits_fp16_throughout_int8_only_for_8_bit_layers() -> None:
    bits = {"a": 8, "b": 4, "c": 32}
    assert gpu_section.engine_bits(bits, "fp16") == ({"a": 16, "b": 16, "c": 16}, 16)
    assert gpu_section.engine_bits(bits, "int8") == ({"a": 8, "b": 32, "c": 32}, 8)


def test_without_a_gpu_zoo_and_plan_rows_are_exported_costed_and_not_timed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from search.config import load_experiment
    from search.study import run_search

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # the tiny task's module
    exp = load_experiment(write_tiny_experiment(tmp_path, trials=3))
    run_search(replace(exp, out=str(tmp_path / "run")), progress=False, log=lambda _m: None)

    section = gpu_check.engine_section(
        ["resnet8", "no_such_network"],
        tmp_path / "run",
        tmp_path / "engines",
        "none (--smoke)",
        gpu=False,
    )
    assert section["skipped"] == {"no_such_network": "not in REFERENCE_NETWORKS"}
    assert section["profile"] == "cloud_gpu" and section["engines"] == []
    zoo = [r for r in section["rows"] if r["kind"] == "zoo"]
    plans = [r for r in section["rows"] if r["kind"] == "plan"]
    assert [r["precision"] for r in zoo] == ["fp16", "int8"] and plans
    for row in zoo:
        assert Path(row["onnx"]).is_file() and row["predicted_ms"] > 0, row
        assert row["input_shape"] == [3, 32, 32]
    # resnet8's 10 conv/linear layers all at 8 bits; the file says how many it quantized
    counts = zoo[1]["int8_layers"]
    assert counts["at_8_bits"] == counts["layers"] == 10 and 0 < counts["in_onnx"] <= 10
    assert zoo[1]["predicted_ms"] < zoo[0]["predicted_ms"]  # int8 is cheaper than fp16 on a T4
    fp16_plan = next(r for r in plans if r["precision"] == "fp16")
    assert Path(fp16_plan["onnx"]).is_file() and fp16_plan["predicted_ms"] > 0, fp16_plan
    assert fp16_plan["input_shape"] == [1, 8, 8]
    for row in section["rows"]:
        assert row["not_measured"] == gpu_section.NO_GPU
        assert not {"median_ms", "p10_ms", "p90_ms", "ratio", "engine"} & set(row), row
    assert section["agreement"]["all"] == {"rows": 0, "within_25pct": None, "spearman": None}

    md = "\n".join(gpu_check.engine_markdown(section))
    assert f"| resnet8 | int8 |  | {counts['in_onnx']} of 10 |  |  |  |" in md
    assert "no GPU" in md


def _row(precision: str, predicted: float, measured: float, **extra: object) -> dict:
    return {
        "precision": precision,
        "predicted_ms": predicted,
        "median_ms": measured,
        "ratio": predicted / measured,
        **extra,
    }


def test_agreement_counts_rows_within_25pct_and_ranks_them() -> None:
    rows = [
        _row("fp16", 1.0, 1.0),
        _row("fp16", 2.4, 2.0),  # +20 %
        _row("int8", 3.9, 3.0),  # +30 %
        _row("int8", 1.0, 4.0, int8_layers={"in_onnx": 2, "at_8_bits": 9, "layers": 9}),
        {"precision": "int8", "predicted_ms": 5.0, "not_measured": gpu_engines.CUDA_INT8},
    ]
    a = gpu_section.agreement(rows)
    assert a["all"] == {"rows": 3, "within_25pct": round(2 / 3, 3), "spearman": 1.0}
    assert a["fp16"]["rows"] == 2 and a["fp16"]["spearman"] is None  # too few to rank
    assert a["int8"] == {"rows": 1, "within_25pct": 0.0, "spearman": None}
    assert a["measured_not_comparable"] == 1  # the int8 file quantized 2 of 9 layers


def test_the_cuda_provider_never_times_an_int8_row() -> None:
    row = {"precision": "int8", "onnx": "m.onnx", "input_shape": [1, 8, 8]}
    gpu_engines.time_row(row, ["onnxruntime-cuda"], runs=1, warmup=0)
    assert row["not_measured"] == gpu_engines.CUDA_INT8 and "median_ms" not in row


def test_a_failing_engine_is_recorded_and_the_next_one_times_the_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_a: object, **_k: object) -> dict:
        raise RuntimeError("no such op")

    def fine(*_a: object, **_k: object) -> dict:
        return {"engine": "stub", "median_ms": 2.0, "p10_ms": 1.9, "p90_ms": 2.2}

    monkeypatch.setattr(gpu_engines, "time_tensorrt", broken)
    monkeypatch.setattr(gpu_engines, "time_onnxruntime", fine)
    row = {"precision": "fp16", "onnx": "m.onnx", "input_shape": [1, 8, 8], "predicted_ms": 1.0}
    gpu_engines.time_row(row, ["tensorrt", "onnxruntime-trt"], runs=1, warmup=0)
    assert row["engine"] == "stub" and row["ratio"] == 0.5 and "not_measured" not in row
    assert row["engine_errors"] == {"tensorrt": "RuntimeError: no such op"}


def test_a_row_no_engine_timed_says_why_and_has_no_figure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_a: object, **_k: object) -> dict:
        raise RuntimeError("no such op")

    monkeypatch.setattr(gpu_engines, "time_tensorrt", broken)
    monkeypatch.setattr(gpu_engines, "time_onnxruntime", broken)
    row = {"precision": "fp16", "onnx": "m.onnx", "input_shape": [1, 8, 8], "predicted_ms": 1.0}
    gpu_engines.time_row(row, ["tensorrt", "onnxruntime-trt"], runs=1, warmup=0)
    assert row["not_measured"] == gpu_engines.ALL_FAILED
    assert set(row["engine_errors"]) == {"tensorrt", "onnxruntime-trt"}
    assert not {"ratio", "median_ms", "engine"} & set(row)
    empty = {"precision": "fp16", "onnx": "m.onnx", "input_shape": [1, 8, 8]}
    gpu_engines.time_row(empty, [], runs=1, warmup=0)
    assert empty["not_measured"] == gpu_engines.NO_ENGINE


def test_the_page_of_an_engines_only_run_has_no_cpu_or_resnet_rows() -> None:
    quick = {
        "trials": 2,
        "trained": 2,
        "failed": 0,
        "wall_s": 1.0,
        "trials_per_min": 120.0,
        "recovery_s_per_trained_trial": 0.1,
        "best_accuracy": 0.9,
        "fail_reasons": [],
    }
    engines = {
        "profile": "cloud_gpu",
        "profile_note": None,
        "engines": ["tensorrt"],
        "engines_missing": {},
        "timing": "Batch 1",
        "skipped": {},
        "rows": [],
        "agreement": gpu_section.agreement([]),
    }
    result = {
        "gpu": "Tesla T4",
        "gpus": 1,
        "bf16": False,
        "torch": "2",
        "cores": 4,
        "torch_threads": 2,
        "when": "now",
        "commit": "abc",
        "load_avg_before": 0.1,
        "load_avg_after": 0.2,
        "command": "python experiments/benchmarks/gpu_check.py --engines-only",
        "total_s": 1.0,
        "quickstart": {"cuda": quick},
        "engines": engines,
    }
    md = gpu_check.markdown(result)
    assert "| quickstart | cuda | 2 |" in md and "| cpu |" not in md and "resnet18" not in md
    assert "## Inference engines: measured against predicted" in md


@pytest.mark.parametrize("name", ["gpu_check.py", "_gpu_engine_section.py", "_gpu_engines.py"])
def test_the_script_never_imports_tensorrt_at_module_level(name: str) -> None:
    source = (BENCH_DIR / name).read_text()
    top = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert not [line for line in top if "tensorrt" in line]

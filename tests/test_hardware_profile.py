"""Profiles: the built-ins load and carry sources; every bad field is a ConfigError naming it."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from search.errors import ConfigError
from search.hardware import (
    BUDGET_KEYS,
    HardwareProfile,
    load_profile,
    profile_from_dict,
    write_profile,
)

BUILTIN = (
    "phone",
    "phone_npu",
    "mcu",
    "mcu_h7",
    "mcu_m4",
    "mcu_m33",
    "cloud_gpu",
    "jetson_xavier",
    "jetson_nano",
    "a100",
)
TENSORRT = ("cloud_gpu", "jetson_xavier", "jetson_nano", "a100")
PROFILE_DIR = Path(__file__).resolve().parent.parent / "hardware_profiles"

GOOD = {
    "name": "toy",
    "description": "a test device",
    "sources": ["made up for the tests"],
    "peak_macs_per_s": {8: 4e9, 32: 1e9},
    "native_precisions": [8, 32],
    "fallback_precision": 32,
    "bandwidth_bytes_per_s": 1e9,
    "efficiency": {"conv": 0.5, "dwconv": 0.25, "linear": 1.0, "elementwise": 0.5},
    "layer_overhead_us": {"conv": 1, "dwconv": 1, "linear": 1, "elementwise": 1},
    "memory": {"sram_kb": 64, "flash_kb": 256},
    "weights_in": "flash",
    "budgets": {"latency_ms": 10, "memory_kb": 64},
}


def test_only_the_npu_and_tensorrt_8_fuse_activations_into_their_convs() -> None:
    """`fused_activation` is off by default: CPU and MCU runtimes run SiLU as a pass."""
    assert profile_from_dict(GOOD).fused_activation is False
    assert [n for n in BUILTIN if load_profile(n).fused_activation] == ["phone_npu", "a100"]


def test_only_gpus_leave_sms_idle_on_small_layers() -> None:
    """`saturation_outputs`: a GPU layer with fewer outputs than it takes to fill every SM runs
    as long per MAC as one that fills them; nothing else has the rule."""
    assert profile_from_dict(GOOD).saturation_outputs == 0
    assert {n for n in BUILTIN if load_profile(n).saturation_outputs > 0} == set(TENSORRT)
    gpu = profile_from_dict({**GOOD, "saturation_outputs": 1000})
    assert gpu.occupancy_factor(250) == 4.0
    assert gpu.occupancy_factor(1000) == gpu.occupancy_factor(5000) == 1.0
    assert profile_from_dict(GOOD).occupancy_factor(1) == 1.0


@pytest.mark.parametrize("name", TENSORRT)
def test_tensorrt_profiles_name_their_runtime_and_board_memory(name: str) -> None:
    """What `export` keys TensorRT's int8 ONNX on, and the board's own memory."""
    p = load_profile(name)
    assert "TensorRT" in (p.runtime or {})["name"]
    assert p.memory["ram_kb"] and p.budgets["memory_kb"] <= p.memory["ram_kb"]
    assert (8 in p.weight_bits) == (name != "jetson_nano")  # Maxwell has no int8


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_profiles_load(name: str) -> None:
    p = load_profile(name)
    assert isinstance(p, HardwareProfile)
    assert p.name == name
    assert p.sources
    assert set(p.budgets) <= set(BUDGET_KEYS) and "latency_ms" in p.budgets
    assert 32 in p.weight_bits and set(p.activation_bits) <= {8, 16, 32}
    assert p.to_dict()["name"] == name


def test_mcu_is_the_stm32f746() -> None:
    p = load_profile("mcu")
    assert p.memory["sram_kb"] == 320 and p.memory["flash_kb"] == 1024
    # Its arena is TFLite Micro's (greedy planner, no in-place depthwise): see test_tflite.py.
    assert p.weights_in == "flash" and p.memory_planner == "tflm" and not p.depthwise_in_place
    assert 4 not in p.weight_bits  # no int4 runtime on the board
    assert p.hard_limits() == {"memory_kb": 320.0, "flash_kb": 1024.0}


@pytest.mark.parametrize("name", BUILTIN)
def test_every_number_in_a_builtin_profile_has_a_source(name: str) -> None:
    lines = (PROFILE_DIR / f"{name}.yaml").read_text().splitlines()
    parent_commented = False
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, value = line.partition(":")
        value = value.split("#")[0].strip()
        if not line.startswith(" "):
            parent_commented = "#" in line
        if re.fullmatch(r"-?[0-9.]+(e[+-]?[0-9]+)?", value) and value != "":
            assert "#" in line or parent_commented, f"{name}.yaml: {line.strip()} has no source"


def test_user_profile_by_path_round_trips(tmp_path: Path) -> None:
    p = profile_from_dict(GOOD)
    path = write_profile(p, tmp_path / "toy.yaml", header="written by a test")
    back = load_profile(str(path))
    assert back == p
    assert back.layer_overhead_us["conv"] == 1.0


def test_scalar_overhead_applies_to_every_kind() -> None:
    data = dict(GOOD, layer_overhead_us=3)
    assert set(profile_from_dict(data).layer_overhead_us.values()) == {3.0}


def test_compute_precision_and_fallback() -> None:
    p = profile_from_dict(GOOD)
    assert p.compute_precision(8, 8) == 8
    assert p.compute_precision(4, 8) == 8  # narrow weights run on the 8-bit units
    assert p.compute_precision(16, 16) == 32  # no int16 kernels: the fallback
    assert p.compute_precision(8, 32) == 32


def _bad(path: tuple, value: object) -> dict:
    data = copy.deepcopy(GOOD)
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


_DELETE = object()

BAD_CASES = [
    (("colour",), "blue", "colour", "unknown key"),
    (("name",), "", "name", "non-empty"),
    (("name",), _DELETE, "name", "required"),
    (("sources",), "one string", "sources", "list of strings"),
    (("native_precisions",), [8, 3], "native_precisions", "bits from"),
    (("native_precisions",), [], "native_precisions", "bits from"),
    (("peak_macs_per_s", 8), _DELETE, "peak_macs_per_s", "8 missing"),
    (("peak_macs_per_s", 8), -1, "peak_macs_per_s.8", "outside"),
    (("peak_macs_per_s", 7), 1e9, "peak_macs_per_s.7", "unknown key"),
    (("fallback_precision",), 16, "fallback_precision", "native precisions"),
    (("bandwidth_bytes_per_s",), "fast", "bandwidth_bytes_per_s", "must be a number"),
    (("efficiency", "conv"), 1.5, "efficiency.conv", "outside"),
    (("efficiency", "conv"), _DELETE, "efficiency", "missing ['conv']"),
    (("efficiency", "attention"), 0.5, "efficiency.attention", "unknown key"),
    (("layer_overhead_us", "linear"), -2, "layer_overhead_us.linear", "outside"),
    (("threads",), 0, "threads", "integer"),
    (("batch",), 1.5, "batch", "integer"),
    (("memory",), {"flash_kb": 10}, "memory", "ram_kb or sram_kb"),
    (("memory", "disk_kb"), 10, "memory.disk_kb", "unknown key"),
    (("weights_in",), "rom", "weights_in", "not one of"),
    (("budgets", "energy_mj"), 1, "budgets.energy_mj", "unknown key"),
    (("budgets", "memory_kb"), 100, "budgets.memory_kb", "exceeds"),
    (("budgets", "latency_ms"), 0, "budgets.latency_ms", "> 0"),
    (("sparse_support",), "yes", "sparse_support", "true or false"),
    (("fused_add",), 1, "fused_add", "true or false"),
    (("fused_activation",), "on", "fused_activation", "true or false"),
    (("saturation_outputs",), -1, "saturation_outputs", "outside"),
    (("channel_block",), 0, "channel_block", "integer in [1, 256]"),
    (("unaligned_efficiency",), 2, "unaligned_efficiency.conv", "outside"),
    (("unaligned_efficiency",), {"linear": 0.5}, "unaligned_efficiency.linear", "unknown key"),
    (("runtime",), "TFLM", "runtime", "mapping with keys"),
    (("runtime",), {"version": "1"}, "runtime.name", "required"),
    (("runtime",), {"name": "TFLM", "flavour": "x"}, "runtime.flavour", "unknown key"),
    (("latency_error",), {"source": "x"}, "latency_error.p90", "required"),
    (("latency_error",), {"p90": -0.1}, "latency_error.p90", "outside"),
    (("latency_error",), {"p90": 0.2, "rows": 1.5}, "latency_error.rows", "integer"),
]


@pytest.mark.parametrize(("path", "value", "field", "words"), BAD_CASES)
def test_bad_field_names_file_field_and_what_is_allowed(
    tmp_path: Path, path: tuple, value: object, field: str, words: str
) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump(_bad(path, value)))
    with pytest.raises(ConfigError) as info:
        load_profile(str(file))
    assert info.value.file == str(file)
    assert info.value.field == field
    assert words in info.value.message


def test_unknown_name_lists_the_builtins() -> None:
    with pytest.raises(ConfigError) as info:
        load_profile("toaster", file="exp.yaml", field="target")
    assert (info.value.file, info.value.field) == ("exp.yaml", "target")
    assert "mcu" in info.value.message


def test_missing_file_and_broken_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no profile file"):
        load_profile(str(tmp_path / "nope.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_profile(str(broken))
    assert info.value.field == "<yaml>"
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_profile(str(top))


def test_yaml_exponent_without_sign_is_a_number(tmp_path: Path) -> None:
    text = yaml.safe_dump(GOOD).replace("1000000000.0", "1e9")
    file = tmp_path / "exp.yaml"
    file.write_text(text)
    assert load_profile(str(file)).bandwidth_bytes_per_s == 1e9


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_profiles_name_their_runtime(name: str) -> None:
    p = load_profile(name)
    assert p.runtime is not None and p.runtime["name"] and p.runtime["version"]
    assert len(p.runtime["note"]) > 40  # says why this runtime


def test_runtime_and_latency_error_round_trip(tmp_path: Path) -> None:
    data = copy.deepcopy(GOOD)
    data["runtime"] = {"name": "TFLite Micro + CMSIS-NN", "version": "2024", "note": "why"}
    data["latency_error"] = {"p90": 0.18, "source": "devices.json", "rows": 4}
    p = profile_from_dict(data)
    assert p.latency_error_p90 == pytest.approx(0.18)
    back = load_profile(str(write_profile(p, tmp_path / "p.yaml")))
    assert back == p and back.runtime == data["runtime"]
    assert profile_from_dict(GOOD).latency_error_p90 is None  # both fields are optional
    assert profile_from_dict(GOOD).runtime is None


def test_checked_budgets_are_cut_to_the_boards_limits() -> None:
    from search.hardware import load_profile

    mcu = load_profile("mcu")
    limits = mcu.hard_limits()
    checked = mcu.checked_budgets({"latency_ms": 15.0, "memory_kb": 10_000.0})
    # An experiment's budget above the board's SRAM is cut to it; the flash, which the
    # experiment leaves open, is the board's; the latency stays as asked.
    assert checked == {"latency_ms": 15.0, **limits}
    assert list(checked) == ["latency_ms", "memory_kb", "flash_kb"]

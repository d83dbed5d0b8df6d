"""The zoo benchmark on a subset: its results files, and failures recorded rather than raised.

experiments/benchmarks/zoo.py builds and costs one joint plan on every torchvision classifier up
to 60 M parameters (an hour or more); here it runs one small network at 64 px and one name
torchvision does not know, through the script's own per-network processes, and checks the
shape of zoo.json and zoo.md. A time limit is checked with a child killed after a second, and
the summary figures on hand-made rows. No timing asserts.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "experiments" / "benchmarks"
if str(BENCH_DIR) not in sys.path:  # zoo.py imports _stamp, as a script run from there does
    sys.path.append(str(BENCH_DIR))
_spec = importlib.util.spec_from_file_location("zoo_bench", BENCH_DIR / "zoo.py")
assert _spec is not None and _spec.loader is not None
zoo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zoo)

ROW_KEYS = {
    "model",
    "kind",
    "family",
    "size",
    "profile",
    "built",
    "costed",
    "forward",
    "timed_out",
    "errors",
    "params_before",
    "params_after",
    "latency_ms_before",
    "latency_ms_after",
    "channels_removed",
    "attention_heads_removed",
    "skipped",
    "first_plan_seconds",
    "build_seconds",
    "cost_seconds",
    "plan_seconds",
    "wall_seconds",
}


@pytest.mark.slow  # two child processes, each importing torch: 20-35 s on 2 shared cores
def test_a_subset_run_writes_rows_summary_and_records_a_failing_model(tmp_path: Path) -> None:
    zoo.main(
        [
            "--models",
            "shufflenet_v2_x0_5,no_such_model",
            "--size",
            "64",
            "--timeout",
            "60",
            "--out",
            str(tmp_path),
        ]
    )
    doc = json.loads((tmp_path / "zoo.json").read_text())
    assert set(doc) >= {"stamp", "setup", "targets", "summary", "other_groups", "families"}
    assert set(doc["stamp"]) >= {
        "commit",
        "date",
        "load_avg_before",
        "load_avg_after",
        "command",
        "seconds",
    }
    assert doc["setup"]["subset"] is True and doc["setup"]["size"] == 64
    assert doc["targets"] == {
        "built_fraction": 1.0,
        "pruned_fraction": 0.95,
        "max_plan_seconds": 10.0,
        "median_plan_seconds": 3.0,
    }

    good, bad = doc["models"]
    assert good["model"] == "shufflenet_v2_x0_5" and good["in_summary"] is True
    assert set(good) >= ROW_KEYS
    assert good["built"] and good["costed"] and good["forward"] and not good["errors"]
    assert good["output_shape_after"] == good["output_shape_before"] == [1, 1000]
    assert good["params_before"] == good["published_params"] == 1_366_792
    assert good["latency_ms_before"] > 0 and good["latency_ms_after"] > 0
    assert good["plan_seconds"] == round(good["build_seconds"] + good["cost_seconds"], 3)
    assert good["first_plan_seconds"] == round(
        good["first_build_seconds"] + good["first_cost_seconds"], 3
    )
    assert good["attention_heads_removed"] == 0
    assert isinstance(good["skipped"], dict) and good["channels_removed"] >= 0

    # The failure is a row, not an exception: the stage and torchvision's message are kept.
    assert bad["model"] == "no_such_model" and bad["in_summary"] is False
    assert not (bad["built"] or bad["costed"] or bad["forward"] or bad["timed_out"])
    assert list(bad["errors"]) == ["model"] and "Unknown model" in bad["errors"]["model"]

    s = doc["summary"]  # only shufflenet counts: a classifier with a published count <= 60 M
    assert s["models"] == 1 and s["built_fraction"] == 1.0
    assert s["max_plan_seconds"] == s["median_plan_seconds"] == good["plan_seconds"]
    assert set(s["targets_met"]) == set(zoo.TARGETS)
    assert doc["other_groups"]["other_classifiers"]["built_fraction"] == 0.0
    assert doc["families"]["shufflenet"]["built"] == ["shufflenet_v2_x0_5"]
    assert "no_such_model" in doc["families"]["no"]["failed"]

    md = (tmp_path / "zoo.md").read_text()
    assert "| built_fraction | 1.000 | = 1.0 | met |" in md
    assert "shufflenet_v2_x0_5" in md and "Unknown model" in md


def test_a_network_out_of_time_is_a_row_naming_the_stage(tmp_path: Path) -> None:
    row = zoo.measure("resnet18", size=32, timeout=1)  # killed before its imports finish
    assert row["timed_out"] is True and not row["built"]
    assert list(row["errors"].values()) == ["timed out after 1 s"]
    assert row.get("plan_seconds") is None


def _row(name: str, built: bool, removed: int, plan_s: float | None) -> dict:
    return {
        "model": name,
        "kind": "classification",
        "family": "f",
        "built": built,
        "costed": built,
        "forward": built,
        "channels_removed": removed,
        "plan_seconds": plan_s,
        "errors": {} if built else {"plan": "ValueError: x"},
    }


def test_summary_figures_and_targets_on_hand_made_rows() -> None:
    rows = [_row("a", True, 10, 2.0), _row("b", True, 0, 12.0), _row("c", False, 0, None)]
    s = zoo.group_summary(rows)
    assert s["built_fraction"] == round(2 / 3, 4) and s["pruned_fraction"] == round(1 / 3, 4)
    assert s["max_plan_seconds"] == 12.0 and s["median_plan_seconds"] == 7.0
    assert s["plan_seconds_missing"] == ["c"]
    assert zoo.targets_met(s) == {
        "built_fraction": False,
        "pruned_fraction": False,
        "max_plan_seconds": False,
        "median_plan_seconds": False,
    }
    fast = zoo.group_summary(
        [_row(n, True, 10, t) for n, t in (("a", 2.0), ("d", 2.5), ("e", 9.5))]
    )
    assert all(zoo.targets_met(fast).values())
    assert zoo.families(rows)["f"]["failed"] == {"c": "plan: ValueError: x"}


def test_channels_removed_follows_a_low_rank_pair_to_its_second_half() -> None:
    before = {"conv1": 64, "fc": 1000, "gone": 8}
    after = {"conv1.0": 32, "conv1.1": 40, "fc": 1000}  # rank 32 is not a removed channel
    got = zoo.channels_removed(before, after)
    assert got["channels_removed"] == 24 and got["layers_pruned"] == 1
    assert got["layers_not_found"] == ["gone"]

"""Experiment files: good ones load typed, bad ones name the file and the field."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from search.config import Recovery, load_experiment, parse_experiment
from search.errors import ConfigError
from tests.conftest import REPO


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_quickstart_loads_typed():
    exp = load_experiment(REPO / "experiments" / "quickstart.yaml")
    assert exp.name == "quickstart" and exp.task == "digits" and exp.target == "mcu"
    assert [o.metric for o in exp.objectives] == ["accuracy", "latency_ms", "weight_bytes"]
    assert exp.objectives[0].direction == "maximize"
    assert exp.budgets == {"latency_ms": 15.0}
    assert exp.recovery.epochs == 3 and exp.recovery.distillation
    assert exp.storage_url.endswith("experiments/runs/quickstart/study.db")


def test_recovery_knobs_parse(tmp_path, in_tmp):
    rec = {"early_stop": False, "refine_epochs": 5, "refine_student_epochs": 12}
    exp = load_experiment(write(tmp_path, {"name": "x", "recovery": rec}))
    assert not exp.recovery.early_stop
    assert (exp.recovery.refine_epochs, exp.recovery.refine_student_epochs) == (5, 12)
    assert load_experiment(write(tmp_path, {"name": "y"})).recovery.early_stop  # on by default


def test_recovery_schedule_per_plan_kind():
    rec = Recovery(epochs=3, student_epochs=10, lr=0.005, quant_lr=0.0002, student_lr=0.01)
    quant, structure, student = (rec.schedule(k) for k in ("quantize", "structure", "student"))
    assert (quant.epochs, quant.lr) == (3, 0.0002)
    assert (structure.epochs, structure.lr) == (3, 0.005)
    assert (student.epochs, student.lr) == (10, 0.01)
    # A quantize-only plan keeps its trained BatchNorm statistics from the start; a pruned one
    # freezes them after `freeze_bn` of its recovery; a student (from scratch) never does.
    assert (quant.freeze_bn, structure.freeze_bn, student.freeze_bn) == (0.0, rec.freeze_bn, None)
    assert Recovery(epochs=3, refine_epochs=8).schedule("structure", refine=True).epochs == 8
    # The refine stage never trains shorter than the search did.
    assert Recovery(epochs=12, refine_epochs=8).schedule("quantize", refine=True).epochs == 12
    long_students = Recovery(student_epochs=40, refine_student_epochs=30)
    assert long_students.schedule("student", refine=True).epochs == 40


def test_recovery_keys_are_checked(tmp_path):
    rec = {"quant_lr": 0.0003, "warmup": 0.2, "freeze_bn": 0.75, "skip_within": None}
    exp = load_experiment(write(tmp_path, {"name": "x", "recovery": rec}))
    r = exp.recovery
    assert (r.quant_lr, r.warmup, r.freeze_bn, r.skip_within) == (0.0003, 0.2, 0.75, None)
    for key, bad in (("warmup", 1.5), ("freeze_bn", -0.1), ("skip_within", "a"), ("quant_lr", 0)):
        with pytest.raises(ConfigError, match=f"recovery.{key}"):
            load_experiment(write(tmp_path, {"name": "x", "recovery": {key: bad}}))


def test_builtin_experiment_resolves_by_name():
    assert load_experiment("quickstart").name == "quickstart"


def test_overrides_are_validated(in_tmp):
    exp = load_experiment(REPO / "experiments" / "quickstart.yaml")
    assert exp.with_overrides(trials=4, target="phone", seed=None).trials == 4
    with pytest.raises(ConfigError, match="--target"):
        exp.with_overrides(target="toaster")
    with pytest.raises(ConfigError, match="escapes the project"):
        exp.with_overrides(out="../elsewhere")


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": "x", "trails": 3}, "trails"),
        ({"name": "x", "trials": 0}, "trials"),
        ({"name": "x", "trials": "ten"}, "trials"),
        ({"name": "x", "budgets": {"latency_ms": -1}}, "budgets.latency_ms"),
        ({"name": "x", "budgets": {"latency": 1}}, "budgets.latency"),
        ({"name": "x", "target": "toaster"}, "target"),
        ({"name": "x", "space": "nope"}, "space"),
        ({"name": "x", "objectives": ["speed"]}, "objectives[0]"),
        ({"name": "x", "objectives": []}, "objectives"),
        ({"name": "x", "sampler": "cmaes"}, "sampler"),
        ({"name": "x", "recovery": {"epochs": -1}}, "recovery.epochs"),
        ({"name": "x", "recovery": {"distillation": "yes"}}, "recovery.distillation"),
        ({"name": "x", "recovery": {"early_stop": 1}}, "recovery.early_stop"),
        (
            {"name": "x", "recovery": {"refine_student_epochs": -2}},
            "recovery.refine_student_epochs",
        ),
        ({"name": "x", "max_accuracy_drop": 2}, "max_accuracy_drop"),
        ({"name": "x", "out": "../../tmp/x"}, "out"),
        ({"name": "x", "storage": "not-a-url"}, "storage"),
        ({"name": "x", "task": "imagenet"}, "task"),
        ({"name": "x", "task": {"model": "m:f"}}, "task.data"),
        (
            {
                "name": "x",
                "task": {"model": "m", "data": "d:f", "input_shape": [1], "num_classes": 2},
            },
            "task.model",
        ),
        ({"name": "x", "device": "tpu"}, "device"),
        ({"name": "bad name!"}, "name"),
    ],
)
def test_bad_fields_are_named(tmp_path, in_tmp, data, field):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert info.value.field == field
    assert info.value.file == str(path)


@pytest.mark.parametrize(
    ("text", "field"),
    [("", "<file>"), ("name: [1, 2\n", "line 2"), ("- just\n- a list\n", "<top>")],
)
def test_malformed_files(tmp_path, text, field):
    with pytest.raises(ConfigError) as info:
        load_experiment(write(tmp_path, text))
    assert info.value.field == field


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "name",
                "trials",
                "seed",
                "budgets",
                "objectives",
                "target",
                "space",
                "recovery",
                "max_accuracy_drop",
                "sampler",
                "task",
                "out",
                "zzz",
            ]
        ),
        st.none()
        | st.booleans()
        | st.integers(-3, 50)
        | st.floats()
        | st.text(max_size=8)
        | st.lists(st.text(max_size=8), max_size=3)
        | st.dictionaries(
            st.text(max_size=10), st.integers(-2, 5) | st.text(max_size=4), max_size=3
        ),
        max_size=6,
    )
)
def test_experiment_loader_never_crashes(data):
    """Fuzz: a valid Experiment or a ConfigError, never another exception."""
    with contextlib.suppress(ConfigError):
        parse_experiment(data, "fuzz.yaml")


def test_a_null_character_in_the_out_path_is_a_config_error() -> None:
    """Found by the fuzz test above: os.path raised ValueError on it."""
    data = {"name": "x", "task": "digits", "target": "mcu", "out": "runs/a\x00b"}
    with pytest.raises(ConfigError) as info:
        parse_experiment(data, "f.yaml")
    assert info.value.field == "out" and "null" in info.value.message

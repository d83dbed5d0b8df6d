"""Export and apply: refusals on a synthetic study, then a tiny real search end to end."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from search.errors import ConfigError
from search.export import apply_winner, export_winner
from search.winner import WINNER_FORMAT

try:  # the study builder lives beside this file
    from test_pareto import make_study
except ImportError:  # tests/ imported as a package
    from tests.test_pareto import make_study


# --- refusals that come before any model work ---------------------------------------------------
def test_export_refuses_when_nothing_is_feasible(tmp_path: Path) -> None:
    tight = {"latency_ms": 0.1, "memory_kb": 64.0, "flash_kb": 1.0}
    make_study(tmp_path / "study.db", budgets=tight)
    with pytest.raises(ConfigError, match="no trial meets the budgets.*--allow-infeasible"):
        export_winner(tmp_path, pick="knee")
    assert not (tmp_path / "winner").exists()  # nothing half-written


def test_export_refuses_bad_trials_and_picks(tmp_path: Path) -> None:
    make_study(tmp_path / "study.db")
    with pytest.raises(ConfigError, match="trial 5 is fail"):
        export_winner(tmp_path, trial=5)
    with pytest.raises(ConfigError, match="infeasible.*--allow-infeasible"):
        export_winner(tmp_path, trial=6)
    with pytest.raises(ConfigError, match="not one of"):
        export_winner(tmp_path, pick="smallest")
    with pytest.raises(ConfigError, match="no study.db") as info:
        export_winner(tmp_path / "elsewhere")
    # Said to `export` as much as to `report`: no other command's name in the advice.
    assert "report" not in info.value.message and "--storage URL" in info.value.message
    assert not (tmp_path / "winner").exists()


def test_apply_refuses_what_is_not_a_winner(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such winner file"):
        apply_winner(tmp_path / "winner.yaml")
    bad = tmp_path / "other.yaml"
    bad.write_text("name: quickstart\n")
    with pytest.raises(ConfigError, match="format"):
        apply_winner(bad)
    sections = {k: {} for k in ("plan", "experiment", "artifacts", "base_model")}
    no_profile = {"format": WINNER_FORMAT, **sections, "metrics": {"test": {}}}
    bad.write_text(yaml.safe_dump(no_profile))
    with pytest.raises(ConfigError, match="profile: missing"):
        apply_winner(bad)
    bad.write_text(yaml.safe_dump({**no_profile, "profile": {}, "metrics": {}}))
    with pytest.raises(ConfigError, match="metrics.test: missing"):
        apply_winner(bad)


# --- a tiny real search ------------------------------------------------------------------------
SPACE = """
name: tiny
prune:
  mode: [per_layer]
  ratio: {low: 0.0, high: 0.5, step: 0.25}
  importance: [l1]
quantize:
  weight_bits: [8, 32]
  activation_bits: [8, 32]
"""


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory, _shared_cache: Path):
    """A 3-trial digits search (the warm-start recipes) with a profile named `host`."""
    from search.cli import main
    from search.hardware import load_profile, write_profile

    folder = tmp_path_factory.mktemp("real")
    mp = pytest.MonkeyPatch()
    mp.chdir(folder)
    (folder / "tiny.yaml").write_text(SPACE)
    host = load_profile("phone").with_updates(name="host", description="this machine")
    write_profile(host, folder / "host.yaml")
    exp = {
        "name": "tiny",
        "task": "digits",
        "target": "host.yaml",
        "space": "tiny.yaml",
        "budgets": {"latency_ms": 1000.0, "memory_kb": 1e6, "flash_kb": 1e6},
        "max_accuracy_drop": 0.5,
        "trials": 3,
        "seed": 0,
        "recovery": {"epochs": 1},
    }
    (folder / "tiny_exp.yaml").write_text(yaml.safe_dump(exp))
    assert main(["run", "tiny_exp.yaml", "--no-progress"]) == 0
    yield folder / "experiments" / "runs" / "tiny"
    mp.undo()


@pytest.mark.slow
def test_export_knee_then_apply(real_run: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    from search.review import load_run_dir

    run = load_run_dir(real_run)
    assert run.front, "the tiny search found nothing feasible"
    result = export_winner(real_run, pick="knee")
    win = real_run / "winner"
    assert result.winner_dir == win and result.trial == run.knee
    for name in ("winner.yaml", "model.onnx", "model.pt", "card.md"):
        assert (win / name).is_file(), name
    w = yaml.safe_load((win / "winner.yaml").read_text())
    assert w["trial"] == run.knee and w["pick"] == "knee" and w["feasible"] is True
    assert w["plan"] == run.trial(run.knee).plan
    m = w["metrics"]
    for split in ("validation", "test", "onnx_test"):
        assert 0.0 <= m[split]["accuracy"] <= 1.0
    # The validation figure re-measured from the saved weights is the one the search recorded.
    assert m["validation"]["accuracy"] == pytest.approx(m["validation_at_search"]["accuracy"])
    # ONNX Runtime agrees with PyTorch on test within 1 point.
    assert abs(m["onnx_test"]["accuracy"] - m["test"]["accuracy"]) <= 0.01
    assert m["onnx_within_1_point"] is True
    assert w["profile"]["name"] == "host" and m["measured_latency_ms"] > 0
    assert set(w["versions"]) >= {"python", "torch", "optuna", "onnxruntime"}
    for name, digest in w["artifacts"].items():
        assert hashlib.sha256((win / name).read_bytes()).hexdigest() == digest
    assert w["base_model"]["sha256"] == run.base_hash

    # The weights load safely and the ONNX file runs; int8 QDQ exactly when a layer is 8-bit.
    state = torch.load(win / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    sess = ort.InferenceSession(str(win / "model.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": torch.zeros(2, 1, 8, 8).numpy()})[0]
    assert out.shape == (2, 10)
    ops = {n.op_type for n in __import__("onnx").load(str(win / "model.onnx")).graph.node}
    assert ("QuantizeLinear" in ops) == bool(w["onnx"]["int8_qdq_layers"])

    card = (win / "card.md").read_text()
    assert "## Metrics" in card and "## Cost and budget check" in card
    assert "meets every budget" in card
    assert "measured (ONNX Runtime, median)" in card
    assert f"{m['test']['accuracy']:.4g}" in card

    # apply: the same size, the same test accuracy (within 0.5 point).
    applied = apply_winner(win / "winner.yaml", out=tmp_path / "applied")
    assert applied.size_matches and applied.ok, str(applied)
    assert applied.size["params"] == m["params"]
    assert abs(applied.test["accuracy"] - m["test"]["accuracy"]) <= 0.005
    assert (tmp_path / "applied" / "model.pt").is_file()
    assert str(m["weight_bytes"]) in str(applied)

    # Tampering is refused, naming the field.
    bad = tmp_path / "tampered"
    shutil.copytree(win, bad)
    with open(bad / "model.pt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ConfigError, match="artifacts.model.pt"):
        apply_winner(bad / "winner.yaml")
    shutil.copy(win / "model.pt", bad / "model.pt")
    text = (bad / "winner.yaml").read_text().replace(run.base_hash, "f" * 64)
    (bad / "winner.yaml").write_text(text)
    with pytest.raises(ConfigError, match="base_model.sha256"):
        apply_winner(bad / "winner.yaml")


@pytest.mark.slow
def test_export_from_a_storage_url_by_pick(real_run: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{(real_run / 'study.db').resolve()}"
    result = export_winner(
        real_run,
        storage=url,
        study="tiny",
        pick="min-size",
        out=tmp_path / "w",
        measure_latency=False,
    )
    w = yaml.safe_load((tmp_path / "w" / "winner.yaml").read_text())
    assert w["pick"] == "min-size" and result.trial == w["trial"]
    assert w["metrics"]["measured_latency_ms"] is None
    assert "Not measured" in (tmp_path / "w" / "card.md").read_text()


@pytest.mark.slow
def test_export_trains_a_never_trained_plan_for_its_step_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plan costed over budget was never trained: export trains it, in steps when the
    experiment budgets recovery in steps."""
    from search.cli import main

    try:
        from _tiny import write_tiny_experiment
    except ImportError:
        from tests._tiny import write_tiny_experiment

    monkeypatch.chdir(tmp_path)
    exp = write_tiny_experiment(
        tmp_path,
        trials=2,
        budgets={"latency_ms": 1e-6, "memory_kb": 1e6, "flash_kb": 1e6},
        recovery={"epochs": 1, "steps": 3, "batch_size": 16, "lr": 0.01},
    )
    assert main(["run", str(exp), "--no-progress"]) == 0
    run_dir = tmp_path / "experiments" / "runs" / "tiny"
    lines: list[str] = []
    export_winner(run_dir, trial=0, allow_infeasible=True, log=lines.append)
    w = yaml.safe_load((run_dir / "winner" / "winner.yaml").read_text())
    assert w["weights_from"] == "trained at export"
    assert any("training it now (3 steps)" in line for line in lines), lines

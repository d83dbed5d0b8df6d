"""`budget_margin: p90`: the latency budget checked against the profile's pessimistic bound.

Real tiny searches (tests/_tiny.py) on the `mcu` profile, one with a measured latency error
added to it; bad input goes through the real CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from optuna.trial import TrialState

from search._format import number
from search.config import load_experiment
from search.errors import ConfigError
from search.export import export_winner
from search.hardware import constraint_values, estimate_cost, load_profile
from search.review import latency_band, load_run
from search.study import run_search
from tests._tiny import run_cli, write_tiny_experiment

P90 = 0.25


def profile_with_error(folder: Path, p90: float = P90) -> Path:
    """The built-in `mcu` profile plus a measured latency error, as a user's YAML file."""
    data = load_profile("mcu").to_dict()
    data["latency_error"] = {"p90": p90, "source": "test: a made-up calibration"}
    path = folder / "mcu_measured.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def budget_between(folder: Path, target: Path) -> float:
    """A latency budget just above the uncompressed tiny model's prediction, so that its plan
    (a warm-start recipe) meets it as predicted but not at its p90 bound."""
    import importlib.util

    write_tiny_experiment(folder)
    spec = importlib.util.spec_from_file_location("tinytask_probe", folder / "tinytask.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    base = estimate_cost(module.model(), (1, 8, 8), load_profile(target)).latency_ms
    return base * 1.05


def tiny(folder: Path, **changes: Any):
    path = write_tiny_experiment(folder, **changes)
    return load_experiment(path).with_overrides(out="run")


def test_config_field_is_validated(tmp_path: Path) -> None:
    assert tiny(tmp_path).budget_margin == "none"  # off by default
    assert tiny(tmp_path, budget_margin="p90").budget_margin == "p90"
    assert tiny(tmp_path, budget_margin="none").budget_margin == "none"
    with pytest.raises(ConfigError, match=r"budget_margin: 'p95' is not one of \['none', 'p90'\]"):
        tiny(tmp_path, budget_margin="p95")
    with pytest.raises(ConfigError, match="budget_margin: bounds the predicted latency"):
        tiny(tmp_path, budget_margin="p90", latency="measured", target="host")


def test_margin_scales_only_the_latency_constraint() -> None:
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.Flatten())
    profile = load_profile("mcu")
    cost = estimate_cost(net, (1, 8, 8), profile)
    budgets = {"latency_ms": 1.0, "memory_kb": 100.0}
    plain = constraint_values(cost, budgets, profile=profile)
    bound = constraint_values(cost, budgets, profile=profile, latency_margin=P90)
    assert bound["latency_ms"] == pytest.approx(cost.latency_ms * (1 + P90) - 1)
    assert plain["latency_ms"] == pytest.approx(cost.latency_ms - 1)
    assert bound["memory_kb"] == plain["memory_kb"]
    assert latency_band(2.7, 0.185) == pytest.approx((2.7 / 1.185, 3.1995))
    # An error over 100 % (cloud_gpu's p90 is 2.1): the band stays positive, never 0 ms.
    assert latency_band(1.0, 1.5) == pytest.approx((0.4, 2.5))


def test_p90_budget_checks_the_pessimistic_bound(in_tmp: Path) -> None:
    target = profile_with_error(in_tmp)
    budget = budget_between(in_tmp, target)
    exp = tiny(in_tmp, target=str(target), budget_margin="p90", budgets={"latency_ms": budget})
    result = run_search(exp, progress=False, log=lambda _m: None)
    trials = result.study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) >= 6
    assert result.study.user_attrs["budget_margin"] == {"bound": "p90", "latency_error": P90}
    assert result.study.user_attrs["experiment"]["budget_margin"] == "p90"
    caught = 0
    for t in trials:
        ua = t.user_attrs
        if ua["status"] == "duplicate":  # a repeat holds its first trial's status
            continue
        lat = ua["latency_ms"]
        assert ua["latency_bound_ms"] == pytest.approx(lat * (1 + P90))
        assert t.constraints["latency_ms"] == pytest.approx(lat * (1 + P90) / budget - 1)
        over = lat * (1 + P90) > budget
        assert (ua["status"] == "over_budget") == over, (t.number, lat, ua["status"])
        caught += over and lat <= budget
    # The uncompressed plan meets the budget as predicted but not at its p90 bound.
    assert caught >= 1
    run = load_run(result.storage_url, exp.name)
    assert all(t.value("latency_ms") * (1 + P90) <= budget for t in run.front_trials)

    # The model card prints the prediction with its band and the bound that was checked.
    knee = run.trial(run.knee)
    lat = float(knee.value("latency_ms"))
    card = (export_winner(exp.run_dir, pick="knee").winner_dir / "card.md").read_text()
    band = f"{lat:.3g} ms ({lat / (1 + P90):.3g}-{lat * (1 + P90):.3g} ms, p90)"
    assert f"Predicted latency {band}" in card
    assert "| latency_ms | " in card and f"| {band} | {number(budget)} ms | ok |" in card
    assert f"pessimistic bound, {lat * (1 + P90):.3g} ms (`budget_margin: p90`)" in card
    assert "test: a made-up calibration" in card  # where the error figure comes from


def test_without_margin_the_prediction_is_checked(in_tmp: Path) -> None:
    target = profile_with_error(in_tmp)
    budget = budget_between(in_tmp, target)
    exp = tiny(in_tmp, target=str(target), budgets={"latency_ms": budget})
    result = run_search(exp, progress=False, log=lambda _m: None)
    assert result.study.user_attrs["budget_margin"] == {"bound": "none", "latency_error": 0.0}
    for t in result.study.get_trials(states=(TrialState.COMPLETE,)):
        ua = t.user_attrs
        assert "latency_bound_ms" not in ua
        assert t.constraints["latency_ms"] == pytest.approx(ua["latency_ms"] / budget - 1)
        assert (ua["status"] == "over_budget") == (ua["latency_ms"] > budget)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"budget_margin": "p90"}, "p90 needs a measured latency error, and profile 'mcu'"),
        ({"budget_margin": "often"}, "'often' is not one of ['none', 'p90']"),
        ({"budget_margin": 90}, "90 is not one of ['none', 'p90']"),
    ],
)
def test_cli_refuses_a_bad_margin_in_one_line(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    if changes.get("budget_margin") == "p90":
        # The built-in mcu profile now stores a measured error: a copy without it stands for
        # a profile nobody has measured.
        data = load_profile("mcu").to_dict()
        data["latency_error"] = None
        (tmp_path / "mcu.yaml").write_text(yaml.safe_dump(data))
        changes = {**changes, "target": str(tmp_path / "mcu.yaml")}
    path = write_tiny_experiment(tmp_path, **changes)
    proc = run_cli("run", str(path), "--out", "run", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: budget_margin: "), lines
    assert message in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_cli_refuses_an_unmeasured_margin_before_spawning_workers(tmp_path: Path) -> None:
    """`--jobs 2` validates `budget_margin` in the parent, like a single process does."""
    data = load_profile("mcu").to_dict()
    data["latency_error"] = None
    (tmp_path / "mcu.yaml").write_text(yaml.safe_dump(data))
    path = write_tiny_experiment(tmp_path, budget_margin="p90", target=str(tmp_path / "mcu.yaml"))
    proc = run_cli("run", str(path), "--out", "run", "--jobs", "2", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: budget_margin: "), lines
    assert not (tmp_path / "run").exists()

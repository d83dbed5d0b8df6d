"""The hard built-in task `gratings`: generated data, a base network that breaks the MCU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from search.compress import compressible_layers
from search.config import load_experiment
from search.errors import ConfigError
from search.hardware import constraint_values, estimate_cost, load_profile
from search.tasks import GratingsCNN, gratings_splits

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = REPO / "experiments" / "gratings_mcu.yaml"


def test_splits_are_fixed_shaped_and_use_every_class() -> None:
    first, again = gratings_splits(), gratings_splits()
    for (x, y), (x2, y2), n in zip(first, again, (4000, 1000, 1000)):
        assert x.shape == (n, 3, 16, 16) and x.dtype == torch.float32
        assert torch.equal(x, x2) and torch.equal(y, y2)  # the same data every time
        assert set(y.tolist()) == set(range(10))
    x_train = first[0][0]
    assert abs(float(x_train.mean())) < 1e-3 and abs(float(x_train.std()) - 1) < 1e-3
    assert not torch.equal(first[0][0][:1000], first[1][0])  # splits are separate draws


def test_base_network_breaks_the_mcu_budgets_of_the_benchmark_experiment() -> None:
    exp = load_experiment(str(EXPERIMENT))
    assert exp.task == "gratings" and exp.target == "mcu"
    profile = load_profile("mcu")
    model = GratingsCNN().eval()
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 10)
    cost = estimate_cost(model, (3, 16, 16), profile)
    budgets = {**profile.budgets, **exp.budgets}
    assert cost.latency_ms >= 3 * budgets["latency_ms"]
    # Uniform int8 alone is still over: a plan must also shed work.
    bits = {x.name: 8 for x in compressible_layers(model)}
    int8 = estimate_cost(model, (3, 16, 16), profile, layer_bits=bits, activation_bits=8)
    assert int8.latency_ms > budgets["latency_ms"]
    over = constraint_values(cost, budgets, profile=profile)
    assert over["flash_kb"] > 0  # float32 weights do not fit the board's flash
    assert over["memory_kb"] > 0  # nor float32 activations its SRAM


def test_at_least_25_per_layer_decisions() -> None:
    layers = compressible_layers(GratingsCNN())
    space = yaml.safe_load((REPO / "spaces" / "joint.yaml").read_text())
    assert {"lowrank", "prune", "quantize"} <= set(space)
    decisions = len(layers) + sum(x.prunable for x in layers) + sum(x.factorizable for x in layers)
    assert decisions >= 25


def test_an_unknown_built_in_task_names_the_allowed_ones(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("task: gratingz\n")
    with pytest.raises(ConfigError, match="gratings"):
        load_experiment(str(path))

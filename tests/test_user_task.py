"""A user model with residual and concat paths, searched end to end over the joint space:
every technique appears among the trials, and no trial fails because of an operator."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from search.cli import main

pytestmark = pytest.mark.slow

TASK = '''\
import torch
from torch import nn
from torch.utils.data import TensorDataset


class SqueezeExcite(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class ResConcatNet(nn.Module):
    """Residual add, channel concat, depthwise conv and squeeze-excite."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pw = nn.Conv2d(32, 32, 1)
        self.se = SqueezeExcite(32)
        self.branch_a = nn.Conv2d(32, 16, 1)
        self.branch_b = nn.Conv2d(32, 16, 3, padding=1)
        self.mix = nn.Conv2d(32, 48, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(48)
        self.head = nn.Linear(48, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.se(self.pw(torch.relu(self.dw(x))))
        x = torch.cat([self.branch_a(x), self.branch_b(x)], 1)
        x = torch.relu(self.bn(self.mix(x)))
        return self.head(x.mean((2, 3)))


def model():
    return ResConcatNet()


def data():
    # The class is the brightest quadrant of a noisy 16x16 image: learnable in a few epochs.
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (480,), generator=g)
    x = torch.randn(480, 3, 16, 16, generator=g) * 0.5
    for i, c in enumerate(y.tolist()):
        r, q = divmod(c, 2)
        x[i, :, r * 8:(r + 1) * 8, q * 8:(q + 1) * 8] += 1.5
    return tuple(TensorDataset(x[a:b], y[a:b]) for a, b in ((0, 320), (320, 400), (400, 480)))
'''


def test_all_five_techniques_on_a_residual_concat_user_model(in_tmp: Path):
    (in_tmp / "rctask.py").write_text(TASK)
    exp = {
        "name": "user-rc",
        "task": {
            "model": "rctask:model",
            "data": "rctask:data",
            "input_shape": [3, 16, 16],
            "num_classes": 4,
            "train_epochs": 4,
        },
        "target": "phone",
        "budgets": {"latency_ms": 1000},
        "max_accuracy_drop": None,
        "trials": 10,
        "seed": 1,
        # Every plan trained to the end: students here are slower than the base network, so
        # early stop would (rightly) cut them as dominated.
        "recovery": {"epochs": 1, "student_epochs": 2, "early_stop": False},
    }
    path = in_tmp / "user.yaml"
    path.write_text(yaml.safe_dump(exp))
    assert main(["run", str(path), "--no-progress"]) == 0

    db = in_tmp / "experiments" / "runs" / "user-rc" / "study.db"
    study = optuna.load_study(study_name="user-rc", storage=f"sqlite:///{db}")
    assert not study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    trained = [t.user_attrs for t in study.trials if t.user_attrs.get("status") == "trained"]
    plans = [a["plan"] for a in trained]
    assert any(p["architecture"]["family"] != "base" for p in plans), "no student"
    assert any(r < 1 for p in plans for r in p["lowrank"]["ranks"].values()), "no low-rank"
    assert any(
        (p["prune"]["global_ratio"] or 0) > 0 or any(r > 0 for r in p["prune"]["ratios"].values())
        for p in plans
    ), "no structured pruning"
    assert any(b < 32 for p in plans for b in p["quantize"]["weight_bits"].values()), "no bits"
    assert all(p["distill"]["enabled"] for p in plans), "recovery without distillation"
    # Pruning really removed channels somewhere: fewer parameters than the base model.
    base_params = study.user_attrs["base_metrics"]["params"]
    assert any(
        a["params"] < base_params
        for a, p in zip(trained, plans)
        if p["architecture"]["family"] == "base"
    )

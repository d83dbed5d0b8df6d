"""A tiny experiment for the scale, crash and failure tests: trials of a fraction of a second.

`write_tiny_experiment(folder)` writes a user task (a 3-layer CNN on 8x8 synthetic data), a
small search space and an experiment file using them, and returns the experiment's path.
Setting `TINY_TRIAL_SLEEP=<seconds>` makes every training step sleep that long: trials then
last long enough to be killed in the middle, at no CPU cost.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent

TASK_PY = '''\
"""A tiny user task: 8x8 single-channel inputs, 4 classes, a 3-layer CNN."""
import os
import time

import torch
from torch import nn
from torch.utils.data import TensorDataset


def _slow(module, _inputs):
    # Makes a trial last long enough to be killed in the middle (sleeping costs no CPU).
    delay = float(os.environ.get("TINY_TRIAL_SLEEP", "0") or 0)
    if delay and module.training and torch.is_grad_enabled():
        time.sleep(delay)


def model():
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )
    net.register_forward_pre_hook(_slow)
    return net


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(480, 1, 8, 8, generator=g)
    # The class is the sign pattern of the two halves' means: learnable in a few epochs.
    y = (x[:, 0, :4].mean((1, 2)) > 0).long() + 2 * (x[:, 0, 4:].mean((1, 2)) > 0).long()
    return (TensorDataset(x[:320], y[:320]), TensorDataset(x[320:400], y[320:400]),
            TensorDataset(x[400:], y[400:]))
'''

SPACE = {
    "name": "tiny",
    "prune": {"ratio": [0.0, 0.25, 0.5]},
    "quantize": {"weight_bits": [8, 16, 32], "activation_bits": [8, 32]},
}


def experiment_dict(name: str = "tiny", *, trials: int = 6, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": name,
        "task": {
            "model": "tinytask:model",
            "data": "tinytask:data",
            "input_shape": [1, 8, 8],
            "num_classes": 4,
            "train_epochs": 3,
        },
        "target": "mcu",
        "space": "tiny_space.yaml",
        "objectives": ["accuracy", "latency_ms", "weight_bytes"],
        "max_accuracy_drop": None,
        "trials": trials,
        "seed": 0,
        # Every feasible plan trains (none is skipped as already lossless): these tests kill,
        # fail and time trials in the middle of training.
        "recovery": {"epochs": 1, "batch_size": 64, "lr": 0.01, "skip_within": None},
    }
    data.update(changes)
    return data


def write_tiny_experiment(
    folder: Path, name: str = "tiny", *, trials: int = 6, **changes: Any
) -> Path:
    """Write tinytask.py, tiny_space.yaml and NAME.yaml into `folder`; returns NAME.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tinytask.py").write_text(TASK_PY)
    (folder / "tiny_space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    path = folder / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(experiment_dict(name, trials=trials, **changes), sort_keys=False)
    )
    return path


def tiny_objective(folder: Path, space: dict[str, Any] | None = None, **changes: Any) -> Any:
    """The `TrialObjective` of a tiny experiment written into `folder` (with `space` as its
    search space instead of the tiny one), its base model trained as a run would."""
    from search.config import load_experiment
    from search.objective import TrialObjective
    from search.study import load_space, load_target
    from search.tasks import load_task

    path = write_tiny_experiment(folder, **changes)
    if space is not None:
        (folder / "tiny_space.yaml").write_text(yaml.safe_dump(space))
    exp = load_experiment(path).with_overrides(out=str(folder / "run"))
    task = load_task(exp, log=lambda _m: None)
    return TrialObjective(exp, task, load_space(exp), load_target(exp))


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for `python -m search` subprocesses: the checkout importable, 1 thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONWARNINGS"] = "ignore"
    env.update(extra)
    return env


FAST_GRACE_S = 3

# The real CLI's `main()` in a subprocess, with one torch thread per process (the CLI gives a
# single process every core; on a shared 2-core machine a second thread only spins), and
# optionally short heartbeats so a killed trial goes stale, and is retried, within a test
# rather than after the 30 s grace period.
_WRAPPER = """\
import sys
import torch
import search.cli as cli
import search.study as study
cli._set_threads = lambda jobs: torch.set_num_threads(1)
if {fast}:
    study.HEARTBEAT_S, study.GRACE_S = 1, {grace}
raise SystemExit(cli.main())
"""


def cli_command(*args: str, fast_heartbeat: bool = False) -> list[str]:
    code = _WRAPPER.format(fast=fast_heartbeat, grace=FAST_GRACE_S)
    return [sys.executable, "-c", code, *args]


def run_cli(
    *args: str,
    cwd: Path,
    timeout: float = 300,
    fast_heartbeat: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_command(*args, fast_heartbeat=fast_heartbeat),
        cwd=cwd,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )

"""Recovery made for a trained network: warm-up, BatchNorm frozen (and so foldable), BatchNorm
re-estimated after pruning, accuracy measured before any training, and recovery skipped where
there is nothing to recover. Real models, real searches on the tiny task; nothing is mocked."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from search.compress._quantization import activation_quantizers, attach_weight_quant
from search.config import Recovery, load_experiment
from search.pipeline import build, prepare, recovery_kind
from search.review import load_run, write_outputs
from search.study import run_search
from search.tasks import fit, load_task, reestimate_batchnorm
from search.tasks._train import warmup_cosine
from spaces import (
    ArchitectureConfig,
    CompressionPlan,
    LowRankConfig,
    PruneConfig,
    QuantizeConfig,
)
from tests._tiny import write_tiny_experiment


def conv_bn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )
    with torch.no_grad():  # statistics and affine terms far from their initial values
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
        net[1].weight.uniform_(-2, 2)  # negative scales too
        net[1].bias.uniform_(-1, 1)
    return net


def test_warmup_then_cosine() -> None:
    f = warmup_cosine(100, 10)
    assert [round(f(s), 2) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]  # linear up to the full rate
    assert f(10) == 1.0 and f(55) == pytest.approx(0.5) and f(99) < 0.01
    plain = warmup_cosine(100, 0)  # no warm-up: the cosine annealing recovery used before
    assert all(plain(s) == pytest.approx(0.5 * (1 + math.cos(math.pi * s / 100))) for s in (0, 50))


def test_fit_freezes_batchnorm_statistics_when_told() -> None:
    x, y = torch.randn(128, 3, 6, 6) * 3 + 1, torch.randint(0, 2, (128,))

    def means(freeze: float | None) -> list[torch.Tensor]:
        """The running mean before training and after each of its 8 steps."""
        net = conv_bn()
        seen = [net[1].running_mean.clone()]
        fit(
            net,
            (x, y),
            steps=8,
            lr=1e-3,
            batch_size=16,
            freeze_bn=freeze,
            on_step=lambda _s, m: seen.append(m[1].running_mean.clone()),
        )
        return [*seen, net[1].running_mean.clone()]

    def moves(seen: list[torch.Tensor]) -> list[bool]:
        return [not torch.equal(a, b) for a, b in zip(seen, seen[1:])]

    assert moves(means(0.0)) == [False] * 8  # frozen from the start: the trained statistics
    assert moves(means(None)) == [True] * 8  # never frozen: they follow every batch
    assert moves(means(0.5)) == [True] * 4 + [False] * 4  # frozen after 4 of 8 steps


def test_frozen_batchnorm_folds_exactly_into_per_channel_int8_weights() -> None:
    """What QAT folding would train against is what recovery trains: per-channel symmetric
    rounding commutes with BatchNorm's per-channel scale, so conv(q(W)) -> frozen BN equals
    conv(q(W * s)) + b, the folded layer the runtimes execute."""
    net = conv_bn().eval()
    conv, bn = net[0], net[1]
    x = torch.randn(4, 3, 6, 6)
    attach_weight_quant(conv, 8)
    unfolded = bn(conv(x))

    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(3, 8, 3, padding=1, bias=True)
    with torch.no_grad():
        fused.weight.copy_(conv.parametrizations.weight.original * scale.view(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
    attach_weight_quant(fused, 8)
    assert torch.allclose(fused(x), unfolded, atol=1e-5)


def test_batchnorm_reestimated_on_the_inputs_it_now_sees() -> None:
    net = conv_bn().eval()
    x = torch.randn(256, 3, 6, 6) * 2 + 0.5
    reestimate_batchnorm(net, x, batch_size=32)
    with torch.no_grad():
        out = net[0](x)
    assert torch.allclose(net[1].running_mean, out.mean((0, 2, 3)), atol=1e-4)
    assert torch.allclose(net[1].running_var, out.var((0, 2, 3)), rtol=1e-2)
    assert not net.training and net[1].momentum == 0.1  # as it was


def test_recovery_kind_names_what_a_plan_asks() -> None:
    q8 = QuantizeConfig(default_weight_bits=8, activation_bits=8)
    assert recovery_kind(CompressionPlan(quantize=q8)) == "quantize"
    assert recovery_kind(CompressionPlan()) == "quantize"
    assert recovery_kind(CompressionPlan(prune=PruneConfig(ratios={"a": 0.3}))) == "structure"
    assert recovery_kind(CompressionPlan(prune=PruneConfig(sparsity=0.5))) == "structure"
    assert recovery_kind(CompressionPlan(lowrank=LowRankConfig(ranks={"a": 0.5}))) == "structure"
    assert recovery_kind(CompressionPlan(lowrank=LowRankConfig(ranks={"a": 1.0}))) == "quantize"
    student = CompressionPlan(architecture=ArchitectureConfig("mobilenetv2", 0.5))
    assert recovery_kind(student) == "student"
    rec = Recovery()
    assert rec.schedule("quantize").lr < rec.schedule("structure").lr < rec.schedule("student").lr


def test_prepare_calibrates_and_reestimates_a_pruned_network(tmp_path: Path) -> None:
    exp = load_experiment(write_tiny_experiment(tmp_path))
    task = load_task(exp, log=lambda _m: None)
    plan = CompressionPlan(
        prune=PruneConfig(ratios={"0": 0.5}),
        quantize=QuantizeConfig(default_weight_bits=8, activation_bits=8),
    )
    compressed = build(plan, task, calibrate=False)  # as the search builds to cost a plan
    quants = activation_quantizers(compressed.model)
    assert quants and not any(math.isfinite(q.min_val) for q in quants)
    prepare(compressed, plan, task)
    assert all(math.isfinite(q.min_val) and math.isfinite(q.max_val) for q in quants)
    assert not compressed.model.training


def _csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "trials.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_accuracy_before_recovery_is_recorded_and_lossless_plans_skip_recovery(
    in_tmp: Path,
) -> None:
    space = {"quantize": {"weight_bits": [8], "activation_bits": [8]}}  # one plan: int8

    def search(name: str, skip: float | None) -> list[dict[str, str]]:
        path = write_tiny_experiment(in_tmp / name, name=name, trials=1)
        (in_tmp / name / "tiny_space.yaml").write_text(yaml.safe_dump({"name": "q", **space}))
        data = yaml.safe_load(path.read_text())
        data["recovery"]["skip_within"] = skip
        path.write_text(yaml.safe_dump(data))
        exp = load_experiment(path).with_overrides(out=str(in_tmp / name / "run"))
        result = run_search(exp, progress=False, log=lambda _line: None)
        write_outputs(load_run(result.storage_url, exp.name), result.run_dir)
        return _csv_rows(result.run_dir)

    skipped = search("skip", 1.0)  # anything within 100 points: never trained
    (row,) = [r for r in skipped if r["status"] == "trained"]
    assert row["recovery_skipped"] == "True"
    assert float(row["accuracy"]) == float(row["accuracy_before_recovery"])
    assert float(row["train_s"]) < 5

    trained = search("train", None)  # the rule off: the same plan is fine-tuned
    (row,) = [r for r in trained if r["status"] == "trained"]
    assert row["recovery_skipped"] == "False"
    assert 0.0 <= float(row["accuracy_before_recovery"]) <= 1.0

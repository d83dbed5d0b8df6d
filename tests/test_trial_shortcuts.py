"""The work a trial skips: repeated plans, hopeless plans at the recovery checkpoint, unset
activation ranges while costing; and the objective hook the benchmark's sequential search uses.

Real searches on the tiny user task with a SQLite study; nothing is mocked.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

import search.objective
import search.study
from search.compress._quantization import activation_quantizers
from search.config import load_experiment
from search.errors import ConfigError
from search.objective import TrialObjective
from search.pipeline import build, calibrate_build, checkpoint_at
from search.record import plan_key
from search.review import load_run
from search.study import load_space, load_target, run_search
from search.tasks import fit, load_task
from spaces import CompressionPlan, QuantizeConfig
from tests._tiny import write_tiny_experiment


def tiny(folder: Path, *, space: dict[str, Any] | None = None, out: str = "run", **changes: Any):
    path = write_tiny_experiment(folder, **changes)
    if space is not None:
        (folder / "tiny_space.yaml").write_text(yaml.safe_dump(space))
    return load_experiment(path).with_overrides(out=out)


def test_fit_calls_on_epoch_between_epochs_and_may_stop() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    model = torch.nn.Linear(4, 2)
    seen: list[tuple[int, bool]] = []

    def note(epoch: int, m: torch.nn.Module) -> None:
        seen.append((epoch, m.training))
        m.eval()  # fit puts it back in train mode

    fit(model, (x, y), epochs=3, lr=0.01, on_epoch=note)
    assert seen == [(1, True), (2, True)]  # after every epoch but the last

    def stop(epoch: int, m: torch.nn.Module) -> None:
        raise RuntimeError(f"stop after {epoch}")

    with pytest.raises(RuntimeError, match="stop after 1"):
        fit(model, (x, y), epochs=3, lr=0.01, on_epoch=stop)


def test_checkpoint_is_half_the_recovery() -> None:
    assert [checkpoint_at(n) for n in (1, 2, 3, 10, 30)] == [None, 1, 1, 5, 15]


def test_costing_leaves_activation_ranges_unset(in_tmp: Path) -> None:
    exp = tiny(in_tmp)
    task = load_task(exp, log=lambda _m: None)
    plan = CompressionPlan(quantize=QuantizeConfig(activation_bits=8))
    lazy = build(plan, task, calibrate=False)
    eager = build(plan, task)
    assert activation_quantizers(lazy.model)
    assert all(not torch.isfinite(q.min_val) for q in activation_quantizers(lazy.model))
    calibrate_build(lazy, task)
    for a, b in zip(activation_quantizers(lazy.model), activation_quantizers(eager.model)):
        assert torch.equal(a.min_val, b.min_val) and torch.equal(a.max_val, b.max_val)


def test_a_repeated_plan_is_answered_from_its_first_trial(in_tmp: Path) -> None:
    # Two plans in the whole space: the sampler must repeat itself.
    space = {"name": "two", "quantize": {"weight_bits": [8], "activation_bits": [8, 32]}}
    exp = tiny(in_tmp, space=space, trials=5)
    result = run_search(exp, progress=False, log=lambda _m: None)

    trials = result.study.get_trials(states=(TrialState.COMPLETE,))
    first = {t.number: t for t in trials if t.user_attrs["status"] != "duplicate"}
    repeats = [t for t in trials if t.user_attrs["status"] == "duplicate"]
    keys = [t.user_attrs["plan_key"] for t in first.values()]
    assert len(keys) == len(set(keys)) == 2  # each plan evaluated once
    # Repeats do not count toward `trials`; the search stops when it only repeats itself.
    cap = search.study.PROPOSALS_PER_TRAINING
    assert result.duplicates == len(repeats) == cap and result.completed == 2 + cap
    assert result.trainings == 2
    for t in repeats:
        earlier = first[t.user_attrs["duplicate_of"]]
        assert t.user_attrs["plan_key"] == earlier.user_attrs["plan_key"]
        assert t.values == earlier.values
        assert t.constraints == earlier.constraints
        assert "weights" not in t.user_attrs and "train_s" not in t.user_attrs
    run = load_run(result.storage_url, exp.name)
    assert not {t.number for t in repeats} & set(run.front)
    assert run.counts()["duplicate"] == cap
    # Exporting a repeat names the trial that holds the plan's weights.
    with pytest.raises(
        ConfigError, match=f"export --trial {repeats[0].user_attrs['duplicate_of']}"
    ):
        run.pick(trial=repeats[0].number, allow_infeasible=True)


def test_a_hopeless_plan_stops_at_the_checkpoint(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Accuracy floor = the base accuracy, and a margin no plan can meet: every trained plan
    # is hopeless at its checkpoint.
    monkeypatch.setattr(search.objective, "EARLY_STOP_MARGIN", -1.0)
    recovery = {"epochs": 4, "lr": 0.01, "skip_within": None}  # every plan is fine-tuned
    exp = tiny(in_tmp, trials=3, max_accuracy_drop=0.0, recovery=recovery)
    result = run_search(exp, progress=False, log=lambda _m: None)

    trials = result.study.get_trials(states=(TrialState.COMPLETE,))
    stopped = [t for t in trials if t.user_attrs["status"] == "stopped_early"]
    assert stopped and result.stopped_early == len(stopped)
    assert all(t.user_attrs["status"] in ("stopped_early", "over_budget") for t in trials)
    for t in stopped:
        ua = t.user_attrs
        assert ua["stopped_at_epoch"] == checkpoint_at(4) == 2
        assert t.values[0] == ua["checkpoint_accuracy"] == ua["accuracy"]
        assert "needs" in ua["early_stop_reason"] and "weights" not in ua
    run = load_run(result.storage_url, exp.name)
    assert not run.front and run.counts()["stopped_early"] == len(stopped)

    # `recovery.early_stop: false` trains every plan to the end.
    exp = tiny(
        in_tmp,
        out="run-off",
        trials=2,
        max_accuracy_drop=0.0,
        recovery={**recovery, "early_stop": False},
    )
    result = run_search(exp, progress=False, log=lambda _m: None)
    statuses = {t.user_attrs.get("status") for t in result.study.get_trials()}
    assert "stopped_early" not in statuses and "trained" in statuses


def test_needed_accuracy_is_the_floor_or_a_cheaper_better_plan(in_tmp: Path) -> None:
    exp = tiny(in_tmp, max_accuracy_drop=0.5)
    task = load_task(exp, log=lambda _m: None)
    obj = TrialObjective(exp, task, load_space(exp), load_target(exp))
    floor = obj.baseline.metrics["accuracy"] - 0.5
    study = optuna.create_study(
        storage=f"sqlite:///{in_tmp / 'needed.db'}", directions=["maximize"] * 3
    )
    cheap = {"latency_ms": 1.0, "weight_bytes": 100, "constraints": {"latency_ms": -0.5}}
    study.add_trial(
        optuna.trial.create_trial(
            values=[0.9, 1.0, 100],
            user_attrs={"status": "trained", "accuracy": 0.9, **cheap},
        )
    )
    _, cost = obj.build_and_cost(CompressionPlan())
    dearer = dataclasses.replace(cost, latency_ms=2.0, weight_bytes=200)
    cheaper = dataclasses.replace(cost, latency_ms=0.5, weight_bytes=200)
    assert obj.needed_accuracy(study, dearer) == pytest.approx(max(floor, 0.9))
    assert obj.needed_accuracy(study, cheaper) == pytest.approx(floor)  # nothing cheaper yet

    # An objective only training reveals (f1): dominance cannot be judged before training.
    with_f1 = tiny(in_tmp, max_accuracy_drop=0.5, objectives=["accuracy", "latency_ms", "f1"])
    obj_f1 = TrialObjective(with_f1, task, load_space(exp), load_target(exp))
    assert obj_f1.needed_accuracy(study, dearer) == pytest.approx(floor)
    # Accuracy not an objective: only the floor counts, and there is none here.
    by_size = tiny(in_tmp, max_accuracy_drop=None, objectives=["weight_bytes", "latency_ms"])
    obj_size = TrialObjective(by_size, task, load_space(exp), load_target(exp))
    assert obj_size.needed_accuracy(study, dearer) is None


class Int8Only(TrialObjective):
    """Every plan's bits replaced: shows `run_search` ran this class, not the default."""

    def __init__(self, *args: Any, bits: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bits = bits

    def suggest(self, trial: Any) -> CompressionPlan:
        plan = super().suggest(trial)
        return plan.replace(quantize=QuantizeConfig(default_weight_bits=self.bits))


def test_run_search_takes_an_objective_class(in_tmp: Path) -> None:
    exp = tiny(in_tmp, trials=2)
    result = run_search(
        exp,
        progress=False,
        log=lambda _m: None,
        objective_cls=Int8Only,
        objective_kwargs={"bits": 8},
    )
    plans = [t.user_attrs["plan"] for t in result.study.get_trials(states=(TrialState.COMPLETE,))]
    assert plans and all(p["quantize"]["default_weight_bits"] == 8 for p in plans)
    assert (
        plan_key(CompressionPlan.from_dict(plans[0]).to_dict())
        == result.study.trials[0].user_attrs["plan_key"]
    )


def test_a_student_is_never_stopped_early(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same impossible bar as above, but every plan is a student: it trains to the end.
    monkeypatch.setattr(search.objective, "EARLY_STOP_MARGIN", -1.0)
    space = {"name": "s", "architecture": {"family": ["mobilenetv2"], "width": [0.25, 0.5]}}
    recovery = {"epochs": 2, "student_epochs": 2, "skip_within": None}
    kw = {"space": space, "trials": 2, "max_accuracy_drop": 0.0, "recovery": recovery}
    # Every student is larger than the tiny network: offered only when asked for.
    with pytest.raises(ConfigError, match="larger_students: true"):
        run_search(tiny(in_tmp, **kw), progress=False, log=lambda _m: None)
    assert not (in_tmp / "run").exists()  # refused: nothing written
    exp = tiny(in_tmp, larger_students=True, **kw)
    result = run_search(exp, progress=False, log=lambda _m: None)
    statuses = [t.user_attrs.get("status") for t in result.study.get_trials()]
    assert "stopped_early" not in statuses and "trained" in statuses

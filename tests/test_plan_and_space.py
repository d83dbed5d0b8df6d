"""CompressionPlan round trips and the search space's suggestions (driven by FixedTrial)."""

from __future__ import annotations

import contextlib

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spaces import (
    ArchitectureConfig,
    CompressionPlan,
    LayerInfo,
    PlanError,
    PruneConfig,
    QuantizeConfig,
    SearchSpace,
    SpaceError,
    flatten_plan,
    layer_rows,
)
from tests.conftest import REPO

LAYERS = [
    LayerInfo("conv1", "conv", 1, 8, (3, 3)),
    LayerInfo("conv2", "conv", 8, 16, (3, 3)),
    LayerInfo("fc", "linear", 16, 10, prunable=False),
]


def layers_for(arch: ArchitectureConfig):
    return LAYERS if arch.family == "base" else [LayerInfo("s.0", "conv", 1, 4, (3, 3))]


def test_plan_round_trips_through_dict_and_yaml():
    plan = CompressionPlan(
        prune=PruneConfig(ratios={"conv1": 0.5, "conv2": 0.25}, importance="taylor"),
        quantize=QuantizeConfig(weight_bits={"conv1": 4, "fc": 8}, activation_bits=8),
    )
    assert CompressionPlan.from_dict(plan.to_dict()) == plan
    assert CompressionPlan.from_yaml(plan.to_yaml()) == plan
    assert plan.quantize.bits("conv1") == 4 and plan.quantize.bits("conv2") == 32
    assert plan.prune.ratio("fc") == 0.0
    assert "prune" in plan.describe() and "w4/8" in plan.describe()


def test_plan_flat_views_read_the_plan_and_its_stored_dict_alike():
    plan = CompressionPlan(
        prune=PruneConfig(ratios={"conv10": 0.5, "conv2": 0.25}),
        quantize=QuantizeConfig(weight_bits={"conv2": 4}, default_weight_bits=8),
    )
    flat = plan.flat()
    assert flat == flatten_plan(plan.to_dict())
    assert flat["prune.ratios.conv10"] == 0.5 and flat["quantize.weight_bits.conv2"] == 4
    assert flat["quantize.default_weight_bits"] == 8 and flat["architecture.family"] == "base"
    assert flatten_plan(None) == {} and layer_rows(None) == []
    rows = plan.layer_rows()
    assert rows == layer_rows(plan.to_dict())
    # Natural order (conv2 before conv10); unnamed layers take the default bits.
    assert [(r["layer"], r["bits"], r["prune_ratio"]) for r in rows] == [
        ("conv2", 4, 0.25),
        ("conv10", 8, 0.5),
    ]
    assert not any(r["prune_global"] for r in rows) and all(r["rank"] == 1.0 for r in rows)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"prune": {"ratios": {"conv1": 1.5}}}, "prune.ratios.conv1"),
        ({"quantize": {"weight_bits": {"conv1": 3}}}, "quantize.weight_bits.conv1"),
        ({"quantize": {"activation_bits": 4}}, "quantize.activation_bits"),
        ({"architecture": {"family": "resnet"}}, "architecture.family"),
        ({"prune": {"bogus": 1}}, "prune.bogus"),
        ({"extra": {}}, "extra"),
    ],
)
def test_plan_rejects_bad_values_naming_the_field(data, field):
    with pytest.raises(PlanError) as info:
        CompressionPlan.from_dict(data)
    assert info.value.field == field


def test_joint_space_suggests_per_layer_decisions():
    space = SearchSpace.from_file(REPO / "spaces" / "joint.yaml")
    params = {
        "arch.family": "base",
        "lowrank.mode": "svd",
        "prune.mode": "per_layer",
        "prune.importance": "l2",
        "prune.sparsity": 0.0,
        "act_bits": 8,
        "distill.alpha": 0.5,
        "distill.temperature": 2.0,
        # Each operator: a plan-wide setting, and layers that deviate from it when `vary` is on.
        "rank.all": 1.0,
        "rank.vary": True,
        "rank.conv1": 0.5,
        "rank.conv2": 1.0,
        "rank.fc": 1.0,
        "prune.all": 0.0,
        "prune.vary": True,
        "prune.conv1": 0.3,
        "prune.conv2": 0.0,
        "bits.all": 8,
        "bits.vary": True,
        "bits.conv1": 4,
        "bits.conv2": 8,
        "bits.fc": 8,
    }
    plan = space.suggest(optuna.trial.FixedTrial(params), layers_for, weight_bits=(4, 8, 32))
    assert plan.prune.ratio("conv1") == pytest.approx(0.3)
    assert "fc" not in dict(plan.prune.ratios)  # the classifier is not prunable
    assert plan.quantize.bits("conv1") == 4 and plan.quantize.activation_bits == 8
    assert plan.lowrank.rank("conv1") == 0.5
    assert plan.distill.alpha == 0.5


def test_space_offers_only_the_targets_precisions():
    space = SearchSpace.from_dict({"quantize": {"weight_bits": [2, 4, 8, 32]}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        plan = space.suggest(trial, layers_for, weight_bits=(8, 16, 32))
        seen |= {b for _, b in plan.quantize.weight_bits}
        study.tell(trial, 0.0)
    assert seen <= {8, 32} and seen


def test_student_gets_one_shared_bit_width_and_no_weight_ranking_operators():
    space = SearchSpace.from_dict(
        {
            "architecture": {"family": ["mobilenetv2"], "width": [0.5]},
            "prune": {"ratio": [0.2, 0.4]},
            "lowrank": {"rank": [0.5]},
            "quantize": {"weight_bits": [4, 8]},
        }
    )
    plan = space.suggest(optuna.trial.FixedTrial({"bits.student": 4}), layers_for)
    assert plan.architecture == ArchitectureConfig("mobilenetv2", 0.5, 1)
    assert plan.quantize.bits("s.0") == 4
    assert plan.prune.ratios == () and plan.lowrank.ranks == ()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"prune": {"ratio": {"low": 0.5, "high": 0.1}}}, "prune.ratio"),
        ({"prune": {"ratio": [1.5]}}, "prune.ratio"),
        ({"quantize": {"weight_bits": [3]}}, "quantize.weight_bits"),
        ({"quantize": {"weight_bits": {"low": 2, "high": 8}}}, "quantize.weight_bits"),
        ({"prune": "yes"}, "prune"),
        ({"lowrank": {"rnak": [0.5]}}, "lowrank.rnak"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_space_errors_name_the_field(data, field):
    with pytest.raises(SpaceError) as info:
        SearchSpace.from_dict(data, source="s.yaml")
    assert info.value.field == field and info.value.file == "s.yaml"


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-5, 40)
        | st.floats(allow_nan=True)
        | st.text(max_size=6),
        lambda kids: (
            st.lists(kids, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "prune",
                        "quantize",
                        "ratio",
                        "weight_bits",
                        "low",
                        "high",
                        "step",
                        "mode",
                        "architecture",
                        "family",
                        "name",
                        "x",
                    ]
                ),
                kids,
                max_size=4,
            )
        ),
        max_leaves=12,
    )
)
def test_space_loader_never_crashes(data):
    """Fuzz: any YAML-like value gives a valid space or a SpaceError, nothing else."""
    with contextlib.suppress(SpaceError):
        SearchSpace.from_dict(data, source="fuzz.yaml")


def test_recipe_params_replay_as_the_recipe():
    """Warm-start recipes are points of the space: suggest() turns them into the recipe's plan."""
    space = SearchSpace.from_file(REPO / "spaces" / "joint.yaml")
    params = space.recipe_params(
        LAYERS, weight_bits=8, activation_bits=8, prune=0.5, offered={"weight_bits": (8, 16)}
    )
    params |= {"distill.alpha": 0.7, "distill.temperature": 4.0}  # left to the sampler
    plan = space.suggest(optuna.trial.FixedTrial(params), layers_for, weight_bits=(8, 16))
    assert plan.architecture.family == "base"
    assert plan.prune.ratio("conv1") == pytest.approx(0.5) and plan.prune.importance == "l1"
    assert {b for _, b in plan.quantize.weight_bits} == {8}
    assert plan.quantize.activation_bits == 8
    assert all(r == 1.0 for _, r in plan.lowrank.ranks)
    # A value the target does not run snaps to the nearest one it does.
    fp32 = space.recipe_params(LAYERS, offered={"weight_bits": (8, 16)})
    assert fp32["bits.all"] == 16 and fp32["bits.vary"] is False


def test_a_uniform_plan_is_one_choice_away():
    """Plan-wide settings: about half of random plans are uniform in each operator (a per-layer
    draw of 3 layers alone would make a uniform bit width 1 in 25), and the per-layer freedom
    stays: varying plans do mix bit widths."""
    space = SearchSpace.from_dict(
        {"quantize": {"weight_bits": [2, 4, 8, 16, 32]}, "prune": {"ratio": [0.0, 0.3, 0.5]}}
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    uniform = mixed = 0
    for _ in range(200):
        trial = study.ask()
        plan = space.suggest(trial, layers_for)
        bits = {b for _, b in plan.quantize.weight_bits}
        uniform += len(bits) == 1 and not trial.params["bits.vary"]
        mixed += len(bits) > 1
        assert trial.params["bits.vary"] or bits == {trial.params["bits.all"]}
        study.tell(trial, 0.0)
    assert 70 <= uniform <= 130 and mixed >= 50
    fixed = space.suggest(
        optuna.trial.FixedTrial(
            {
                "bits.all": 8,
                "bits.vary": False,
                "prune.mode": "per_layer",
                "prune.all": 0.5,
                "prune.vary": False,
            }
        ),
        layers_for,
    )
    assert {b for _, b in fixed.quantize.weight_bits} == {8}
    assert {r for _, r in fixed.prune.ratios} == {0.5}


def test_students_are_offered_only_at_the_sizes_allowed(tmp_path):
    space = SearchSpace.from_file(REPO / "spaces" / "joint.yaml")
    small = space.with_student_sizes({"mobilenetv2": [(0.25, 1), (0.5, 2)], "shufflenetv2": []})
    assert small.dim("architecture", "family", "base").values() == ("base", "mobilenetv2")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        a = small.suggest(trial, layers_for).architecture
        seen.add((a.family, a.width, a.depth))
        study.tell(trial, 0.0)
    assert seen == {("base", 1.0, 1), ("mobilenetv2", 0.25, 1), ("mobilenetv2", 0.5, 2)}
    recipe = small.recipe_params(LAYERS, family="mobilenetv2", width=0.5)
    assert recipe["arch.size.mobilenetv2"] == "w0.5 d2"  # the nearest size offered


def test_students_larger_than_the_users_network_are_not_offered(tmp_path):
    import yaml

    from search.config import load_experiment
    from search.objective import TrialObjective
    from search.study import load_space, load_target
    from search.tasks import load_task
    from tests._tiny import write_tiny_experiment

    def families(**changes):
        path = write_tiny_experiment(tmp_path, **changes)
        (tmp_path / "tiny_space.yaml").write_text(
            yaml.safe_dump({"name": "s", "architecture": {"family": ["base", "mobilenetv2"]}})
        )
        exp = load_experiment(path)
        task = load_task(exp, log=lambda _m: None)
        o = TrialObjective(exp, task, load_space(exp), load_target(exp))
        return o.space.dim("architecture", "family", "base").values()

    # The tiny CNN has ~800 weights: every MobileNetV2-style student is larger.
    assert families() == ("base",)
    assert families(larger_students=True) == ("base", "mobilenetv2")

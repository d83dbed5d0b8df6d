"""Work a study does once: each structure before quantization (`Structures`) and each SVD of
the trained weights. A build from the caches is the build from scratch, to the last bit."""

from __future__ import annotations

from dataclasses import replace

import torch

from search.compress import Structures, _lowrank, compress, compressible_layers
from spaces import CompressionPlan, LowRankConfig, PruneConfig, QuantizeConfig
from tests._operator_nets import ResConcatNet, _setup


def _plan(base: torch.nn.Module, bits: int) -> CompressionPlan:
    layers = compressible_layers(base)
    return CompressionPlan(
        lowrank=LowRankConfig(ranks=tuple((x.name, 0.5) for x in layers if x.factorizable)),
        prune=PruneConfig(ratios=tuple((x.name, 0.3) for x in layers if x.prunable)),
        quantize=QuantizeConfig(
            weight_bits=tuple((x.name, bits) for x in layers), activation_bits=8
        ),
    )


def _build(plan: CompressionPlan, base, x, y, structures: Structures | None = None):
    return compress(
        plan, base, input_shape=ResConcatNet.input_shape, num_classes=ResConcatNet.num_classes,
        calib_inputs=x, grad_batch=(x[:8], y[:8]), structures=structures,
    )  # fmt: skip


def _same(a, b) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (a.layer_bits, a.layer_density, a.skipped) == (b.layer_bits, b.layer_density, b.skipped)


def test_a_plan_built_from_a_cached_structure_is_the_plan_built_from_scratch() -> None:
    base, x, y = _setup("resconcat")
    structures = Structures()
    for bits in (8, 4, 8):  # the second and third reuse the first one's structure
        _same(
            _build(_plan(base, bits), base, x, y, structures),
            _build(_plan(base, bits), base, x, y),
        )
    assert len(structures._items) == 1
    out = _build(_plan(base, 4), base, x, y, structures)
    out.model.zero_grad()
    for p in out.model.parameters():  # the cache hands out copies: training one leaves it
        p.data.add_(1.0)
    _same(_build(_plan(base, 4), base, x, y, structures), _build(_plan(base, 4), base, x, y))


def test_the_structure_cache_keeps_to_its_byte_budget() -> None:
    base, x, y = _setup("resconcat")
    tiny = Structures(max_bytes=1)  # smaller than any model: nothing is kept
    _build(_plan(base, 8), base, x, y, tiny)
    assert not tiny._items
    layers = [x_.name for x_ in compressible_layers(base) if x_.prunable]

    def pruned(ratio: float) -> CompressionPlan:
        return CompressionPlan(prune=PruneConfig(ratios=tuple((n, ratio) for n in layers)))

    sizes = {}
    for ratio in (0.1, 0.2, 0.3):
        one = Structures()
        _build(pruned(ratio), base, x, y, one)
        sizes[ratio] = next(iter(one._items.values())).nbytes
    two = Structures(max_bytes=sizes[0.2] + sizes[0.3])  # room for the last two: the oldest leaves
    for ratio in (0.1, 0.2, 0.3):
        _build(pruned(ratio), base, x, y, two)
    kept = [dict(k[2].ratios)[layers[0]] for k in two._items]
    assert kept == [0.2, 0.3]


def test_each_svd_is_computed_once() -> None:
    _lowrank._svds.clear()
    torch.manual_seed(0)
    w = torch.randn(16, 27)
    a1, b1 = _lowrank._split(w, 4)
    a2, b2 = _lowrank._split(w.clone(), 8)
    assert len(_lowrank._svds) == 1
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    root = s[:8].sqrt()
    assert torch.equal(a2, (u[:, :8] * root).float()) and torch.equal(
        b2, (root[:, None] * vh[:8]).float()
    )
    _lowrank._split(w + 1e-3, 4)  # other weights: another entry
    assert len(_lowrank._svds) == 2
    # Kept to rank 11 = ceil(16 * 27 / 43), above which no rank cuts MACs; a larger rank (a
    # full-rank check) is computed in full and not kept.
    assert [len(v[1]) for v in _lowrank._svds.values()] == [11, 11]
    a, b = _lowrank._split(w, 16)
    torch.testing.assert_close(a @ b, w, rtol=1e-5, atol=1e-5)
    assert len(_lowrank._svds) == 2


def test_plans_that_differ_only_in_bit_widths_share_one_graph_summary() -> None:
    """The summary is read once per structure, and it is the one each plan would get alone."""
    from search.hardware.graph import _summarize, clear_cache, summarize

    base, x, y = _setup("resconcat")
    shape = (1, *ResConcatNet.input_shape)
    models = [_build(_plan(base, bits), base, x, y).model for bits in (8, 4, 32)]
    alone = []
    for m in models:
        clear_cache()
        alone.append(summarize(m, shape))
    clear_cache()
    shared = [summarize(m, shape) for m in models]
    assert len(_summarize._CACHE) == 1
    assert shared == alone
    plan = _plan(base, 8)
    sparse = replace(plan, prune=replace(plan.prune, sparsity=0.5))  # masks are not bookkeeping
    summarize(_build(sparse, base, x, y).model, shape)
    assert len(_summarize._CACHE) == 2

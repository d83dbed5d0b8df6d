"""The reference-network zoo: each network matches its published MAC and parameter counts."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from search.hardware import REFERENCE_NETWORKS, ReferenceNetwork, reference_network
from search.hardware._graph import summarize

# MLPerf Tiny's int8 reference models (mlcommons/tiny, benchmark/training/<task>/, the 2021
# definitions; ResNet-8 at 16/32/64 filters), BN folded: MACs and parameters.
PUBLISHED = {
    "resnet8": (12.50e6, 77.7e3),
    "ds_cnn": (2.66e6, 22.6e3),
    "mobilenet_v1_025": (7.49e6, 211e3),
    "fc_autoencoder": (0.264e6, 266e3),
}


def _folded_params(model: nn.Module) -> int:
    """Parameters of the deployed (BN-folded) network: weights plus one bias per out channel."""
    total = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            total += m.weight.numel()
            total += m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
    return total


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_mlperf_tiny_networks_match_published_counts(name: str) -> None:
    entry = REFERENCE_NETWORKS[name]
    model = reference_network(name)
    macs = sum(k.macs for k in summarize(model, (1, *entry.input_shape)).kernels)
    want_macs, want_params = PUBLISHED[name]
    assert macs == pytest.approx(want_macs, rel=0.005)
    assert _folded_params(model) == pytest.approx(want_params, rel=0.01)


def test_every_entry_builds_and_runs_at_its_input_shape() -> None:
    for name, entry in REFERENCE_NETWORKS.items():
        if entry.input_shape[-1] > 128:
            continue  # the 224 px torchvision builders are exercised by the device benchmark
        assert isinstance(entry, ReferenceNetwork) and entry.name == name
        assert entry.family in ("dense-cnn", "depthwise", "mlp")
        model = entry.build()
        assert not model.training
        with torch.no_grad():
            out = model(torch.zeros(2, *entry.input_shape))
        assert out.shape[0] == 2


def test_zoo_is_frozen_and_names_unknown_networks() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        REFERENCE_NETWORKS["resnet8"].name = "x"  # type: ignore[misc]
    with pytest.raises(KeyError, match="resnet8"):
        reference_network("resnet9")


def test_depthwise_share_tells_the_families_apart() -> None:
    """DS-CNN is depthwise-separable, ResNet-8 dense: the cost model sees the kinds."""
    kinds = {
        name: {k.kind for k in summarize(reference_network(name), (1, *e.input_shape)).kernels}
        for name, e in REFERENCE_NETWORKS.items()
        if name in PUBLISHED
    }
    assert "dwconv" in kinds["ds_cnn"] and "dwconv" in kinds["mobilenet_v1_025"]
    assert "dwconv" not in kinds["resnet8"]
    assert kinds["fc_autoencoder"] <= {"linear", "elementwise"}


def test_mlperf_detectors_match_published_size() -> None:
    """SSD-ResNet34 at 1200x1200: 433.4 GFLOPs (2 per MAC) and 20.1 M parameters."""
    entry = REFERENCE_NETWORKS["ssd_resnet34"]
    model = reference_network("ssd_resnet34")
    macs = sum(k.macs for k in summarize(model, (1, *entry.input_shape)).kernels)
    assert 2 * macs == pytest.approx(433.4e9, rel=0.01)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(20.06e6, rel=0.01)

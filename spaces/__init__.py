"""What can be tried: search-space definitions and the plans they yield.

This package never imports `search`: a plan is plain data that any tool can read.
"""

from ._plan import (
    ACTIVATION_BITS,
    ARCH_FAMILIES,
    BASE_FAMILY,
    IMPORTANCES,
    LOWRANK_MODES,
    WEIGHT_BITS,
    ArchitectureConfig,
    CompressionPlan,
    DistillConfig,
    LowRankConfig,
    PlanError,
    PruneConfig,
    QuantizeConfig,
    flatten_plan,
    is_student,
    layer_rows,
)
from ._space import Dim, LayerInfo, SearchSpace, SpaceError

__all__ = [
    "ACTIVATION_BITS",
    "ARCH_FAMILIES",
    "BASE_FAMILY",
    "IMPORTANCES",
    "LOWRANK_MODES",
    "WEIGHT_BITS",
    "ArchitectureConfig",
    "CompressionPlan",
    "Dim",
    "DistillConfig",
    "LayerInfo",
    "LowRankConfig",
    "PlanError",
    "PruneConfig",
    "QuantizeConfig",
    "SearchSpace",
    "SpaceError",
    "flatten_plan",
    "is_student",
    "layer_rows",
]

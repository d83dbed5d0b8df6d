"""The cost model: what a model costs on a profile, from the kernels `graph` reads off it.

`estimate_cost` (`_estimate`) prices each kernel on a `HardwareProfile` (roofline latency,
weight and activation bytes, flash) and returns a `CostReport`; on a TFLite Micro profile
`_tflm` predicts the interpreter's arena and the flatbuffer's size from the graph.
"""

from ._estimate import (
    CostReport,
    LayerCost,
    constraint_values,
    cost_summary,
    estimate_cost,
    folded,
    input_bytes,
    layer_weight_bytes,
)
from ._tflm import full_integer, greedy_plan

__all__ = [
    "CostReport",
    "LayerCost",
    "constraint_values",
    "cost_summary",
    "estimate_cost",
    "folded",
    "full_integer",
    "greedy_plan",
    "input_bytes",
    "layer_weight_bytes",
]

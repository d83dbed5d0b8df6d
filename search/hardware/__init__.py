"""Hardware profiles, the analytic cost model, host measurement and calibration.

Example::

    from search.hardware import estimate_cost, load_profile

    cost = estimate_cost(model, (1, 8, 8), load_profile("mcu"), activation_bits=8)
    print(cost.latency_ms, cost.peak_activation_bytes)
"""

from ._calibrate import Calibration, calibrate_from_measurements, calibration_from_csv
from ._cost import CostReport, LayerCost, constraint_values, cost_summary, estimate_cost
from ._host_calibration import calibrate_host
from ._measure import (
    Measurement,
    export_fp32_onnx,
    measure_latency_ms,
    measure_model_ms,
    measure_onnx,
    time_callable,
    with_measured_latency,
)
from ._profile import (
    BUDGET_KEYS,
    OP_KINDS,
    HardwareProfile,
    load_profile,
    profile_from_dict,
    write_profile,
)
from ._zoo import REFERENCE_NETWORKS, ReferenceNetwork, reference_network

__all__ = [
    "BUDGET_KEYS",
    "OP_KINDS",
    "REFERENCE_NETWORKS",
    "CostReport",
    "HardwareProfile",
    "LayerCost",
    "Measurement",
    "ReferenceNetwork",
    "Calibration",
    "calibrate_from_measurements",
    "calibration_from_csv",
    "calibrate_host",
    "constraint_values",
    "cost_summary",
    "estimate_cost",
    "load_profile",
    "export_fp32_onnx",
    "measure_latency_ms",
    "measure_model_ms",
    "measure_onnx",
    "profile_from_dict",
    "reference_network",
    "time_callable",
    "with_measured_latency",
    "write_profile",
]

"""Calibration: fitting a profile's figures to latencies measured on a device or this host.

`_solve` is the fit itself (`Sample`, `fit_profile`, `predicted_ms`); `_device` the device fit
with few free figures and its leave-one-network-out check (`fit_device`, `DEVICE_PRIORS`);
`_rows` reads the CSV of measurements a user brings (`read_measurements`, `zoo_sample`);
`_host` micro-benchmarks this machine (`calibrate_host`); `_calibrate` ties them into
`profiles calibrate` (`calibrate`, `Calibration`, `FIT_STARTS`).
"""

from ._calibrate import (
    FIT_STARTS,
    MCU_CLOCK_MHZ,
    Calibration,
    calibrate,
    calibrate_from_measurements,
    calibration_from_csv,
)
from ._device import DEVICE_PRIORS, fit_device, leave_one_network_out, reference_metric
from ._host import calibrate_host
from ._rows import csv_rows, read_measurements, zoo_sample
from ._solve import Sample, fit_profile, predicted_ms, prediction_errors

__all__ = [
    "DEVICE_PRIORS",
    "FIT_STARTS",
    "MCU_CLOCK_MHZ",
    "Calibration",
    "Sample",
    "calibrate",
    "calibrate_from_measurements",
    "calibrate_host",
    "calibration_from_csv",
    "csv_rows",
    "fit_device",
    "fit_profile",
    "leave_one_network_out",
    "predicted_ms",
    "prediction_errors",
    "read_measurements",
    "reference_metric",
    "zoo_sample",
]

"""Measurements a user brings: a CSV of ONNX files or zoo networks, and latencies."""

from __future__ import annotations

import csv
import math
from dataclasses import replace
from pathlib import Path

from ...errors import ConfigError
from ..graph import onnx_kernels, summarize
from ..zoo import REFERENCE_NETWORKS
from ._solve import Sample

CSV_PRECISIONS = {"int8": 8, "fp16": 16, "fp32": 32, "8": 8, "16": 16, "32": 32}


def zoo_sample(network: str, precision: int, latency_ms: float, *, batch: int = 1) -> Sample:
    """A measured reference network (search.hardware.REFERENCE_NETWORKS) as a fit sample.

    Every conv/linear runs at `precision` bits, and so do the activations (int8 rows are
    full-integer, fp16 rows fp16 throughout).
    """

    entry = REFERENCE_NETWORKS[network]
    summary = summarize(entry.build(), (batch, *entry.input_shape))
    bits = {k.layer: precision for k in summary.kernels if k.layer}
    return Sample(
        name=f"{network} {precision}-bit",
        kernels=summary.kernels,
        measured_ms=latency_ms,
        layer_bits=bits,
        activation_bits=precision,
        network=network,
        backbone=entry.backbone,
        input_elems=summary.input_elems,
    )


CSV_COLUMNS = ("latency_ms",)
CSV_MODEL_COLUMNS = ("onnx", "network")  # at least one; each row fills exactly one
CSV_OPTIONAL = ("batch", "precision", "profile", "use", "why", "metric_kind")
# Provenance a published-measurements file keeps beside each row; the fit ignores it.
CSV_PROVENANCE = (
    "source",
    "source_repo",
    "source_path",
    "board",
    "device",
    "core",
    "processor",
    "mhz",
    "unit",
    "threads",
    "stack",
    "runtime",
    "model",
    "input_shape",
    "published_precision",
    "peak_ram_kb",
    "flash_kb",
    "notes",
)


def csv_rows(csv_path: str | Path) -> list[tuple[int, dict[str, str]]]:
    """The rows of a measurements CSV (header checked; `#` lines skipped), with row numbers.

    Raises:
        ConfigError: no such file, or a header without the needed columns or with unknown ones.
    """
    path = Path(csv_path)
    file = str(path)
    if not path.is_file():
        raise ConfigError(file, "<file>", "no measurements CSV at this path")
    with path.open(newline="") as fh:
        lines = [line for line in fh if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(lines)
    header = [h.strip() for h in (reader.fieldnames or [])]
    allowed = CSV_COLUMNS + CSV_MODEL_COLUMNS + CSV_OPTIONAL + CSV_PROVENANCE
    if any(c not in header for c in CSV_COLUMNS) or not any(
        c in header for c in CSV_MODEL_COLUMNS
    ):
        raise ConfigError(
            file,
            "header",
            "needs columns latency_ms and onnx or network "
            f"(optional {list(CSV_OPTIONAL)} and provenance)",
        )
    extra = [h for h in header if h not in allowed]
    if extra:
        raise ConfigError(file, "header", f"unknown columns {extra}; allowed: {list(allowed)}")
    return [
        (i, {k.strip(): (v or "").strip() for k, v in raw.items() if k})
        for i, raw in enumerate(reader, start=2)
    ]


def read_measurements(
    csv_path: str | Path, *, profile: str | None = None, use: str = "fit"
) -> list[Sample]:
    """Parse a measurements CSV: one measured model per row.

    Columns: `latency_ms` and, per row, either `onnx` (a file, relative to the CSV) or
    `network` (a name from search.hardware.REFERENCE_NETWORKS, with `precision` int8, fp16 or
    fp32); optional `batch`. A file of published rows may carry `profile` and `use` columns:
    then only rows for `profile` (when given) whose `use` is `use` are read. `metric_kind` says
    what a row times (rows of several sources: the fit gives each other metric an offset).
    Provenance columns (CSV_PROVENANCE) are allowed and ignored.
    """

    path = Path(csv_path)
    file = str(path)
    samples: list[Sample] = []
    for i, row in csv_rows(path):
        if profile is not None and "profile" in row and row["profile"] != profile:
            continue
        if "use" in row and row["use"] != use:
            continue
        try:
            ms = float(row["latency_ms"])
        except ValueError:
            raise ConfigError(file, f"row {i}: latency_ms", "must be a number > 0") from None
        if not ms > 0 or math.isinf(ms):
            raise ConfigError(file, f"row {i}: latency_ms", "must be a number > 0")
        batch = 1
        if row.get("batch"):
            try:
                batch = int(row["batch"])
            except ValueError:
                raise ConfigError(file, f"row {i}: batch", "must be an integer >= 1") from None
            if batch < 1:
                raise ConfigError(file, f"row {i}: batch", "must be an integer >= 1")
        onnx_name, network = row.get("onnx", ""), row.get("network", "")
        if bool(onnx_name) == bool(network):
            raise ConfigError(
                file, f"row {i}: onnx/network", "give exactly one: an ONNX file or a network"
            )
        if network:
            if network not in REFERENCE_NETWORKS:
                raise ConfigError(
                    file, f"row {i}: network", f"one of {sorted(REFERENCE_NETWORKS)}"
                )
            bits = CSV_PRECISIONS.get(row.get("precision", "").lower())
            if bits is None:
                raise ConfigError(file, f"row {i}: precision", "int8, fp16 or fp32")
            sample = zoo_sample(network, bits, ms, batch=batch)
        else:
            sample = _onnx_sample(file, i, path.parent / onnx_name, ms, batch)
        samples.append(replace(sample, row=row))
    if not samples:
        raise ConfigError(file, "rows", "no measurements (one row per measured model is needed)")
    return samples


def _onnx_sample(file: str, i: int, onnx_file: Path, ms: float, batch: int) -> Sample:

    if not onnx_file.is_file():
        raise ConfigError(file, f"row {i}: onnx", f"no ONNX file at {onnx_file}")
    try:
        ok = onnx_kernels(onnx_file, batch=batch)
    except Exception as exc:  # noqa: BLE001 - any unreadable model is the user's input
        raise ConfigError(file, f"row {i}: onnx", f"cannot read {onnx_file}: {exc}") from None
    return Sample(
        name=str(onnx_file),
        kernels=ok.kernels,
        measured_ms=ms,
        layer_bits=ok.layer_bits,
        activation_bits=ok.activation_bits,
        network=onnx_file.stem,
        input_elems=ok.input_elems,
    )

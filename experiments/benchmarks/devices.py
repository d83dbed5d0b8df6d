"""The device benchmark: every profile's predicted latency against published measurements.

    python experiments/benchmarks/devices.py [--write-profiles]

For each built-in device profile, reads the published rows of its own runtime from
hardware_profiles/measurements/*_published.csv (the project's calibrate-from-CSV path:
`read_measurements` with zoo networks, `calibrate` = `fit_device` + leave-one-network-out),
starting from the figures stated in `search.hardware.fit.FIT_STARTS`, not from those
already in the YAML (they are this script's output). Reports, per profile: every fitted row
predicted by a fit that never saw its network, shares within +-20/25/30 %, MAPE, the 90th
percentile of |error|, Spearman, and the fitted figures; then the "check" rows (same board with
another runtime, a sibling board scaled by clock, framework-overhead GPU rows) predicted by the
full fit, which are never fitted.
`host` takes its error from experiments/results/predictor.json (62 networks the host
calibration never saw). `--write-profiles` writes the fitted figures and the stored error into
hardware_profiles/<name>.yaml. Memory: if experiments/benchmarks/_device_memory.py exists, its
`memory_section()` adds the `memory` key and its markdown. Writes experiments/results/
devices.json and devices.md. Asserts nothing. About five minutes on 2 shared cores (the
TFLite conversions of the memory section dominate).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from _devices_report import markdown, readme_section, update_readme

from search.files import atomic_write_text
from search.hardware import HardwareProfile, load_profile, profile_from_dict
from search.hardware.fit import (
    DEVICE_PRIORS,
    FIT_STARTS,
    MCU_CLOCK_MHZ,
    Calibration,
    calibrate,
    csv_rows,
    read_measurements,
)

# What other code reads as devices.<name> (the tests).
__all__ = ["TENSORRT", "main", "readme_section"]

REPO = Path(__file__).resolve().parents[2]

RESULTS = REPO / "experiments" / "results"
MEASUREMENTS = REPO / "hardware_profiles" / "measurements"
SOURCE = "experiments/results/devices.json"


FILES = {
    "mcu": "mcu_published.csv",
    "mcu_h7": "mcu_published.csv",
    "mcu_m4": "mcu_published.csv",
    "mcu_m33": "mcu_published.csv",
    "phone": "phone_gpu_published.csv",
    "phone_npu": "phone_gpu_published.csv",
    "cloud_gpu": "gpu_published.csv",
    "jetson_xavier": "gpu_published.csv",
    "jetson_nano": "gpu_published.csv",
    "a100": "gpu_published.csv",
}
TENSORRT = ("cloud_gpu", "jetson_xavier", "jetson_nano", "a100")


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _board(r: dict[str, str]) -> str:
    return r.get("board") or r.get("device") or ""


def _runtime(r: dict[str, str]) -> str:
    return r.get("stack") or r.get("runtime") or ""


def _fitted_figures(p: HardwareProfile) -> dict[str, Any]:
    return {
        "efficiency": dict(p.efficiency),
        "cycles_per_mac": {
            k: round(1.0 / (p.efficiency[k] * 2), 3) for k in ("conv", "dwconv", "linear")
        }
        if p.name.startswith("mcu")
        else None,
        "layer_overhead_us": dict(p.layer_overhead_us),
        "model_overhead_us": p.model_overhead_us,
        "output_overhead_ns": p.output_overhead_ns,
        "saturation_outputs": p.saturation_outputs,
        "flash_read_ns_per_byte": p.flash_read_ns_per_byte,
        "input_ns_per_byte": p.input_ns_per_byte,
        "bandwidth_bytes_per_s": p.bandwidth_bytes_per_s,
    }


def _metric(r: dict[str, str]) -> str:
    return r.get("metric_kind", "")


def _published(name: str, use: str) -> list[dict[str, str]]:
    """The rows of `name`'s published file for that profile and `use` (fit, check or none)."""
    rows = csv_rows(MEASUREMENTS / FILES[name])
    return [r for _, r in rows if r.get("profile") == name and r.get("use") == use]


def profile_section(name: str) -> tuple[dict[str, Any], Calibration]:
    path = MEASUREMENTS / FILES[name]
    base = load_profile(name)  # calibrate starts it from FIT_STARTS, not its fitted figures
    samples = read_measurements(path, profile=name, use="fit")
    cal = calibrate(samples, base, source=SOURCE)
    loo = {id(r.sample): r for r in cal.loo}
    rows = []
    for s in samples:
        r = s.row
        row = loo.get(id(s))
        rows.append(
            {
                "network": s.network,
                "precision_bits": s.activation_bits,
                "board": _board(r),
                "runtime": _runtime(r),
                "metric_kind": _metric(r),
                "published": s.measured_ms,
                "predicted_loo": None if row is None else round(row.predicted_ms, 4),
                "ratio": None if row is None else round(row.ratio, 3),
                "predicted_full_fit": round(cal.predict_ms(s), 4),
                "source": f"{r['source_repo']}/{r['source_path']}",
            }
        )
    checks = []
    has_checks = bool(_published(name, "check"))
    check_samples = read_measurements(path, profile=name, use="check") if has_checks else []
    for s in check_samples:
        r = s.row
        scale = 1.0
        if name in MCU_CLOCK_MHZ and r.get("mhz"):
            scale = MCU_CLOCK_MHZ[name] / float(r["mhz"])  # same cycles on a slower/faster clock
        pred = cal.predict_ms(s) * scale
        checks.append(
            {
                "network": s.network,
                "precision_bits": s.activation_bits,
                "board": _board(r),
                "runtime": _runtime(r),
                "metric_kind": _metric(r),
                "published": s.measured_ms,
                "predicted": round(pred, 4),
                "ratio": round(pred / s.measured_ms, 3),
                "why_not_fitted": r.get("why", ""),
                "source": f"{r['source_repo']}/{r['source_path']}",
            }
        )
    excluded = [{"model": r["model"], "why": r["why"]} for r in _published(name, "none")]
    out: dict[str, Any] = {
        "runtime": dict(base.runtime or {}),
        "networks": len({s.group for s in samples}),  # backbones leave out together
        **{k: cal.errors.get(k) for k in _KEYS},
        "rows": rows,
        "checks": checks,
        "excluded": excluded,
        "fitted": _fitted_figures(cal.profile),
        "reference_metric": cal.reference,
        "metric_offsets_ms": dict(cal.fit.offsets_ms) if cal.fit else {},
        "latency_error": None
        if cal.profile.latency_error is None
        else dict(cal.profile.latency_error),
    }
    if not cal.loo:
        out["note"] = (
            "one network only: no leave-one-network-out error exists; the fit is in-sample"
        )
    return out, cal


_KEYS = (
    "within_20pct_loo",
    "within_25pct_loo",
    "within_30pct_loo",
    "mape_loo",
    "spearman_loo",
    "p90_abs_error_loo",
)


def unassigned_rows() -> list[dict[str, Any]]:
    """Published rows no built-in profile models (another core, runtime or GPU), and why."""
    out = []
    for file in sorted(set(FILES.values())):
        for _, r in csv_rows(MEASUREMENTS / file):
            if not r.get("profile"):
                out.append(
                    {
                        "network": r["network"] or None,
                        "model": r["model"],
                        "board": _board(r),
                        "runtime": _runtime(r),
                        "published": float(r["latency_ms"]),
                        "why": r["why"],
                        "source": f"{r['source_repo']}/{r['source_path']}",
                    }
                )
    return out


def host_section() -> dict[str, Any]:
    path = RESULTS / "predictor.json"
    if not path.is_file():
        return {"note": "experiments/results/predictor.json missing: run predictor.py"}
    data = json.loads(path.read_text())
    err = np.asarray([abs(m["predicted_ms"] / m["measured_ms"] - 1) for m in data["models"]])
    return {
        "runtime": {"name": "ONNX Runtime (CPU)", "note": data["setup"]["runtime"]},
        "rows": len(err),
        "p90_abs_error": round(float(np.quantile(err, 0.9)), 4),
        "within_20pct": round(float(np.mean(err <= 0.2)), 4),
        "within_25pct": round(float(np.mean(err <= 0.25)), 4),
        "mape": round(float(np.mean(err)), 4),
        "source": "experiments/results/predictor.json (networks the host calibration never saw)",
    }


def write_profile_figures(name: str, profile: HardwareProfile) -> None:
    """Replace the fitted lines of hardware_profiles/<name>.yaml, keeping its comments."""
    path = REPO / "hardware_profiles" / f"{name}.yaml"
    lines = path.read_text().splitlines()
    out: list[str] = []
    block = None
    skipping = False
    for line in lines:
        if skipping:
            if line.startswith("  "):
                continue
            skipping = False
        top = re.match(r"^([a-z_]+):", line)
        if top:
            block = top.group(1)
            if block == "latency_error":
                skipping = True
                continue
            if block == "model_overhead_us":
                line = f"model_overhead_us: {profile.model_overhead_us:g}  # fitted by devices.py"
            if block == "output_overhead_ns":
                line = (
                    f"output_overhead_ns: {profile.output_overhead_ns:g}  # fitted by devices.py"
                )
            for key in ("saturation_outputs", "flash_read_ns_per_byte", "input_ns_per_byte"):
                if block == key:
                    line = re.sub(rf"^{key}: [^ #]+", f"{key}: {getattr(profile, key):g}", line)
        else:
            m = re.match(r"^  ([a-z]+): ", line)
            if m and block == "efficiency":
                line = f"  {m.group(1)}: {profile.efficiency[m.group(1)]:.4g}"
            elif m and block == "layer_overhead_us":
                line = f"  {m.group(1)}: {profile.layer_overhead_us[m.group(1)]:g}"
        out.append(line)
    if profile.latency_error is not None:
        le = profile.latency_error
        out += [
            "latency_error:  # |predicted / published - 1|, leave-one-network-out",
            f"  p90: {le['p90']}",
            f"  source: {le['source']}",
            f"  rows: {le['rows']}",
        ]
    _replace_profile(path, "\n".join(out) + "\n")


def write_host_error(section: dict[str, Any]) -> None:
    """Store the host's measured error in host.yaml (its runtime is calibrate-host's)."""
    path = REPO / "hardware_profiles" / "host.yaml"
    text = re.sub(r"\nlatency_error:\n(  .*\n)*", "\n", path.read_text())
    text += (
        "latency_error:\n"
        f"  p90: {section['p90_abs_error']}\n"
        "  source: experiments/results/predictor.json\n"
        f"  rows: {section['rows']}\n"
    )
    _replace_profile(path, text)


def _replace_profile(path: Path, text: str) -> None:
    """Write a profile YAML whole, and only if it still loads (a bad edit leaves the old file)."""
    profile_from_dict(yaml.safe_load(text), file=str(path))  # raises on a bad edit
    atomic_write_text(path, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--write-profiles", action="store_true", help="write the fits into the profile YAMLs"
    )
    parser.add_argument(
        "--update-readme",
        action="store_true",
        help="only re-render the README's hardware table from experiments/results/devices.json",
    )
    args = parser.parse_args()
    if args.update_readme:
        update_readme(json.loads((RESULTS / "devices.json").read_text()))
        return
    load_before = round(os.getloadavg()[0], 2)
    started = time.perf_counter()
    profiles: dict[str, Any] = {}
    for name in FIT_STARTS:
        sec, cal = profile_section(name)
        profiles[name] = sec
        if args.write_profiles:
            write_profile_figures(name, cal.profile)
    host = host_section()
    if args.write_profiles and "p90_abs_error" in host:
        write_host_error(host)
    command = "python experiments/benchmarks/devices.py" + (
        " --write-profiles" if args.write_profiles else ""
    )
    result: dict[str, Any] = {
        "setup": {
            "command": command,
            "git_commit": _git_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_avg_before": load_before,
            "priors": {"device_fit": DEVICE_PRIORS, "profiles": FIT_STARTS},
            "clock_scaling": "check rows on another clock: predicted x profile MHz / row MHz",
        },
        "targets": {
            "mcu": "within_20pct_loo >= 0.8",
            "phone, phone_npu, " + ", ".join(TENSORRT): (
                "within_25pct_loo >= 0.7, spearman_loo >= 0.9"
            ),
        },
        "profiles": profiles,
        "host": host,
        "unassigned": unassigned_rows(),
    }
    memory_md: list[str] = []
    hook = Path(__file__).with_name("_device_memory.py")
    if hook.is_file():  # the memory half of the benchmark (arena and flash vs TFLite Micro)
        spec = importlib.util.spec_from_file_location("_device_memory", hook)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        memory, memory_md = module.memory_section()
        result["memory"] = memory
    result["setup"]["seconds"] = round(time.perf_counter() - started, 1)
    result["setup"]["load_avg_after"] = round(os.getloadavg()[0], 2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "devices.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result) + list(memory_md)
    (RESULTS / "devices.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[:22]))


if __name__ == "__main__":
    main()

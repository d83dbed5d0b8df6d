"""The quickstart's knee for the board: `export --format tflite`, run in TFLite Micro.

    python experiments/benchmarks/quickstart_tflite.py

Runs the quickstart search (`python -m search run experiments/quickstart.yaml`) into a
temporary folder, exports its knee with `python -m search export RUN --format tflite`, and
writes what the export printed and recorded (TFLM test accuracy vs PyTorch, the TFLM arena vs
the predicted SRAM, the .tflite vs the predicted flash) to experiments/results/
quickstart_tflite.{json,md}. Needs the `[tflite]` extra. About 3 minutes on 2 cores. Asserts
nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "results"


def _run(*args: str, cwd: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-m", "search", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def main() -> None:
    load_before = round(os.getloadavg()[0], 2)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "quickstart"
        search_out = _run(
            "run",
            str(REPO / "experiments/quickstart.yaml"),
            "--out",
            str(run),
            "--no-progress",
            cwd=REPO,
        )
        export_out = _run("export", str(run), "--format", "tflite", cwd=REPO)
        winner = yaml.safe_load((run / "winner" / "winner.yaml").read_text())
    m = winner["metrics"]
    t = m["tflite"]
    result = {
        "command": "python experiments/benchmarks/quickstart_tflite.py",
        "git_commit": commit,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "load_avg_before": load_before,
        "load_avg_after": round(os.getloadavg()[0], 2),
        "trial": winner["trial"],
        "plan": winner["plan_text"],
        "test_accuracy_pytorch": m["test"]["accuracy"],
        "test_accuracy_tflm": m["tflm_test"]["accuracy"],
        "tflm_vs_torch_points": m["tflm_vs_torch_points"],
        "tflite": t,
        "search_summary": [ln for ln in search_out.splitlines() if not ln.startswith("wrote")],
        "export_output": [
            ln.replace(str(run), "experiments/runs/quickstart")
            for ln in export_out.splitlines()
            if not ln.startswith("base model:")
        ],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quickstart_tflite.json").write_text(json.dumps(result, indent=2) + "\n")
    a = t["arena"]
    md = [
        "# The quickstart's knee as an int8 .tflite in TFLite Micro",
        "",
        f"`{result['command']}` at commit {commit}, {result['date']}; load average "
        f"{load_before} before, {result['load_avg_after']} after.",
        "",
        f"Knee: trial {result['trial']} ({result['plan']}).",
        "",
        "```",
        "$ python -m search export experiments/runs/quickstart --format tflite",
        *result["export_output"],
        "```",
        "",
        "| figure | PyTorch / predicted | TFLite Micro | difference |",
        "|---|---:|---:|---:|",
        f"| test accuracy | {result['test_accuracy_pytorch']:.4f} | "
        f"{result['test_accuracy_tflm']:.4f} | {result['tflm_vs_torch_points']:.2f} points |",
        f"| arena head (activations) | {t['predicted_peak_activation_bytes']:,} B | "
        f"{a['head']:,} B | {a['head'] / t['predicted_peak_activation_bytes'] - 1:+.1%} |",
        f"| arena total (SRAM) | {t['predicted_memory_bytes']:,} B | {a['total']:,} B | "
        f"{t['arena_vs_predicted']:+.1%} |",
        f"| flash (.tflite {t['bytes']:,} B + runtime) | {t['predicted_flash_bytes']:,} B | "
        f"{t['flash_bytes']:,} B | {t['flash_vs_predicted']:+.1%} |",
        "",
    ]
    (RESULTS / "quickstart_tflite.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()

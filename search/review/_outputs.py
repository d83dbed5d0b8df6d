"""The files a run writes: trials.csv, pareto.json and report.html (per target when several)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spaces import flatten_plan

from ..files import atomic_write
from ._page import render_report, render_target_index
from ._run import RunData

__all__ = ["trials_frame", "write_outputs", "write_pareto_json", "write_trials_csv"]


def trials_frame(run: RunData) -> Any:
    """A pandas DataFrame with one row per trial (failed ones included, with their reason)."""
    import pandas as pd

    front = set(run.front)
    rows = []
    for t in run.trials:
        row: dict[str, Any] = {
            "trial": t.number,
            "state": t.state,
            "status": t.status,
            "feasible": t.feasible,
            "on_front": t.number in front,
            "violation": t.violation,
        }
        for j, o in enumerate(run.objectives):
            row[f"objective.{o.metric}"] = t.values[j] if t.values is not None else None
        for k, v in t.metrics.items():
            row[k] = v
        for c in run.constraint_names:
            row[f"constraint.{c}"] = t.constraints.get(c)
        for k, v in (t.refined or {}).items():
            if k != "weights":
                row[f"refined.{k}"] = v
        row["recipe"] = t.recipe
        row["duplicate_of"] = t.duplicate_of
        row["plan_text"] = t.plan_text
        row["fail_reason"] = t.fail_reason
        row["skipped_layers"] = json.dumps(dict(t.skipped_layers)) if t.skipped_layers else ""
        row["datetime_start"] = t.datetime_start
        row["duration_s"] = t.duration_s
        row.update({f"plan.{k}": v for k, v in flatten_plan(t.plan).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def write_trials_csv(run: RunData, path: str | Path) -> Path:
    return atomic_write(path, lambda p: trials_frame(run).to_csv(p, index=False))


def write_pareto_json(run: RunData, path: str | Path) -> Path:
    text = json.dumps(run.to_dict(), indent=2, allow_nan=False)
    return atomic_write(path, lambda p: p.write_text(text + "\n"))


def write_outputs(run: RunData, run_dir: str | Path) -> dict[str, Path]:
    """Write `trials.csv`, `pareto.json` and `report.html` into `run_dir`; returns their paths.

    A study over several targets writes `trials.T.csv`, `pareto.T.json` and `report.T.html`
    per target T, and `report.html` as the index that switches between them.
    """
    run_dir = Path(run_dir)
    if run.views:
        out: dict[str, Path] = {}
        for name, view in run.views.items():
            out[f"trials.{name}.csv"] = write_trials_csv(view, run_dir / f"trials.{name}.csv")
            out[f"pareto.{name}.json"] = write_pareto_json(view, run_dir / f"pareto.{name}.json")
            out[f"report.{name}.html"] = render_report(view, run_dir / f"report.{name}.html")
        out["report.html"] = render_target_index(run, run_dir / "report.html")
        return out
    return {
        "trials.csv": write_trials_csv(run, run_dir / "trials.csv"),
        "pareto.json": write_pareto_json(run, run_dir / "pareto.json"),
        "report.html": render_report(run, run_dir / "report.html"),
    }

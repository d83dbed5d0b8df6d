"""The stamp every results file carries: the command, git commit, date and load average."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def start() -> dict[str, Any]:
    """Taken before the benchmark runs; `finish` adds the load average after it."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    script = Path(sys.argv[0]).resolve()
    rel = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    return {
        "command": " ".join(["python", str(rel), *sys.argv[1:]]),
        "commit": commit or "unknown",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_avg_before": round(os.getloadavg()[0], 2),
    }


def finish(stamp: dict[str, Any]) -> dict[str, Any]:
    return {**stamp, "load_avg_after": round(os.getloadavg()[0], 2)}


def line(stamp: dict[str, Any]) -> str:
    """One markdown line: `command` at commit, date; load average before, after."""
    return (
        f"`{stamp['command']}` at commit {stamp['commit']}, {stamp['date']}; load average "
        f"{stamp['load_avg_before']} before, {stamp.get('load_avg_after', '?')} after."
    )

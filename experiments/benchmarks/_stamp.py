"""The stamp every results file carries: the command, git commit, date and load average; and
the results files written whole (`write_text`), with values JSON can hold (`jsonable`)."""

from __future__ import annotations

import datetime
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
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


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` whole or not at all: a fresh file beside it, renamed over it, so a
    stopped run or a reader never sees half a results file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        Path(tmp).write_text(text)
        # mkstemp makes the file private; give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def jsonable(x: Any, *, inf: Any = None) -> Any:
    """`x` with NaN written as null and +-inf as `inf` (null unless told): neither is JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else inf
    if isinstance(x, Mapping):
        return {str(k): jsonable(v, inf=inf) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v, inf=inf) for v in x]
    return x

"""Storage that cannot work is refused by every command that takes `--storage`: exit status 2,
one `error:` line naming `--storage` with the password masked, and nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests._tiny import cli_env, write_tiny_experiment

UNREACHABLE = "postgresql://search:secret@127.0.0.1:1/search"  # nothing listens on port 1


@pytest.mark.parametrize(
    "args",
    [
        ["run", "tiny.yaml", "--storage", UNREACHABLE],
        ["worker", "tiny.yaml", "--storage", UNREACHABLE, "--jobs", "2"],
        ["report", "--storage", UNREACHABLE, "--study", "tiny"],
        ["export", "--storage", UNREACHABLE, "--study", "tiny"],
        ["run", "tiny.yaml", "--storage", "nosuchdb://host/study"],
    ],
    ids=["run", "worker-jobs", "report", "export", "unknown-database"],
)
def test_unusable_storage_is_one_error_line(tmp_path: Path, args: list[str]) -> None:
    write_tiny_experiment(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    quiet = ["--no-progress"] if args[0] in ("run", "worker") else []
    done = subprocess.run(
        [sys.executable, "-m", "search", *args, *quiet],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith("error: <command line>: --storage: ")
    assert "secret" not in done.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before

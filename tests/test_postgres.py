"""Many workers on one study in a real PostgreSQL server (tests._postgres starts it)."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from search.parallel import audit_trials
from search.study import counted
from tests._tiny import cli_command, cli_env, run_cli, write_tiny_experiment

pytest_plugins = ["tests._postgres"]
pytestmark = pytest.mark.postgres

TRIALS = 6


def _overlapping(trials: list[FrozenTrial]) -> bool:
    """Did two trials run at the same time (so two processes shared the work)?"""
    spans = sorted(
        (t.datetime_start, t.datetime_complete)
        for t in trials
        if t.datetime_start and t.datetime_complete
    )
    return any(b[0] < a[1] for a, b in zip(spans, spans[1:]))


def _check_shared(url: str, name: str = "tiny") -> list[FrozenTrial]:
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    report = audit_trials(trials)
    # Each process finishes the trial it holds when the target is reached: at most one extra.
    # `--trials` counts trainings: over-budget plans and repeats are answered without one.
    trainings = counted(trials)
    assert TRIALS <= trainings <= TRIALS + 1, (trainings, report)
    assert report["duplicates"] == [] and report["numbers_unique"], report
    assert report["running"] == 0 and report["failed"] == 0, report
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert _overlapping(complete), "the two processes never ran trials at the same time"
    return trials


def _run_then_worker(
    url: str, run: list[str], worker: list[str], *, cwd: tuple[Path, Path], env: dict[str, str]
) -> None:
    """`run` in the background; once its first trial is in the database, `worker` joins it (as
    a second machine would). Both must exit 0."""
    first = subprocess.Popen(
        cli_command(*run),
        cwd=cwd[0],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    engine = sqlalchemy.create_engine(url)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and first.poll() is None:
            try:
                with engine.connect() as conn:
                    if conn.execute(sqlalchemy.text("SELECT count(*) FROM trials")).scalar():
                        break
            except sqlalchemy.exc.DBAPIError:
                pass  # tables not created yet
            time.sleep(0.2)
        second = run_cli(*worker, cwd=cwd[1], env=env)
        _, err = first.communicate(timeout=300)
    finally:
        engine.dispose()
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, err[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]


def test_server_is_real_local_and_throwaway(postgres_url: str) -> None:
    engine = sqlalchemy.create_engine(postgres_url)
    with engine.connect() as conn:
        version = conn.execute(sqlalchemy.text("SELECT version()")).scalar_one()
        address = conn.execute(sqlalchemy.text("SELECT inet_server_addr()::text")).scalar_one()
        data = conn.execute(sqlalchemy.text("SHOW data_directory")).scalar_one()
    engine.dispose()
    assert version.startswith("PostgreSQL")
    assert address.split("/")[0] == "127.0.0.1"
    assert Path(data).is_relative_to(tempfile.gettempdir())
    assert postgres_url.startswith("postgresql://postgres@127.0.0.1:")  # as users write it


def test_optuna_storage_round_trip(postgres_url: str) -> None:
    from search.study import make_storage

    study = optuna.create_study(
        study_name="s", storage=make_storage(postgres_url), directions=["maximize", "minimize"]
    )
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_int("n", 1, 4)), n_trials=3)
    again = optuna.load_study(study_name="s", storage=postgres_url)
    assert [t.state for t in again.trials] == [TrialState.COMPLETE] * 3


@pytest.mark.slow
def test_run_with_two_jobs_shares_the_study(tmp_path: Path, postgres_url: str) -> None:
    exp = write_tiny_experiment(tmp_path, trials=TRIALS)
    done = run_cli(
        "run",
        str(exp),
        "--storage",
        postgres_url,
        "--jobs",
        "2",
        "--out",
        "run",
        "--no-progress",
        cwd=tmp_path,
        env=cli_env(TINY_TRIAL_SLEEP="0.5"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    trials = _check_shared(postgres_url)
    csv_rows = (tmp_path / "run" / "trials.csv").read_text().count("\n") - 1
    assert csv_rows == len(trials)
    assert not (tmp_path / "run" / "study.db").exists()  # the study lives in PostgreSQL


@pytest.mark.slow
def test_worker_joins_a_running_search(tmp_path: Path, postgres_url: str) -> None:
    """`python -m search worker` on a second process shares a `run`'s study."""
    exp = write_tiny_experiment(tmp_path, trials=TRIALS)
    common = [str(exp), "--storage", postgres_url, "--out", "run", "--no-progress"]
    _run_then_worker(
        postgres_url,
        ["run", *common],
        ["worker", *common],
        cwd=(tmp_path, tmp_path),
        env=cli_env(TINY_TRIAL_SLEEP="0.5"),
    )
    _check_shared(postgres_url)


@pytest.mark.slow
def test_two_machines_as_the_readme_sets_them_up(tmp_path: Path, postgres_url: str) -> None:
    """README, "Many machines": one PostgreSQL server; machine A runs `run`, machine B joins
    with `worker --jobs 2`, each in its own checkout folder with its own run folder and base
    model cache; then `report` from B. The URL is written as users write it (`postgresql://`,
    psycopg 3 from the `postgres` extra)."""
    assert postgres_url.startswith("postgresql://")
    machines = [tmp_path / "machine-a", tmp_path / "machine-b"]
    exps = [write_tiny_experiment(m, trials=TRIALS + 2) for m in machines]
    # Machine B starts Python, imports torch and trains its own base model before it joins:
    # 1.5 s per trial keeps A's trials running that long on a loaded machine (at 0.3 s, A
    # finished alone once while a benchmark held both cores).
    env = cli_env(TINY_TRIAL_SLEEP="1.5")
    env.pop("COMPRESS_SEARCH_CACHE", None)  # each machine trains (or loads) its own base model
    common = ["--storage", postgres_url, "--no-progress"]
    _run_then_worker(
        postgres_url,
        ["run", str(exps[0]), *common],
        ["worker", str(exps[1]), *common, "--jobs", "2"],
        cwd=(machines[0], machines[1]),
        env=env,
    )
    trials = optuna.load_study(study_name="tiny", storage=postgres_url).get_trials()
    report = audit_trials(trials)
    assert report["complete"] >= TRIALS + 2 and report["failed"] == 0, report
    assert report["duplicates"] == [] and report["numbers_unique"], report
    assert _overlapping([t for t in trials if t.state == TrialState.COMPLETE])
    for machine in machines:  # each machine's run folder holds its own base model cache
        assert list((machine / "experiments" / "runs" / "tiny" / "cache").glob("base-*.pt"))
        assert not (machine / "experiments" / "runs" / "tiny" / "study.db").exists()
    shown = run_cli(
        "report", "--storage", postgres_url, "--study", "tiny", "--out", "rep", cwd=machines[1]
    )
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert (machines[1] / "rep" / "trials.csv").read_text().count("\n") - 1 == len(trials)


def test_worker_needs_an_existing_study(tmp_path: Path, postgres_url: str) -> None:
    exp = write_tiny_experiment(tmp_path, trials=TRIALS)
    done = run_cli(
        "worker",
        str(exp),
        "--storage",
        postgres_url,
        "--out",
        "run",
        "--no-progress",
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {exp}: storage: no study 'tiny'")

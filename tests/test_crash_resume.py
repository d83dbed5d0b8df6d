"""Crash and resume: SIGKILL during trials, then resume; no completed trial lost or repeated.

The runs are the real CLI in subprocesses (see tests._tiny.cli_command), with short heartbeats
(1 s, grace 3 s) so a killed trial goes stale and is retried within the test rather than after
the 30 s grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from search.parallel import audit_trials
from search.study import counted
from tests._tiny import (
    FAST_GRACE_S,
    cli_command,
    cli_env,
    run_cli,
    write_tiny_experiment,
)

pytest_plugins = ["tests._postgres"]

TRIALS = 8
KILLS = 3


def _states(engine: sqlalchemy.Engine) -> dict[int, str]:
    """Trial number -> state, read with plain SQL (never creates the schema it polls)."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text("SELECT number, state FROM trials")).all()
    except sqlalchemy.exc.DBAPIError:  # not created yet, or locked for a moment
        return {}
    return {int(n): str(s).rsplit(".", 1)[-1] for n, s in rows}


def _kill_during_a_trial(
    cmd: list[str], cwd: Path, engine: sqlalchemy.Engine, done_before: int, env: dict[str, str]
) -> tuple[list[int], int]:
    """Start a run, wait for one more completed trial and a new trial running, SIGKILL it.

    Returns the trials that were running when it was killed, and the completed count then.
    """
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            states = _states(engine)
            complete = sum(s == "COMPLETE" for s in states.values())
            newest = max(states, default=-1)
            if complete > done_before and states.get(newest) == "RUNNING":
                break
            if proc.poll() is not None:
                pytest.fail(f"the run ended before it could be killed: {proc.stderr.read()}")
            time.sleep(0.05)
        else:
            pytest.fail("no trial started within 240 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    states = _states(engine)
    running = sorted(n for n, s in states.items() if s == "RUNNING")
    return running, sum(s == "COMPLETE" for s in states.values())


def _crash_campaign(folder: Path, storage: str | None) -> None:
    exp = write_tiny_experiment(folder, trials=TRIALS)
    url = storage or f"sqlite:///{folder / 'run' / 'study.db'}"
    args = ["run", str(exp), "--out", "run", "--no-progress"]
    if storage:
        args += ["--storage", storage]
    cmd = cli_command(*args, fast_heartbeat=True)
    env = cli_env(TINY_TRIAL_SLEEP="0.1")  # about 0.5 s of sleep per trial: easy to hit
    engine = sqlalchemy.create_engine(url)
    study = None

    snapshots: list[dict[int, tuple[float, ...]]] = []
    killed: list[int] = []
    done = 0
    for _ in range(KILLS):
        running, done = _kill_during_a_trial(cmd, folder, engine, done, env)
        killed += running
        study = study or optuna.load_study(study_name="tiny", storage=url)
        snapshots.append(
            {
                t.number: tuple(t.values)
                for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            }
        )
        time.sleep(FAST_GRACE_S + 0.5)  # the killed trial's heartbeat is now stale
    assert killed, "no kill landed during a trial"
    assert snapshots[-1], "no trial completed between the kills"

    final = run_cli(*args, cwd=folder, env=env, fast_heartbeat=True, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    engine.dispose()

    trials = optuna.load_study(study_name="tiny", storage=url).get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    report = audit_trials(trials)
    # Exactly the requested number of trainings, none repeated, none stuck.
    assert counted(trials) == TRIALS, report
    assert report["duplicates"] == [], report
    assert report["numbers_unique"] and report["running"] == 0, report
    # Nothing completed before a kill was lost or changed.
    for snapshot in snapshots:
        for number, values in snapshot.items():
            assert by_number[number].state == TrialState.COMPLETE
            assert tuple(by_number[number].values) == values
    # Every trial killed mid-way was failed (stale heartbeat, or none yet) and retried once
    # with the parameters it had drawn before it died (the retry draws any it had not).
    for number in killed:
        assert by_number[number].state == TrialState.FAIL, number
    retries = {
        t.system_attrs["failed_trial"]: t for t in trials if "failed_trial" in t.system_attrs
    }
    assert set(killed) <= set(retries), (killed, sorted(retries))
    for origin, retry in retries.items():
        assert by_number[origin].params.items() <= retry.params.items()
    # The run folder's outputs list every trial, the failed ones included.
    csv = (folder / "run" / "trials.csv").read_text()
    assert csv.count("\n") == len(trials) + 1


@pytest.mark.slow
def test_kill_and_resume_sqlite(tmp_path: Path) -> None:
    _crash_campaign(tmp_path, storage=None)


@pytest.mark.slow
@pytest.mark.postgres
def test_kill_and_resume_postgres(tmp_path: Path, postgres_url: str) -> None:
    _crash_campaign(tmp_path, storage=postgres_url)


@pytest.mark.slow
def test_second_run_at_once_is_refused(tmp_path: Path) -> None:
    """Two `run` commands on one experiment at once: one runs, the other refuses clearly."""
    exp = write_tiny_experiment(tmp_path, trials=3)
    args = ["run", str(exp), "--out", "run", "--no-progress"]
    env = cli_env(TINY_TRIAL_SLEEP="0.1")
    procs = [
        subprocess.Popen(
            cli_command(*args),
            cwd=tmp_path,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], (codes, [o[1][-2000:] for o in outs])
    refused = outs[codes.index(2)][1]
    errors = [line for line in refused.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, refused
    assert errors[0].startswith(f"error: {exp}: name: ")
    assert "already being run" in errors[0] and "python -m search worker" in errors[0]
    trials = optuna.load_study(
        study_name="tiny", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    ).trials
    report = audit_trials(trials)
    assert counted(trials) == 3 and report["duplicates"] == [], report


def test_run_lock_is_released_when_its_holder_is_killed(tmp_path: Path) -> None:
    """The lock is an flock: a SIGKILLed run never blocks its own resume."""
    from search.config import parse_experiment
    from search.errors import ConfigError
    from search.parallel import run_lock

    exp = parse_experiment(
        {"name": "locky", "target": "mcu", "out": "run"}, str(tmp_path / "locky.yaml")
    )
    with run_lock(exp):
        with pytest.raises(ConfigError) as info, run_lock(exp):
            pass
        assert info.value.field == "name" and str(os.getpid()) in info.value.message

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time\n"
                "from search.config import parse_experiment\n"
                "from search.parallel import run_lock\n"
                f"exp = parse_experiment({{'name': 'locky', 'target': 'mcu', 'out': 'run'}}, "
                f"{str(tmp_path / 'locky.yaml')!r})\n"
                "with run_lock(exp):\n"
                "    print('locked', flush=True)\n"
                "    time.sleep(60)\n"
            ),
        ],
        cwd=os.getcwd(),
        env=cli_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=f"process {holder.pid}"), run_lock(exp):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    with run_lock(exp):  # free again
        pass


def test_threads_per_worker_never_oversubscribe() -> None:
    from search.parallel import threads_per_worker

    for cores in (1, 2, 3, 8, 16):
        for jobs in (1, 2, 3, 4, 32):
            threads = threads_per_worker(jobs, cores)
            assert threads >= 1
            assert jobs * threads <= cores or threads == 1

"""Scale-out and crash figures on PostgreSQL: trials per minute with 1 and 2 worker processes,
and a kill-and-resume campaign that counts lost and duplicated trials.

    python experiments/benchmarks/scale.py [--trials 30] [--rounds 2]
        [--campaign-trials 30] [--kills 4] [--storage URL]

1. Throughput. `python -m search run EXP --storage URL --jobs N` with N = 1 and N = 2 on the
   digits task (recovery 3 epochs, a space of low-rank, pruning and bit widths), each run a new
   study. The CLI sets torch threads per worker to cores // N (2 threads for one process, 1 each
   for two on this 2-core machine). Runs alternate 1, 2, 2, 1, ... so a drift in the machine's
   load falls on both sides. Trials per minute = completed trials / (last trial's end - first
   trial's start): the search itself, the second worker's start-up included. Recorded beside
   it: the steady state (from the second worker's first trial) and the end-to-end rate
   (process start to exit, imports and report included).
2. Kill and resume. One `run --jobs 2` search of 30 trials is SIGKILLed `--kills` times, each
   time at a random moment inside a running trial (after at least a few more trials completed),
   and started again at once; then it runs to the end. Heartbeats and grace period are the
   product's (10 s, 30 s). Lost = trials completed before a kill that are not completed, with
   the same values, at the end, plus any shortfall below 30; duplicated = COMPLETE re-runs of a
   completed trial (`search.parallel.audit_trials`).

Without --storage it starts a throw-away PostgreSQL server (tests/_postgres.py: 127.0.0.1, a
free port, data in a temp folder). Writes experiments/results/scale.json and scale.md. Not a
test: it asserts nothing; the machine is shared, so compare the ratios measured side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _stamp  # this folder is on sys.path when run as a script
import yaml
from _scale_report import TARGETS, derive, markdown, median_of

from search.parallel import audit_trials, threads_per_worker
from search.record import failed_origin

REPO = Path(__file__).resolve().parents[2]

RESULTS = REPO / "experiments" / "results"
RECOVERY_EPOCHS = 3  # the quickstart's: a trial of a couple of seconds, not a DB round trip
# (label, worker processes, torch threads per process; None = the CLI's cores // workers)
CONFIGS = [("1w-2t", 1, None), ("1w-1t", 1, 1), ("2w-1t", 2, None)]

SPACE = {
    "name": "scale",
    "description": "The benchmark's space: per-layer low-rank, pruning and bits on the base CNN.",
    "lowrank": {"rank": {"low": 0.25, "high": 1.0, "step": 0.25}, "mode": ["svd"]},
    "prune": {
        "mode": ["per_layer"],
        "ratio": {"low": 0.0, "high": 0.5, "step": 0.1},
        "importance": ["l1", "l2"],
    },
    "quantize": {"weight_bits": [8, 16, 32], "activation_bits": [8, 32]},
}


def write_experiment(folder: Path, name: str, trials: int) -> Path:
    (folder / "scale_space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    exp = {
        "name": name,
        "task": "digits",
        "target": "mcu",
        "space": "scale_space.yaml",
        "objectives": ["accuracy", "latency_ms", "weight_bytes"],
        "max_accuracy_drop": 0.05,
        "trials": trials,
        "seed": 0,
        "recovery": {"epochs": RECOVERY_EPOCHS},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    return path


def cli(*args: str, threads: int | None = None) -> list[str]:
    """`python -m search ARGS`; with `threads`, the same `main()` with that many torch threads
    per process instead of the CLI's cores // jobs."""
    if threads is None:
        return [sys.executable, "-m", "search", *args]
    code = (
        "import sys, torch\nimport search.cli as cli\n"
        f"cli._set_threads = lambda jobs: torch.set_num_threads({int(threads)})\n"
        "raise SystemExit(cli.main())\n"
    )
    return [sys.executable, "-c", code, *args]


def load_trials(url: str, name: str) -> list[Any]:
    import optuna

    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def states(url: str, name: str) -> dict[int, str]:
    """Trial number -> state with plain SQL: never creates the schema or the study it polls."""
    import sqlalchemy

    engine = states.engines.setdefault(url, sqlalchemy.create_engine(url))  # type: ignore[attr-defined]
    query = sqlalchemy.text(
        "SELECT t.number, t.state FROM trials t JOIN studies s "
        "ON s.study_id = t.study_id WHERE s.study_name = :name"
    )
    try:
        with engine.connect() as conn:
            rows = conn.execute(query, {"name": name}).all()
    except sqlalchemy.exc.DBAPIError:
        return {}
    return {int(n): str(s).rsplit(".", 1)[-1] for n, s in rows}


states.engines = {}  # type: ignore[attr-defined]


def _postgres() -> Any:
    """tests/_postgres.py, loaded from its file: the tests folder is the checkout's, not part of
    the installed package, and is never put on sys.path."""
    path = REPO / "tests" / "_postgres.py"
    spec = importlib.util.spec_from_file_location("_postgres", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- 1. throughput ------------------------------------------------------------------------------
def throughput_run(
    project: Path,
    env: dict[str, str],
    url: str,
    jobs: int,
    name: str,
    trials: int,
    *,
    threads: int | None = None,
) -> dict[str, Any]:
    exp = write_experiment(project, name, trials)
    cpu0, t0 = children_cpu_s(), time.perf_counter()
    done = subprocess.run(
        cli(
            "run",
            str(exp),
            "--storage",
            url,
            "--jobs",
            str(jobs),
            "--out",
            f"runs/{name}",
            "--no-progress",
            threads=threads,
        ),
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    trials_ = load_trials(url, name)
    finished = [t for t in trials_ if t.datetime_start and t.datetime_complete]
    complete = [t for t in trials_ if t.state.name == "COMPLETE"]
    window = (
        max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)
    ).total_seconds()
    steady = two_worker_window(trials_) if jobs == 2 else (len(complete), window)
    return {
        "study": name,
        "jobs": jobs,
        "threads": threads or threads_per_worker(jobs),
        "complete": len(complete),
        "trials_per_min_steady": round(steady[0] / steady[1] * 60, 3) if steady else None,
        "finished": len(finished),
        "window_s": round(window, 2),
        "wall_s": round(wall, 2),
        "cpu_s": round(children_cpu_s() - cpu0, 2),
        "trials_per_min": round(len(complete) / window * 60, 3),
        "trials_per_min_end_to_end": round(len(complete) / wall * 60, 3),
        "load_avg_after": round(os.getloadavg()[0], 2),
    }


def _group(pgid: int) -> list[tuple[int, str]]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                out.append((int(entry.name), cmd))
        except (OSError, IndexError, ValueError):
            continue
    return out


def _survivors(pgid: int, wait_s: float = 10.0) -> list[str]:
    """Search workers of a killed run still alive after `wait_s` (they should die with their
    parent). Multiprocessing's resource tracker exits on its own once it sees the parent gone,
    so it is waited for but not counted."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = _group(pgid)
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    workers = [cmd for _pid, cmd in alive if "resource_tracker" not in cmd]
    for pid, _cmd in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return workers


def two_worker_window(trials: list[Any]) -> tuple[int, float] | None:
    """Completed trials and seconds from the moment two trials first ran at once (the second
    worker's first trial) to the last trial's end: the steady state of a 2-worker search."""
    spans = sorted(
        (t.datetime_start, t.datetime_complete, t.state.name)
        for t in trials
        if t.datetime_start and t.datetime_complete
    )
    start = next((b[0] for a, b in zip(spans, spans[1:]) if b[0] < a[1]), None)
    if start is None:
        return None
    end = max(s[1] for s in spans)
    done = sum(1 for s in spans if s[2] == "COMPLETE" and s[1] > start)
    return done, (end - start).total_seconds()


# -- 2. kill and resume -------------------------------------------------------------------------
def kill_campaign(
    project: Path,
    env: dict[str, str],
    url: str,
    trials: int,
    kills: int,
    rng: random.Random,
    log: Any,
) -> dict[str, Any]:
    name = "scale-crash"
    exp = write_experiment(project, name, trials)
    args = cli(
        "run", str(exp), "--storage", url, "--jobs", "2", "--out", f"runs/{name}", "--no-progress"
    )
    thresholds = [round(trials * (i + 1) / (kills + 2)) for i in range(kills)]
    snapshots: dict[int, tuple[float, ...]] = {}
    killed_running: list[int] = []
    orphans = 0
    t0 = time.perf_counter()
    for k, threshold in enumerate(thresholds):
        proc = subprocess.Popen(
            args,
            cwd=project,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        while True:
            now = states(url, name)
            complete = sum(s == "COMPLETE" for s in now.values())
            if complete >= threshold and any(s == "RUNNING" for s in now.values()):
                break
            if proc.poll() is not None:
                raise RuntimeError(f"run ended before kill {k + 1}: {proc.stderr.read()[-2000:]}")
            time.sleep(0.1)
        time.sleep(rng.uniform(0.0, 1.5))  # somewhere inside the running trial(s)
        proc.send_signal(signal.SIGKILL)  # the parent only: its worker must die with it
        proc.wait()
        proc.stderr.close()
        orphans += len(_survivors(proc.pid))
        now = states(url, name)
        running = sorted(n for n, s in now.items() if s == "RUNNING")
        killed_running = sorted(set(killed_running) | set(running))
        for t in load_trials(url, name):
            if t.state.name == "COMPLETE":
                snapshots[t.number] = tuple(t.values)
        log(
            f"  kill {k + 1}: {sum(s == 'COMPLETE' for s in now.values())} complete, "
            f"trials {running} running when killed"
        )
    final = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, check=False)
    if final.returncode != 0:
        raise RuntimeError(f"resume failed:\n{final.stderr[-3000:]}")
    wall = time.perf_counter() - t0
    end = load_trials(url, name)
    by_number = {t.number: t for t in end}
    report = audit_trials(end)
    lost = [
        n
        for n, values in snapshots.items()
        if by_number[n].state.name != "COMPLETE" or tuple(by_number[n].values) != values
    ]
    shortfall = max(0, trials - report["complete"])
    retried_killed = sorted(
        {origin for t in end if (origin := failed_origin(t)) in killed_running}
    )
    return {
        "study": name,
        "trials_requested": trials,
        "kills": kills,
        "kill_after_complete": thresholds,
        "killed_running_trials": killed_running,
        "orphan_workers": orphans,
        "complete": report["complete"],
        "extra_complete": max(0, report["complete"] - trials),
        "failed": report["failed"],
        "stuck_running": report["running"],
        "waiting": report["waiting"],
        "retried_complete": report["retried"],
        "killed_trials_retried": retried_killed,
        "lost_trials": len(lost) + shortfall,
        "lost_detail": {"changed_or_missing": lost, "shortfall": shortfall},
        "duplicate_trials": len(report["duplicates"]),
        "duplicates": report["duplicates"],
        "wall_s": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30, help="trials per throughput run")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of 1- and 2-worker runs")
    parser.add_argument("--campaign-trials", type=int, default=30)
    parser.add_argument("--kills", type=int, default=4)
    parser.add_argument("--storage", help="PostgreSQL URL (default: a throw-away server)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--render",
        action="store_true",
        help="only re-render scale.md (and derived figures) from scale.json",
    )
    args = parser.parse_args()
    if args.render:
        result = json.loads((args.out / "scale.json").read_text())
        derive(result)
        write(result, args.out)
        return
    rng = random.Random(args.seed)

    def log(line: str) -> None:
        print(line, flush=True)

    import optuna
    import torch

    server = None
    url = args.storage
    if url is None:
        server = _postgres().start_server()
        url = server.create_database("scale")
        log(f"PostgreSQL on 127.0.0.1:{server.port} (throw-away, {server.root})")
    work = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    project = work / "project"
    project.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["COMPRESS_SEARCH_CACHE"] = str(work / "cache")  # the base model trains once
    env["PYTHONWARNINGS"] = "ignore"
    stamp = _stamp.start()
    result: dict[str, Any] = {
        "machine": {
            "cores": os.cpu_count(),
            "load_avg_before": round(os.getloadavg()[0], 2),
            "commit": stamp["commit"],
            "date": stamp["date"],
            "python": platform.python_version(),
            "torch": torch.__version__,
            "optuna": optuna.__version__,
        },
        "command": " ".join(["python experiments/benchmarks/scale.py", *sys.argv[1:]]),
        "workload": {
            "task": "digits",
            "target": "mcu",
            "space": SPACE,
            "recovery_epochs": RECOVERY_EPOCHS,
            "trials_per_run": args.trials,
        },
    }
    try:
        log("warm-up: training the digits base model once (cached for every run)")
        throughput_run(project, env, url, 1, "scale-warmup", 1)

        runs: list[dict[str, Any]] = []
        order = [c for r in range(args.rounds) for c in (CONFIGS if r % 2 == 0 else CONFIGS[::-1])]
        for i, (label, jobs, threads) in enumerate(order):
            run = throughput_run(
                project, env, url, jobs, f"scale-{label}-{i}", args.trials, threads=threads
            )
            run["config"] = label
            runs.append(run)
            log(
                f"  {run['study']}: {run['complete']} trials, {run['trials_per_min']} /min "
                f"(search), {run['trials_per_min_end_to_end']} /min end to end, "
                f"load {run['load_avg_after']}"
            )
        by = {label: [r for r in runs if r["config"] == label] for label, _j, _t in CONFIGS}
        tpm = {label: median_of(rs, "trials_per_min") for label, rs in by.items()}
        e2e = {label: median_of(rs, "trials_per_min_end_to_end") for label, rs in by.items()}
        best_one = max(("1w-2t", "1w-1t"), key=lambda k: tpm[k])
        result["throughput"] = {
            "configs": {
                label: {"workers": j, "threads_per_worker": t or threads_per_worker(j)}
                for label, j, t in CONFIGS
            },
            "runs": runs,
            "trials_per_min": tpm,
            "trials_per_min_end_to_end": e2e,
            "trials_per_min_2_workers_steady": median_of(by["2w-1t"], "trials_per_min_steady"),
            "best_single_process": best_one,
            "speedup_vs_cli_default_single": round(tpm["2w-1t"] / tpm["1w-2t"], 3),
            "speedup_2_workers_end_to_end": round(e2e["2w-1t"] / e2e[best_one], 3),
            "speedup_2_workers_steady": round(
                median_of(by["2w-1t"], "trials_per_min_steady") / tpm[best_one], 3
            ),
        }
        # Against the faster of the two single-process settings: the gain from a second
        # worker, not from leaving the CLI's thread default.
        result["speedup_2_workers"] = round(tpm["2w-1t"] / tpm[best_one], 3)
        log(f"speedup_2_workers = {result['speedup_2_workers']} (vs {best_one}); trials/min {tpm}")

        log(f"kill and resume: {args.campaign_trials} trials, {args.kills} SIGKILLs")
        crash = kill_campaign(project, env, url, args.campaign_trials, args.kills, rng, log)
        result["crash"] = crash
        result["lost_trials"] = crash["lost_trials"]
        result["duplicate_trials"] = crash["duplicate_trials"]
        log(
            f"lost_trials = {crash['lost_trials']}, duplicate_trials = "
            f"{crash['duplicate_trials']}, complete = {crash['complete']}"
        )
    finally:
        for engine in states.engines.values():  # type: ignore[attr-defined]
            engine.dispose()
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    result["machine"]["load_avg_after"] = round(os.getloadavg()[0], 2)
    result["target"] = TARGETS
    result["meets_target"] = (
        result["speedup_2_workers"] >= TARGETS["speedup_2_workers"]
        and result["lost_trials"] == 0
        and result["duplicate_trials"] == 0
    )
    derive(result)
    write(result, args.out)
    log(f"wrote {args.out / 'scale.json'} and {args.out / 'scale.md'}")


def write(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    earlier = out / "scale.json"
    if "real_sized" not in result and earlier.is_file():  # scale_real.py's section stays
        kept = json.loads(earlier.read_text()).get("real_sized")
        if kept:
            result["real_sized"] = kept
    (out / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "scale.md").write_text(markdown(result))


if __name__ == "__main__":
    main()

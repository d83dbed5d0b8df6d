"""Several worker processes on one study, on this machine (`python -m search run --jobs N`).

The parent validates the experiment, builds the task once (so the base model is trained and
cached before any worker starts; workers load it from the run's cache), creates the study and
enqueues the warm-start recipes, then starts N - 1 worker processes and works as the N-th
itself. Every process runs `run_search` on the same RDB study: Optuna hands each trial to
exactly one process, heartbeats mark the trial of a dead worker as failed and it is retried
once by another.

Each worker gets `cores // N` torch threads (at least 1), so workers x threads <= cores. With
`device: cuda`, worker k sees only GPU k mod (number of GPUs) through `CUDA_VISIBLE_DEVICES`:
`--jobs N` on N GPUs is one worker per GPU.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import multiprocessing
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Experiment
from .errors import ConfigError
from .record import failed_origin
from .storage import fail_orphaned_trials, public_url

if TYPE_CHECKING:  # the study module imports torch and optuna; the lock must stay light
    from optuna.trial import FrozenTrial

    from .study import SearchResult

__all__ = [
    "audit_trials",
    "fail_orphaned_trials",
    "gpu_ids",
    "public_url",
    "run_jobs",
    "run_lock",
    "threads_per_worker",
]

_JOIN_TIMEOUT_S = 30


def threads_per_worker(jobs: int, cores: int | None = None) -> int:
    """Torch threads for each of `jobs` processes so that jobs x threads <= cores."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, jobs))


@contextlib.contextmanager
def run_lock(exp: Experiment) -> Iterator[None]:
    """Refuse a second `run` of the same study on this machine while the first is running.

    Two `run` commands started together would both create the study and both enqueue the
    warm-start recipes; the second is told to join as a worker instead. The lock is an
    `flock` the kernel drops when the process dies, so a killed run never blocks its resume.
    It lives in the temp folder, keyed by storage URL and study name, so nothing is written
    in the run folder before the experiment has been validated.

    Raises:
        ConfigError: another process holds the lock (exit status 2 from the CLI).
    """
    key = hashlib.sha256(f"{exp.storage_url}\n{exp.name}".encode()).hexdigest()[:20]
    path = Path(tempfile.gettempdir()) / f"compress-search-{key}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            url = public_url(exp.storage_url)
            raise ConfigError(
                exp.source,
                "name",
                f"study {exp.name!r} in {url} is already being run by process {holder} on this "
                f"machine; wait for it, or join it with: python -m search worker {exp.source} "
                f"--storage {url}",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def audit_trials(trials: Sequence[FrozenTrial]) -> dict[str, Any]:
    """What crashes and sharing did to a study: retried, duplicated and stuck trials.

    A duplicate is a COMPLETE trial that re-ran a trial which itself completed, or a second
    COMPLETE retry of the same killed trial. The same parameters twice is not a duplicate by
    itself: a sampler may propose a point again.

    Returns:
        complete, failed, running, waiting (counts); retried (numbers of COMPLETE retries of a
        killed trial); duplicates (numbers); numbers_unique (bool).
    """
    from optuna.trial import TrialState

    by_number = {t.number: t for t in trials}
    origins: dict[int, list[int]] = {}
    duplicates: set[int] = set()
    for t in trials:
        origin = failed_origin(t)
        if t.state != TrialState.COMPLETE or origin is None:
            continue
        origins.setdefault(origin, []).append(t.number)
        if origin in by_number and by_number[origin].state == TrialState.COMPLETE:
            duplicates.add(t.number)
    for numbers in origins.values():
        duplicates.update(sorted(numbers)[1:])
    return {
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "running": sum(t.state == TrialState.RUNNING for t in trials),
        "waiting": sum(t.state == TrialState.WAITING for t in trials),
        "retried": sorted(n for ns in origins.values() for n in ns),
        "duplicates": sorted(duplicates),
        "numbers_unique": len(by_number) == len(trials),
    }


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the parent dies, so `kill -9` of a run stops
    all its workers (their running trials are then failed by heartbeat and retried)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


def gpu_ids() -> list[str]:
    """The CUDA devices this process may use, as `CUDA_VISIBLE_DEVICES` names them (all of the
    machine's when it is unset). Counted without starting CUDA here."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _worker(exp: Experiment, threads: int, parent: int, gpu: str | None = None) -> None:
    """Body of one worker process: join the study and search until it holds enough trials.

    `gpu`: the one CUDA device this worker sees (set before torch starts CUDA), so `--jobs N`
    on a machine with N GPUs runs one worker per GPU; the parent keeps the first."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the death signal was armed
        os._exit(1)
    # Ctrl-C reaches the whole process group: the parent stops its workers itself, without
    # a traceback from each of them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only allowed before any inter-op work
        torch.set_num_interop_threads(1)
    from .study import run_search

    try:
        run_search(exp, progress=False, worker=True, log=lambda _line: None)
    except ConfigError:
        sys.exit(2)  # the parent meets the same bad input and reports it once


def run_jobs(
    exp: Experiment,
    *,
    jobs: int,
    threads: int | None = None,
    progress: bool = True,
    worker: bool = False,
    log: Callable[[str], None] = print,
) -> SearchResult:
    """Run (or resume) the experiment's study with `jobs` processes on this machine.

    Stops when the study holds `exp.trials` evaluated plans (repeats do not count). Each
    process finishes the trial it has started, so with N processes the study can end with up
    to N - 1 more.

    Args:
        jobs: processes, this one included (1 runs in this process only).
        threads: torch threads per process (default `cores // jobs`).
        progress: progress bar (in this process; it counts every worker's trials).
        worker: join an existing study (`python -m search worker --jobs N`): never create it
            nor enqueue the warm-start recipes.
    """
    from .study import prepare_run, run_search

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError("<command line>", "--jobs", f"must be an integer >= 1, got {jobs!r}")
    threads = threads or threads_per_worker(jobs)
    import torch

    torch.set_num_threads(threads)
    if jobs == 1:
        return run_search(exp, progress=progress, worker=worker, log=log)

    # Check everything, build the task and enqueue the start here, before any process exists:
    # the base model is trained (or loaded) once and cached in the run folder for the workers,
    # and the start goes in once, before any worker asks.
    prepared = prepare_run(exp, worker=worker, log=log)

    ctx = multiprocessing.get_context("spawn")  # never fork a process that has run torch
    gpus = gpu_ids() if exp.device == "cuda" else []
    workers = [
        ctx.Process(
            target=_worker,
            args=(exp, threads, os.getpid(), gpus[k % len(gpus)] if gpus else None),
            name=f"search-worker-{k}",
        )
        for k in range(1, jobs)
    ]
    if gpus:
        log(f"search: one worker per GPU, round robin over CUDA devices {gpus}")
    for proc in workers:
        proc.start()
    log(f"search: {jobs} processes on study {exp.name!r}, {threads} torch thread(s) each")
    try:
        result = run_search(exp, progress=progress, worker=worker, log=log, prepared=prepared)
        for proc in workers:
            proc.join()  # each finishes the trial it holds; none starts another
    finally:
        for proc in workers:
            if proc.is_alive():  # an error or Ctrl-C here: stop the others too
                proc.terminate()
                proc.join(_JOIN_TIMEOUT_S)
                if proc.is_alive():
                    proc.kill()
    for proc in workers:
        if proc.exitcode not in (0, None):
            log(f"search: worker {proc.name} exited with status {proc.exitcode}")
    # Counts again: the workers' last trials finished after this process stopped.
    from .study import tally

    return tally(result)

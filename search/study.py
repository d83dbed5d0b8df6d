"""The Optuna study: storage, sampler, resume, progress, and the run folder's outputs."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import time
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import Engine

from spaces import SearchSpace, SpaceError

from ._resources import resolve
from .config import Experiment
from .errors import ConfigError
from .hardware import HardwareProfile, load_profile
from .record import (
    COUNTED,
    StudyAttr,
    TrialAttr,
    TrialStatus,
    budget_lines,
    metric_of,
    status_of,
    study_attrs,
    trial_attr,
    trial_feasible,
    write_study_attrs,
)
from .refine import refine_front
from .start import warm_start
from .storage import check_storage_url, fail_orphaned_trials, first_line, public_url
from .validate import check_space_runs_on

HEARTBEAT_S = 10
GRACE_S = 30
# Proposals in a row that use no training (over budget, repeats) before the search gives up:
# the sampler is asked again after each, but budgets out of reach of the space would never end.
PROPOSALS_PER_TRAINING = 50


def _sqlite_fast_commits(dbapi_connection: Any, _record: Any) -> None:
    """WAL journal, fsync at checkpoints only: a trial writes ~25 attributes, each its own
    transaction, and with fsync per commit they cost more than costing the plan. A killed
    process still loses nothing committed (only a power cut could)."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


def check_storage(exp: Experiment) -> None:
    """Refuse the experiment's storage URL if it cannot work, before anything is trained or
    written (see `check_storage_url`); the default SQLite file in the run folder is not
    checked: it is created with the folder."""
    if exp.storage is not None:
        check_storage_url(exp.storage, *exp.storage_where)


def make_storage(url: str) -> optuna.storages.RDBStorage:
    """RDB storage with heartbeats: a trial whose worker died is failed and retried once."""
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
        if not sqlalchemy.event.contains(Engine, "connect", _sqlite_fast_commits):
            sqlalchemy.event.listen(Engine, "connect", _sqlite_fast_commits)
    else:
        engine_kwargs["pool_pre_ping"] = True
    with warnings.catch_warnings():  # heartbeats and retries are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=1
            ),
        )


def make_sampler(name: str, *, seed: int, n_objectives: int) -> optuna.samplers.BaseSampler:
    """Seeded samplers; `auto` is multivariate TPE with a constant liar for parallel workers."""
    if name in ("auto", "tpe"):
        with warnings.catch_warnings():  # multivariate/group are stable in practice
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed, multivariate=True, group=True, constant_liar=True, n_startup_trials=10
            )
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=16)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=10)
    return optuna.samplers.RandomSampler(seed=seed)


def load_space(exp: Experiment) -> SearchSpace:
    path = resolve("space", exp.space, file=exp.source, field="space")
    try:
        return SearchSpace.from_file(path)
    except SpaceError as exc:
        raise ConfigError(exc.file, exc.field, exc.message) from None


def load_target(exp: Experiment) -> HardwareProfile:
    return load_profile(exp.target, file=exp.source, field="target")


def load_targets(exp: Experiment) -> list[HardwareProfile]:
    """Every target's profile (`targets`, else the one `target`), checked against the space."""
    if not exp.targets:
        return [load_target(exp)]
    field = "targets"
    profiles = [load_profile(t, file=exp.source, field=field) for t in exp.targets]
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        raise ConfigError(exp.source, field, f"two profiles share a name: {names}")
    return profiles


def check_targets(exp: Experiment, study: optuna.Study, profiles: list[HardwareProfile]) -> None:
    """Refuse to resume a study searched for another target, or another set of targets."""
    attrs = study_attrs(study)
    stored = attrs.get(StudyAttr.TARGETS) or (
        [attrs[StudyAttr.PROFILE]["name"]]
        if attrs.get(StudyAttr.PROFILE, {}).get("name")
        else None
    )
    wanted = [p.name for p in profiles]
    if stored and list(stored) != wanted:

        def shown(names: list[str]) -> str:
            return repr(names[0]) if len(names) == 1 else f"targets {names}"

        raise ConfigError(
            exp.source,
            "targets" if exp.targets else "target",
            f"the stored study {exp.name!r} was searched for {shown(list(stored))}, "
            f"not {shown(wanted)}; give --out for a separate run",
        )


@dataclass
class SearchResult:
    """What a search did: `completed` proposals, of which `trainings` count toward `trials`."""

    study: optuna.Study
    run_dir: Path
    storage_url: str
    completed: int
    over_budget: int
    failed: int
    stopped_early: int = 0
    duplicates: int = 0
    trainings: int = 0
    recovery_skipped: int = 0

    def line(self) -> str:
        """The summary a run prints: trainings first, then what the proposals cost."""
        return (
            f"{self.trainings} trainings ({self.stopped_early} stopped early, "
            f"{self.recovery_skipped} already within the base's accuracy, not fine-tuned) from "
            f"{self.completed} proposals ({self.over_budget} over budget, not trained; "
            f"{self.duplicates} repeats answered from the first trial); {self.failed} failed"
        )


def completed(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def counted(trials: Sequence[FrozenTrial]) -> int:
    """Completed trials that count toward the experiment's `trials`: the trainings.

    A plan over budget is costed and recorded in under a second, and a plan the sampler
    proposes again is answered from the earlier trial; neither counts, and the sampler is asked
    again. So `trials` is the number of plans trained (stopped early included): on a real model
    each costs minutes to hours, and that is the budget a user sets (`record.COUNTED`).
    """
    return sum(status_of(t) in COUNTED for t in trials)


def open_study(exp: Experiment, *, create: bool = True) -> optuna.Study:
    """Create the study or resume it; refuses a stored study that wants other objectives."""
    try:
        storage = make_storage(exp.storage_url)
    except Exception as exc:  # tables that cannot be created, a database that went away
        file, field = exp.storage_where
        orig = getattr(exc, "orig", None) or exc
        raise ConfigError(
            file,
            field,
            f"cannot open the study in {public_url(exp.storage_url)}: {first_line(orig)}",
        ) from None
    directions = [o.direction for o in exp.objectives]
    n_done = 0
    try:
        existing = optuna.load_study(study_name=exp.name, storage=storage)
        n_done = len(existing.trials)
        stored = [d.name.lower() for d in existing.directions]
        if stored != directions:
            raise ConfigError(
                exp.source,
                "objectives",
                f"the stored study {exp.name!r} optimises "
                f"{stored}; use another name or out folder to start afresh",
            )
    except KeyError:
        if not create:
            raise ConfigError(
                exp.source, "storage", f"no study {exp.name!r} in {exp.storage_url}"
            ) from None
    # Offset the seed by the trials already stored so a resumed run does not replay the first
    # samples of a seeded sampler.
    seed = exp.seed + n_done
    if not create:
        # Workers that join together see the same n_done: mix in host and pid so they do not
        # all draw the same samples.
        seed = zlib.crc32(f"{seed} {socket.gethostname()} {os.getpid()}".encode()) % 2**31
    sampler = make_sampler(exp.sampler, seed=seed, n_objectives=len(directions))
    return optuna.create_study(
        study_name=exp.name,
        storage=storage,
        directions=[StudyDirection[d.upper()] for d in directions],
        sampler=sampler,
        load_if_exists=True,
    )


class _Progress:
    """tqdm bar: trainings done / total, proposals, over budget, feasible, best, ETA."""

    def __init__(self, study: optuna.Study, total: int, primary: str, enabled: bool) -> None:
        from tqdm.auto import tqdm

        done = counted(completed(study))
        self.primary, self.total = primary, total
        self.bar = tqdm(
            total=total,
            initial=min(done, total),
            unit="training",
            disable=not enabled,
            dynamic_ncols=True,
            desc="search",
        )
        self.update(study)

    def update(
        self,
        study: optuna.Study,
        trial: FrozenTrial | None = None,
        trials: Sequence[FrozenTrial] | None = None,
    ) -> None:
        if trial is not None and trial.state == TrialState.FAIL:
            reason = trial_attr(trial, TrialAttr.FAIL_REASON, "see the trial's attributes")
            self.bar.write(f"trial {trial.number} failed: {reason}")
        if trials is None:
            trials = completed(study)
        feasible = [t for t in trials if trial_feasible(t)]
        best = max((metric_of(t, self.primary) or 0.0 for t in feasible), default=None)
        rejected = sum(status_of(t) is TrialStatus.OVER_BUDGET for t in trials)
        self.bar.set_postfix(
            proposals=len(trials),
            over_budget=rejected,
            feasible=len(feasible),
            best=f"{best:.4f}" if best is not None else "-",
            refresh=False,
        )
        self.bar.n = min(counted(trials), self.total)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def validate_run(exp: Experiment) -> tuple[SearchSpace, list[HardwareProfile]]:
    """Everything a run checks before it writes anything: the space, the targets, the space's
    bits on each target, `budget_margin` against each profile's measured error, the storage."""
    from .objective import latency_margin

    space, profiles = load_space(exp), load_targets(exp)
    for each in profiles:
        check_space_runs_on(space, each)
        latency_margin(exp, each)  # `budget_margin: p90` needs a profile with a measured error
    check_storage(exp)
    return space, profiles


@dataclass
class PreparedRun:
    """A run ready for its first trial (`prepare_run`)."""

    study: optuna.Study
    objective: Any
    fresh: Path | None  # the outermost folder the run created: removed if its input is refused


def prepare_run(
    exp: Experiment,
    *,
    worker: bool = False,
    log: Callable[[str], None] = print,
    objective_cls: type | None = None,
    objective_kwargs: Mapping[str, Any] | None = None,
) -> PreparedRun:
    """Everything before the first trial: check the input, build the task, open (or create) the
    study and its record, build the objective and enqueue the start (not for a `worker`).

    Bad input raises ConfigError and leaves no half-written run folder behind. `run_search` and
    `parallel.run_jobs` both start here.
    """
    from .objective import TrialObjective
    from .tasks import load_task

    space, profiles = validate_run(exp)
    profile = profiles[0]
    run_dir = exp.run_dir
    # The outermost folder this run would create: removed again if the input is refused.
    fresh = next((p for p in reversed([run_dir, *run_dir.parents]) if not p.exists()), None)
    try:  # bad input met before the first trial leaves no half-written run folder behind
        task = load_task(exp, log=log)
        run_dir.mkdir(parents=True, exist_ok=True)
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures get our own message
        study = open_study(exp, create=not worker)
        check_targets(exp, study, profiles)
        if exp.targets:
            from .multi_target import MultiTargetObjective

            cls: type = objective_cls or MultiTargetObjective
            target: Any = profiles
        else:
            cls, target = objective_cls or TrialObjective, profile
        # The objective checks the space against the network (students larger than it), and
        # the start reads data too.
        objective = cls(
            exp, task, space, target, weights_dir=run_dir / "weights", **(objective_kwargs or {})
        )
        _record_study_attrs(study, exp, objective, profile, space)
        fail_orphaned_trials(study, exp.storage_url, grace_s=GRACE_S)  # killed before a heartbeat
        if not worker and not study.trials:
            warm_start(study, objective, log=log)
    except ConfigError:
        _discard(fresh)
        raise
    return PreparedRun(study, objective, fresh)


def run_search(
    exp: Experiment,
    *,
    progress: bool = True,
    worker: bool = False,
    log: Callable[[str], None] = print,
    objective_cls: type | None = None,
    objective_kwargs: Mapping[str, Any] | None = None,
    prepared: PreparedRun | None = None,
) -> SearchResult:
    """Run (or resume) the experiment's study until it holds `exp.trials` evaluated plans.

    Args:
        worker: join an existing shared study instead of creating one (`python -m search worker`).
        objective_cls: a `TrialObjective` subclass to run instead (e.g. one that fixes part of
            every plan), built as `objective_cls(exp, task, space, profile, weights_dir=...,
            **objective_kwargs)`.
        prepared: `prepare_run`'s result, when the caller has prepared the run.
    """
    prepared = prepared or prepare_run(
        exp,
        worker=worker,
        log=log,
        objective_cls=objective_cls,
        objective_kwargs=objective_kwargs,
    )
    study, objective = prepared.study, prepared.objective
    bar = _Progress(study, exp.trials, objective.primary, progress)
    failed_here = idle_in_a_row = 0

    def stop_when_done(study: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal failed_here, idle_in_a_row
        failed_here += trial.state == TrialState.FAIL
        idle_in_a_row = 0 if status_of(trial) in COUNTED else idle_in_a_row + 1
        trials = completed(study)
        bar.update(study, trial, trials)
        # Enough trainings, or failing trials, or a sampler that keeps proposing plans over
        # budget or seen before (counted in this process): stop rather than loop forever.
        gave_up = idle_in_a_row >= PROPOSALS_PER_TRAINING
        if counted(trials) >= exp.trials or failed_here >= max(exp.trials, 10) or gave_up:
            study.stop()

    started = time.perf_counter()
    if counted(completed(study)) < exp.trials:
        study.optimize(
            objective,
            n_trials=None,
            callbacks=[stop_when_done],
            catch=(Exception,),
            gc_after_trial=False,
        )
    bar.close()
    if idle_in_a_row >= PROPOSALS_PER_TRAINING:
        log(
            f"search: {PROPOSALS_PER_TRAINING} proposals in a row were over budget or repeats; "
            "stopping (the budgets may be out of reach of this space)"
        )
    if getattr(objective, "config_error", None) is not None:  # bad data met mid-search
        _discard(prepared.fresh)
        raise objective.config_error
    if exp.recovery.refine_top_k > 0 and not worker:
        refine_front(study, objective, log=log)
    result = tally(
        SearchResult(
            study=study,
            run_dir=exp.run_dir,
            storage_url=exp.storage_url,
            completed=0,
            over_budget=0,
            failed=0,
        )
    )
    log(f"search: {result.line()} in {time.perf_counter() - started:.0f} s")
    return result


def _discard(fresh: Path | None) -> None:
    """Remove the folder a refused run created (None: it created none)."""
    if fresh is not None:
        shutil.rmtree(fresh, ignore_errors=True)


def tally(result: SearchResult) -> SearchResult:
    """Fill the result's counts from its study (again after parallel workers finished)."""
    trials = completed(result.study)
    status = [status_of(t) for t in trials]
    result.completed = len(trials)
    result.over_budget = status.count(TrialStatus.OVER_BUDGET)
    result.stopped_early = status.count(TrialStatus.STOPPED_EARLY)
    result.duplicates = status.count(TrialStatus.DUPLICATE)
    result.trainings = sum(s in COUNTED for s in status)
    result.recovery_skipped = sum(bool(trial_attr(t, "recovery_skipped")) for t in trials)
    result.failed = len(result.study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
    return result


def _record_study_attrs(
    study: optuna.Study,
    exp: Experiment,
    objective: Any,
    profile: HardwareProfile,
    space: SearchSpace,
) -> None:
    from .objective import layer_costs

    base_costs = objective.baseline.cost.metrics()
    attrs = {
        StudyAttr.EXPERIMENT: exp.to_dict(),
        StudyAttr.OBJECTIVES: [[o.metric, o.direction] for o in exp.objectives],
        StudyAttr.CONSTRAINTS: objective.constraint_names,
        StudyAttr.BUDGETS: objective.budgets,
        StudyAttr.MAX_ACCURACY_DROP: exp.max_accuracy_drop,
        StudyAttr.PROFILE: profile.to_dict(),
        StudyAttr.BASE_METRICS: {**objective.baseline.metrics, **base_costs},
        StudyAttr.TASK: objective.task.name,
        StudyAttr.BASE_HASH: objective.task.base_hash,
        StudyAttr.SPACE: space.name,
        StudyAttr.PRIMARY_METRIC: objective.primary,
        # Which latency the budget was checked against: the prediction or its p90 bound.
        StudyAttr.BUDGET_MARGIN: {
            "bound": exp.budget_margin,
            "latency_error": objective.latency_margin,
        },
        StudyAttr.BASE_LAYER_COSTS: layer_costs(objective.baseline.cost),
        # A multi-target study's own costs are relative to the base model: no line.
        StudyAttr.BUDGET_LINES: {}
        if exp.targets
        else budget_lines(base_costs, profile.checked_budgets(objective.budgets), base_costs),
    }
    if exp.targets:  # one study, several devices: what each target's view reads
        attrs[StudyAttr.TARGETS] = list(objective.profiles)
        attrs[StudyAttr.TARGET_VIEWS] = objective.target_views()
    write_study_attrs(study, attrs)

"""The refine stage: the front's best plans trained again with the full recovery budget.

Short recovery while searching, long at the end (as AMC and HAQ do). `run_search` calls it when
the experiment sets `recovery.refine_top_k`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from spaces import CompressionPlan

from .pipeline import prepare, recovery_schedule
from .record import (
    StudyAttr,
    TrialAttr,
    TrialStatus,
    metric_of,
    status_of,
    study_attr,
    trial_attr,
    write_study_attrs,
)


def refine_front(study: optuna.Study, objective: Any, *, log: Callable[[str], None]) -> None:
    """Re-train the top-K front plans with the full recovery budget and re-evaluate them.

    Short recovery while searching, long at the end (as AMC and HAQ do). Results go to the
    study attribute `refined` ({trial number: metrics}); the search-time figures stay on the
    trials, and the report shows both. Plans already refined with these epochs are skipped.
    Epochs: `refine_epochs`, or `refine_student_epochs` for students (from scratch), and never
    fewer than the search's own.
    """
    exp, primary = objective.exp, objective.primary
    front = [t for t in study.best_trials if status_of(t) is TrialStatus.TRAINED]
    front.sort(key=lambda t: -(metric_of(t, primary) or 0.0))
    refined = dict(study_attr(study, StudyAttr.REFINED, {}))
    for t in front[: exp.recovery.refine_top_k]:
        plan = CompressionPlan.from_dict(trial_attr(t, TrialAttr.PLAN))
        schedule = recovery_schedule(exp.recovery, plan, refine=True)
        epochs, steps = schedule.epochs, schedule.steps
        budget = {"epochs": epochs} if steps is None else {"epochs": epochs, "steps": steps}
        done = refined.get(str(t.number), {})
        if (done.get("epochs"), done.get("steps")) == (epochs, steps):
            continue
        compressed, _ = objective.build_and_cost(plan)
        prepare(compressed, plan, objective.task)
        model = objective.train(compressed, plan, seed=exp.seed + t.number, refine=True)
        metrics = objective.task.evaluate(model, "val")  # the whole validation split
        path = objective.save_weights(model, t.number, suffix="-refined")
        refined[str(t.number)] = {
            **metrics,
            **budget,
            "weights": str(path),
            "accuracy_drop": objective.full_val_baseline()[primary] - metrics[primary],
        }
        spent = f"{epochs} epochs" if steps is None else f"{steps} steps"
        log(
            f"refined trial {t.number}: {primary} {metric_of(t, primary):.4f} -> "
            f"{metrics[primary]:.4f} ({spent})"
        )
    write_study_attrs(study, {StudyAttr.REFINED: refined})

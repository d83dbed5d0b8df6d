"""Storage helpers below the study: a URL fit for messages, and the orphaned-trial sweep.

Light on imports (optuna and SQLAlchemy load inside the functions): the run lock in
`search.parallel` uses `public_url` before anything heavy is imported.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

__all__ = ["fail_orphaned_trials", "public_url"]


def public_url(url: str) -> str:
    """The storage URL with any password masked, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: show it as given, it holds no password
        return url


def fail_orphaned_trials(study: optuna.Study, storage_url: str, *, grace_s: float) -> list[int]:
    """Fail (and retry once) RUNNING trials whose process died before its first heartbeat.

    Optuna's heartbeat check skips a RUNNING trial that has no heartbeat row at all: a process
    killed between creating a trial and writing its first heartbeat (a few milliseconds) leaves
    it RUNNING forever, never retried. Such a trial older than `grace_s` is dead: a live one
    records its heartbeat at once. Call this when a run starts (resume).

    Returns:
        The numbers of the trials it failed.
    """
    import optuna
    import sqlalchemy
    from optuna.trial import TrialState

    now = datetime.now()  # datetime_start is the writer's naive local time
    old = [
        t.number
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.datetime_start is not None and now - t.datetime_start > timedelta(seconds=grace_s)
    ]
    if not old:
        return []
    storage = optuna.storages.RDBStorage(
        storage_url, skip_table_creation=True, skip_compatibility_check=True
    )
    try:
        study_id = storage.get_study_id_from_name(study.study_name)
        ids = {storage.get_trial_id_from_study_id_trial_number(study_id, n): n for n in old}
        with storage.engine.connect() as conn:
            beating = {
                row[0]
                for row in conn.execute(
                    sqlalchemy.text(
                        "SELECT trial_id FROM trial_heartbeats WHERE trial_id IN "
                        f"({', '.join(str(int(i)) for i in ids)})"
                    )
                )
            }
        failed = []
        for trial_id, number in ids.items():
            if trial_id in beating:
                continue  # Optuna's own stale check handles it
            try:
                if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                    failed.append(number)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another process failed it first
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
            retry(study, storage.get_trial(trial_id))
        return failed
    finally:
        storage.remove_session()
        storage.engine.dispose()

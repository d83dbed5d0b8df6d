"""Storage helpers below the study: URL checks, a URL fit for messages, the orphaned-trial sweep.

Light on imports (optuna and SQLAlchemy load inside the functions): the run lock in
`search.parallel` uses `public_url` before anything heavy is imported.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    import optuna

__all__ = ["check_storage_url", "fail_orphaned_trials", "first_line", "public_url"]


def public_url(url: str) -> str:
    """The storage URL with any password masked, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: mask what looks like user:password@
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


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


def first_line(exc: BaseException) -> str:
    """The first line of an error's message, whitespace folded, at most 200 characters."""
    text = " ".join(str(exc).split("\n")[0].split())
    return (text or type(exc).__name__)[:200]


def check_storage_url(storage: str, file: str, field: str) -> None:
    """A server is connected to once (10 s timeout); a SQLite file's folder must exist.

    Raises:
        ConfigError: naming `file` and `field` (`--storage` or the `storage` field), the
            password masked (exit status 2).
    """
    import sqlalchemy
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    shown = public_url(storage)
    try:
        url = make_url(storage)
        url.get_dialect()
    except ImportError as exc:
        raise ConfigError(file, field, _driver_hint(storage, exc)) from None
    except Exception as exc:  # malformed URL or unknown database kind
        raise ConfigError(
            file,
            field,
            f"{shown!r} is not a usable SQLAlchemy URL ({first_line(exc)}); "
            "use sqlite:///path/study.db or postgresql://user:password@host:5432/db",
        ) from None
    if url.get_backend_name() == "sqlite":
        folder = Path(url.database or ".").parent
        if url.database not in (None, "", ":memory:") and not folder.is_dir():
            raise ConfigError(file, field, f"the folder {folder} of {shown} does not exist")
        return
    connect_args = {"connect_timeout": 10} if url.get_backend_name() == "postgresql" else {}
    try:
        engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args=connect_args)
    except ImportError as exc:
        raise ConfigError(file, field, _driver_hint(storage, exc)) from None
    except Exception as exc:
        raise ConfigError(file, field, f"{shown}: {first_line(exc)}") from None
    try:
        with engine.connect():
            pass
    except Exception as exc:
        orig = getattr(exc, "orig", None) or exc
        raise ConfigError(file, field, f"cannot connect to {shown}: {first_line(orig)}") from None
    finally:
        engine.dispose()


def _driver_hint(url: str, exc: BaseException) -> str:
    if url.startswith("postgresql"):
        return (
            f"the PostgreSQL driver is not installed ({first_line(exc)}); "
            "pip install 'compression-search[postgres]'"
        )
    return f"its database driver is not installed ({first_line(exc)})"

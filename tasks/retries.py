"""The stage tasks' retry policy: `@task(..., **STAGE_RETRIES)` retries a transient failure (a locked
database, a tracking server down or answering 429/5xx: lifecycle/faults.py) three times with a bounded
backoff, and nothing else (user errors, full disks, failed validations, bugs fail at once)."""

from __future__ import annotations

from typing import Any

from prefect import Task, get_run_logger
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from lifecycle.faults import transient_reason

# Seconds before retry 1, 2, 3 (bounded exponential backoff, +-20% jitter): enough for a tracking server to
# restart or a SQLite writer to let go (MLflow itself waits 20 s on a lock and retries HTTP a few seconds,
# lifecycle/runtime.py `quiet_environment`), while a server that stays down fails the stage within ~2 min.
RETRY_DELAYS_S = (2, 8, 30)


def is_transient(task: Task, task_run: TaskRun, state: State) -> bool:
    """Prefect's retry condition for the stage tasks: retry only a transient failure (a locked database, a
    tracking server down or answering 429/5xx), never a user error, a full disk, a failed validation or a bug;
    say so in the run's log."""
    error = state.data if isinstance(state.data, BaseException) else None
    reason = transient_reason(error) if error is not None else None
    if reason is not None:
        attempt = max(task_run.run_count, 1)  # the attempt that failed; Prefect asks only while retries remain
        get_run_logger().warning("%s: transient failure (%s), retry %d of %d in about %d s", task.name, reason,
                                  attempt, task.retries, RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S)) - 1])
    return reason is not None


STAGE_RETRIES: dict[str, Any] = dict(retries=len(RETRY_DELAYS_S), retry_delay_seconds=list(RETRY_DELAYS_S),
                                     retry_jitter_factor=0.2, retry_condition_fn=is_transient)

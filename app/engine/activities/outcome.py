"""Recording an attempt's outcome, and the workflow task it wakes, in one transaction.

The attempt's row must still name this attempt as running (STARTED, by this task, this
attempt number), or the outcome is discarded: the run closed, or the attempt was timed
out or reported lost meanwhile. Deadlines are checked first, by Postgres's clock: past
the run's deadline the run times out; past the attempt's, the attempt is recorded as
timed out and the late result is not written.

Postgres may be unreachable when the result is in hand (a restart, a failover). The
write is then tried again, backing off, until the attempt's deadline: the user's code
never runs again for a result that only needs writing. Should the deadline pass first,
the attempt is recorded as OutcomeNotRecorded once Postgres answers (or timed out by the
sweeper, whichever comes first), and retried by its policy.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import replace

from sqlalchemy import Engine

from app.engine.activities.claim import Attempt
from app.engine.activities.run import Failed, Outcome, Succeeded, failed
from app.engine.dispatch import ActivityDispatch, Dispatch, FollowUp
from app.engine.steps import record_activity_failure, record_activity_success, time_out_run
from app.engine.workflow_tasks import advance
from app.errors import DatabaseUnavailable
from app.model.activity_states import ActivityState
from app.storage.attempts import pending_activities
from app.storage.runs import ActivityRow, RunState, Step, lock_run_state, write_step
from app.storage.transactions import Transaction, transaction
from app.workflows.registry import Registry

log = logging.getLogger(__name__)

FIRST_PAUSE_SECONDS = 0.1
LONGEST_PAUSE_SECONDS = 5.0
LOG_EVERY_SECONDS = 60.0
# Past the attempt's deadline, how long the worker still tries to say that it could not
# write the outcome (the sweeper may time the attempt out first; either is the truth).
# Well inside the task's hard time limit (broker.TIME_LIMIT_MARGIN_SECONDS).
REPORT_LOSS_FOR_SECONDS = 30.0


def record_outcome(
    engine: Engine, registry: Registry, attempt: Attempt, outcome: Outcome
) -> FollowUp:
    """Record the outcome and run the next workflow task inline; keep trying through a
    database outage until the attempt's deadline. A write that fails otherwise, or that
    the deadline overtakes, is reported as OutcomeNotRecorded, for a retry."""
    try:
        recorded = _keep_trying(
            lambda again: _record(engine, registry, attempt, outcome, again=again),
            attempt,
            until=attempt.deadline,
            what="the outcome",
        )
    except Exception as exc:
        log.exception("could not record the outcome of run %s", attempt.run_id)
        why = f"writing it failed: {type(exc).__name__}: {exc}"
    else:
        if recorded is not None:
            return recorded
        why = "Postgres could not be reached before the attempt's start_to_close deadline"
    lost = failed(
        "OutcomeNotRecorded", f"attempt {attempt.attempt} finished, but its outcome was lost: {why}"
    )
    reported = _keep_trying(
        lambda again: _record(engine, None, attempt, lost, again=again),
        attempt,
        until=time.monotonic() + REPORT_LOSS_FOR_SECONDS,
        what="that its outcome was lost",
    )
    if reported is None:
        log.error(
            "gave up recording run %s activity %s attempt %s; the sweeper will time it out",
            attempt.run_id,
            attempt.seq,
            attempt.attempt,
        )
        return FollowUp("outcome not recorded: Postgres unavailable")
    return reported


def _keep_trying(
    write: Callable[[bool], FollowUp], attempt: Attempt, *, until: float, what: str
) -> FollowUp | None:
    """`write(again)` until it goes through, backing off while Postgres is out of reach
    (`again`: an earlier try may have committed, its reply lost); None once `until`
    (monotonic) has passed."""
    pause = FIRST_PAUSE_SECONDS
    logged_at: float | None = None
    again = False
    while True:
        try:
            return write(again)
        except DatabaseUnavailable as exc:
            again = True
            now = time.monotonic()
            if now >= until:
                return None
            if logged_at is None or now - logged_at >= LOG_EVERY_SECONDS:
                logged_at = now
                log.warning(
                    "could not record %s of run %s activity %s attempt %s (%s: %s);"
                    " trying again for %.0fs",
                    what,
                    attempt.run_id,
                    attempt.seq,
                    attempt.attempt,
                    type(exc.__cause__).__name__,
                    exc.__cause__,
                    until - now,
                )
            time.sleep(min(pause, until - now))
            pause = min(pause * 2, LONGEST_PAUSE_SECONDS)


def _record(
    engine: Engine, registry: Registry | None, attempt: Attempt, outcome: Outcome, *, again: bool
) -> FollowUp:
    """`again`: an earlier try met an outage, and may have committed."""
    with transaction(engine) as tx:
        state = lock_run_state(
            tx, attempt.run_id, seq=attempt.seq, with_history=registry is not None
        )
        if state is None or not state.run.is_open:
            return FollowUp("outcome discarded: run closed")
        activity = state.activity
        if activity is None or not _is_current(activity, attempt):
            if again and activity is not None and activity.state is not ActivityState.STARTED:
                # Recorded by the try whose reply was lost, or timed out meanwhile:
                # either way, what the run waits on may not have been sent (sending
                # twice is harmless).
                return FollowUp(
                    "the attempt is no longer current; sent what the run waits on",
                    dispatches=_resend(tx, state),
                )
            return FollowUp("outcome discarded: the attempt is no longer current")
        if state.overdue:
            timed_out = time_out_run(tx, state)
            # This attempt is over already: it is ours, and it stops by returning.
            others = tuple(t for t in timed_out.stop_task_ids if t != attempt.task_id)
            return replace(timed_out, stop_task_ids=others)
        if activity.attempt_late and not _reports_lost_outcome(outcome):
            outcome = failed(
                "StartToCloseTimeout",
                f"attempt {attempt.attempt} did not report before its start_to_close deadline;"
                " its late result was discarded",
            )
        return _write(tx, registry, state, activity, outcome)


def _reports_lost_outcome(outcome: Outcome) -> bool:
    return isinstance(outcome, Failed) and outcome.failure["type"] == "OutcomeNotRecorded"


def _is_current(activity: ActivityRow, attempt: Attempt) -> bool:
    return (
        activity.state is ActivityState.STARTED
        and activity.worker_task_id == attempt.task_id
        and activity.attempt == attempt.attempt
    )


def _write(
    tx: Transaction,
    registry: Registry | None,
    state: RunState,
    activity: ActivityRow,
    outcome: Outcome,
) -> FollowUp:
    step = Step(run=state.run)
    if isinstance(outcome, Succeeded):
        record_activity_success(step, activity, outcome.result, others_retrying=state.retrying)
        failure = None
    else:
        failure = outcome.failure
        delay = record_activity_failure(step, activity, failure, retryable=outcome.retryable)
        if delay is not None:
            write_step(tx, step)
            # The next attempt is a message of its own: each attempt its own task.
            return FollowUp(
                f"attempt failed; retrying in {delay:g}s",
                dispatches=(_next_attempt(state.run.run_id, activity, delay),),
                failure=failure,
            )
    if registry is None:
        write_step(tx, step)
        return FollowUp(
            "outcome recorded", dispatches=(Dispatch(state.run.run_id),), failure=failure
        )
    return replace(advance(tx, registry, step, state), failure=failure)


def _next_attempt(run_id: uuid.UUID, activity: ActivityRow, delay: float) -> Dispatch:
    retry = ActivityDispatch(
        run_id, activity.seq, activity.activity_name, activity.start_to_close_seconds
    )
    return Dispatch(run_id, (retry,), countdown=delay)


def _resend(tx: Transaction, state: RunState) -> tuple[Dispatch, ...]:
    run_id = state.run.run_id
    dispatches = [
        Dispatch(
            run_id,
            (ActivityDispatch(run_id, a.seq, a.activity_name, a.start_to_close_seconds),),
            countdown=a.countdown,
        )
        for a in pending_activities(tx, run_id)
    ]
    if state.workflow_task_due_in is not None:
        dispatches.append(Dispatch(run_id, countdown=max(state.workflow_task_due_in, 0.0)))
    return tuple(dispatches)


def record_lost_attempt(
    engine: Engine, run_id: uuid.UUID, seq: int, *, task_id: str, outcome: Failed
) -> FollowUp:
    """A worker saw the process running an attempt die (or stopped it itself): record
    the attempt failed and retry it by its policy, unless it already reported."""
    with transaction(engine) as tx:
        state = lock_run_state(tx, run_id, seq=seq)
        if state is None or not state.run.is_open:
            return FollowUp("run closed")
        return _fail_running_attempt(tx, state, task_id, outcome)


def time_out_attempt(
    engine: Engine, run_id: uuid.UUID, seq: int, *, heartbeat: bool = False
) -> FollowUp | None:
    """The sweeper's: fail an attempt past its start-to-close deadline (or, `heartbeat`,
    its heartbeat deadline), and stop it (its worker should have at its time limit; a
    pool that cannot, threads, has not; a hung attempt never will). None when someone
    holds the run, or the attempt reported meanwhile."""
    with transaction(engine) as tx:
        state = lock_run_state(tx, run_id, seq=seq, unless_busy=True)
        activity = state.activity if state is not None else None
        if state is None or activity is None:
            return None
        if not (activity.heartbeat_late if heartbeat else activity.attempt_late):
            return None
        task_id = activity.worker_task_id
        if activity.state is not ActivityState.STARTED or task_id is None:
            return None
        if heartbeat:
            outcome = failed(
                "HeartbeatTimeout",
                f"attempt {activity.attempt} sent no heartbeat within its heartbeat_timeout",
            )
        else:
            outcome = failed(
                "StartToCloseTimeout",
                f"attempt {activity.attempt} did not report before its start_to_close"
                f" deadline ({activity.start_to_close_seconds:g}s)",
            )
        follow_up = _fail_running_attempt(tx, state, task_id, outcome)
    return replace(follow_up, stop_task_ids=(task_id,))


def _fail_running_attempt(
    tx: Transaction, state: RunState, task_id: str, outcome: Failed
) -> FollowUp:
    """Record a running attempt failed without its worker; the workflow task, if the
    activity failed for good, goes out as a message (this process runs no workflow code)."""
    activity = state.activity
    if (
        activity is None
        or activity.state is not ActivityState.STARTED
        or activity.worker_task_id != task_id
    ):
        return FollowUp("the attempt is no longer current")
    run_id = state.run.run_id
    step = Step(run=state.run)
    delay = record_activity_failure(step, activity, outcome.failure, retryable=outcome.retryable)
    write_step(tx, step)
    if delay is None:
        return FollowUp("attempt failed for good", dispatches=(Dispatch(run_id),))
    return FollowUp(
        f"attempt failed; retrying in {delay:g}s",
        dispatches=(_next_attempt(run_id, activity, delay),),
    )

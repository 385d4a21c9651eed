"""The sweeper: run by beat itself, never queued behind activities, so that deadlines
are enforced within a sweep interval however busy the workers are.

Each sweep:
- closes runs past their execution deadline TIMED_OUT, stopping their attempts;
- times out attempts past their start-to-close deadline, or whose heartbeats stopped
  for longer than their heartbeat timeout, and retries them by policy;
- applies a closed parent's close policy to its children still running (terminates
  them, or asks them to cancel);
- sends again the messages of work that has waited too long for one (a lost message,
  or a crash between a commit and its publish);
- adds what it did to the `sweeper_actions` metric totals.

Every question is a bounded batch served by an index, and rows that someone holds
are skipped (SKIP LOCKED) until the next sweep, so one stuck run holds up nothing else.
Everything it sends is safe to send twice.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine

from app.engine.activities.outcome import time_out_attempt
from app.engine.dispatch import ActivityDispatch, Dispatch, FollowUp
from app.engine.interactions import request_cancel, terminate_in
from app.engine.steps import time_out_run
from app.errors import ExecutionClosed, IllegalTransition
from app.storage import sweeps
from app.storage.executions import children_to_close
from app.storage.metrics import add_to_totals
from app.storage.runs import lock_run_state
from app.storage.transactions import autocommit, transaction

log = logging.getLogger(__name__)

BATCH = 100
PARENT_CLOSED = "its parent closed (parent_close_policy TERMINATE)"


def sweep(engine: Engine, *, stalled_after_seconds: float) -> list[FollowUp]:
    """One sweep; returns what to send and stop, and adds what it did to the
    `sweeper_actions` totals (after the actions commit: a crash or an outage in between
    loses one sweep's counts, never counts an action twice)."""
    # One follow-up per action, but for the resent messages: one for them all.
    actions = {
        "run_timed_out": _time_out_runs(engine),
        "attempt_timed_out": _time_out_attempts(engine),
        "heartbeat_timed_out": _time_out_attempts(engine, heartbeat=True),
        "child_closed": _close_children_of_closed_parents(engine),
    }
    resent = _resend_stalled(engine, stalled_after_seconds)
    counts = {action: float(len(done)) for action, done in actions.items()}
    counts["stalled_work_resent"] = float(sum(len(f.dispatches) for f in resent))
    if any(counts.values()):
        try:
            with autocommit(engine) as tx:
                add_to_totals(tx, "sweeper_actions", counts, label="action")
        except Exception:
            # The actions committed: what they must send goes out, counted or not.
            log.warning("could not add the sweep's actions to the metrics", exc_info=True)
    return [*(follow_up for done in actions.values() for follow_up in done), *resent]


def _time_out_runs(engine: Engine) -> list[FollowUp]:
    with autocommit(engine) as tx:
        overdue = sweeps.overdue_runs(tx, limit=BATCH)
    follow_ups = []
    for run_id in overdue:
        try:
            with transaction(engine) as tx:
                state = lock_run_state(tx, run_id, unless_busy=True)
                if state is not None and state.run.is_open and state.overdue:
                    follow_ups.append(time_out_run(tx, state))
        except IllegalTransition:
            log.warning("run %s changed while being timed out; next sweep", run_id)
    return follow_ups


def _time_out_attempts(engine: Engine, *, heartbeat: bool = False) -> list[FollowUp]:
    """Attempts past their start-to-close deadline, or (`heartbeat`) their heartbeat's."""
    with autocommit(engine) as tx:
        if heartbeat:
            late = sweeps.late_heartbeats(tx, limit=BATCH)
        else:
            late = sweeps.late_attempts(tx, limit=BATCH)
    follow_ups = []
    for run_id, seq in late:
        try:
            follow_up = time_out_attempt(engine, run_id, seq, heartbeat=heartbeat)
        except IllegalTransition:
            log.warning("run %s changed while its attempt was timed out; next sweep", run_id)
            continue
        if follow_up is not None:
            follow_ups.append(follow_up)
    return follow_ups


def _close_children_of_closed_parents(engine: Engine) -> list[FollowUp]:
    with autocommit(engine) as tx:
        children = children_to_close(tx, limit=BATCH)
    follow_ups = []
    for child in children:
        try:
            with transaction(engine) as tx:
                if child.policy == "TERMINATE":
                    follow_ups.append(terminate_in(tx, child.execution_id, PARENT_CLOSED))
                else:
                    follow_ups.append(request_cancel(tx, child.execution_id))
        except (ExecutionClosed, IllegalTransition):
            continue  # it closed meanwhile
    return follow_ups


def _resend_stalled(engine: Engine, stalled_after_seconds: float) -> list[FollowUp]:
    with transaction(engine) as tx:
        runs = sweeps.rearm_stalled_workflow_tasks(
            tx, stalled_seconds=stalled_after_seconds, limit=BATCH
        )
        activities = sweeps.rearm_stalled_activities(
            tx, stalled_seconds=stalled_after_seconds, limit=BATCH
        )
    dispatches = [Dispatch(run_id) for run_id in runs]
    dispatches.extend(
        Dispatch(
            a.run_id,
            (ActivityDispatch(a.run_id, a.seq, a.activity_name, a.start_to_close_seconds),),
        )
        for a in activities
    )
    if not dispatches:
        return []
    log.info("sending %d stalled messages again", len(dispatches))
    return [FollowUp("stalled work sent again", dispatches=tuple(dispatches))]

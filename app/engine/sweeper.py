"""The sweeper, run by beat: it finds work that nobody is doing and makes it happen.

- Runs past their execution deadline are closed TIMED_OUT, whether or not a worker is
  touching them.
- Runs that have needed a workflow task for too long (a lost message, or a crash between
  a commit and its publish) get one again.
- Activities whose attempt was lost (lease expired), whose message never arrived, or
  whose backoff is over with no message waiting, are dispatched again.

Every redispatch is safe to duplicate: tasks are idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, case, func, or_, select, tuple_, update

from app.engine.dispatch import ActivityDispatch, Dispatch
from app.engine.statuses import OPEN_STATUSES
from app.engine.workflow_tasks import time_out_run
from app.storage.history import lock_run
from app.storage.schema import activities, runs

BATCH = 500


@dataclass(frozen=True)
class SweepReport:
    timed_out: int
    dispatches: list[Dispatch]


def sweep(engine: Engine, *, stalled_after: timedelta) -> SweepReport:
    now = datetime.now(UTC)
    timed_out = _time_out_overdue_runs(engine, now)
    stale = now - stalled_after
    open_runs = select(runs.c.run_id).where(runs.c.status.in_([s.value for s in OPEN_STATUSES]))
    with engine.begin() as conn:
        # Re-arming the timestamps keeps one stall from being redispatched every sweep.
        # SKIP LOCKED: rows a writer holds are busy, not stalled, and waiting for them
        # could deadlock with a writer that holds the run.
        stale_run_ids = (
            select(runs.c.run_id)
            .where(runs.c.workflow_task_due_at < stale, runs.c.run_id.in_(open_runs))
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        )
        stale_runs = conn.execute(
            update(runs)
            .where(runs.c.run_id.in_(stale_run_ids))
            .values(workflow_task_due_at=now)
            .returning(runs.c.run_id)
        ).scalars()
        dispatches = [Dispatch(run_id=run_id) for run_id in stale_runs]
        stalled_activities = (
            select(activities.c.run_id, activities.c.seq)
            .where(
                activities.c.run_id.in_(open_runs),
                or_(
                    (activities.c.state == "SCHEDULED") & (activities.c.scheduled_at < stale),
                    (activities.c.state == "BACKING_OFF") & (activities.c.next_attempt_at < stale),
                ),
            )
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        )
        requeued = conn.execute(
            update(activities)
            .where(tuple_(activities.c.run_id, activities.c.seq).in_(stalled_activities))
            .values(
                scheduled_at=case(
                    (activities.c.state == "SCHEDULED", now), else_=activities.c.scheduled_at
                ),
                next_attempt_at=case(
                    (activities.c.state == "BACKING_OFF", now), else_=activities.c.next_attempt_at
                ),
            )
            .returning(*_DISPATCH_COLUMNS)
        ).all()
        lost = conn.execute(
            select(*_DISPATCH_COLUMNS)
            .where(
                activities.c.run_id.in_(open_runs),
                activities.c.state == "STARTED",
                activities.c.lease_expires_at < func.now(),
            )
            .limit(BATCH)
        ).all()
    dispatches.extend(
        Dispatch(
            run_id=row.run_id,
            activities=(
                ActivityDispatch(
                    row.run_id, row.seq, row.activity_name, row.start_to_close_seconds
                ),
            ),
        )
        for row in [*requeued, *lost]
    )
    return SweepReport(timed_out=timed_out, dispatches=dispatches)


_DISPATCH_COLUMNS = (
    activities.c.run_id,
    activities.c.seq,
    activities.c.activity_name,
    activities.c.start_to_close_seconds,
)


def _time_out_overdue_runs(engine: Engine, now: datetime) -> int:
    with engine.connect() as conn:
        overdue = list(
            conn.execute(
                select(runs.c.run_id)
                .where(runs.c.deadline <= now, runs.c.status.in_([s.value for s in OPEN_STATUSES]))
                .limit(BATCH)
            ).scalars()
        )
    count = 0
    for run_id in overdue:
        with engine.begin() as conn:
            run = lock_run(conn, run_id)
            if run is not None and run.is_open and run.deadline <= now:
                time_out_run(conn, run)
                count += 1
    return count

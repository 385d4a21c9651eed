"""The tables. Postgres is the single source of truth for every execution."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

from app.model.activity_states import ActivityState
from app.model.statuses import OPEN_STATUSES, ExecutionStatus

metadata = MetaData()


def _quoted(values: Iterable[str]) -> str:
    return ", ".join(f"'{v}'" for v in sorted(values))


ALL_STATUSES_SQL = _quoted(ExecutionStatus)
OPEN_STATUSES_SQL = _quoted(OPEN_STATUSES)

executions = Table(
    "executions",
    metadata,
    Column("execution_id", Text, primary_key=True),
    Column("workflow_name", Text, nullable=False),
    Column("input", JSONB, nullable=True),
    Column("root_execution_id", Text, nullable=False),
    Column("parent_execution_id", Text, nullable=True),
    Column("current_run_id", UUID(as_uuid=True), nullable=False),
    Column("user_id", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
)

runs = Table(
    "runs",
    metadata,
    Column("run_id", UUID(as_uuid=True), primary_key=True),
    Column(
        "execution_id",
        Text,
        ForeignKey("executions.execution_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("run_number", Integer, nullable=False),
    Column("status", Text, nullable=False),
    Column("result", JSONB, nullable=True),
    Column("error", JSONB, nullable=True),
    Column("start_time", DateTime(timezone=True), nullable=False),
    Column("end_time", DateTime(timezone=True), nullable=True),
    Column("deadline", DateTime(timezone=True), nullable=False),
    Column("random_seed", BigInteger, nullable=False),
    # Per-run event counter: bumping it is also how writers serialise on the run.
    Column("last_event_id", Integer, nullable=False, server_default=text("0")),
    # The newest event a workflow task has replayed; newer outcomes still need one.
    Column("processed_event_id", Integer, nullable=False, server_default=text("0")),
    # Set while the run needs a workflow task, to when it may run (later than now while
    # a failed one waits to be retried); the sweeper sends stalled ones again.
    Column("workflow_task_due_at", DateTime(timezone=True), nullable=True),
    # Workflow tasks that failed in a row: the backoff before the next one grows with it.
    Column("workflow_task_attempt", Integer, nullable=False, server_default=text("0")),
    UniqueConstraint("execution_id", "run_number", name="runs_execution_run_number_key"),
    CheckConstraint(f"status IN ({ALL_STATUSES_SQL})", name="runs_status_valid"),
    CheckConstraint(
        f"(status IN ({OPEN_STATUSES_SQL})) = (end_time IS NULL)",
        name="runs_end_time_iff_closed",
    ),
    CheckConstraint("processed_event_id <= last_event_id", name="runs_processed_le_last"),
)

Index(
    "runs_one_open_run_per_execution",
    runs.c.execution_id,
    unique=True,
    postgresql_where=text(f"status IN ({OPEN_STATUSES_SQL})"),
)
Index(
    "runs_open_by_deadline",
    runs.c.deadline,
    postgresql_where=text(f"status IN ({OPEN_STATUSES_SQL})"),
)
Index(
    "runs_workflow_task_due",
    runs.c.workflow_task_due_at,
    postgresql_where=text("workflow_task_due_at IS NOT NULL"),
)

events = Table(
    "events",
    metadata,
    Column("run_id", UUID(as_uuid=True), ForeignKey("runs.run_id", ondelete="CASCADE")),
    Column("event_id", Integer, nullable=False),
    Column("execution_id", Text, nullable=False),
    Column("event_type", Text, nullable=False),
    Column("attributes", JSONB, nullable=False),
    Column("event_timestamp", BigInteger, nullable=False),
    # Names the fact an event records (say "activity:3:attempt:1:outcome"), so that a
    # redelivered message cannot record it twice.
    Column("dedup_key", Text, nullable=True),
    Column("sequence", BigInteger, Identity(always=True), nullable=False, unique=True),
    PrimaryKeyConstraint("run_id", "event_id", name="events_pkey"),
    UniqueConstraint("run_id", "dedup_key", name="events_run_dedup_key"),
)

ACTIVITY_STATES_SQL = _quoted(ActivityState)

activities = Table(
    "activities",
    metadata,
    Column("run_id", UUID(as_uuid=True), ForeignKey("runs.run_id", ondelete="CASCADE")),
    Column("seq", Integer, nullable=False),
    Column("activity_name", Text, nullable=False),
    Column("input", JSONB, nullable=False),
    Column("state", Text, nullable=False),
    Column("attempt", Integer, nullable=False, server_default=text("1")),
    Column("retry_policy", JSONB, nullable=False),
    Column("start_to_close_seconds", Float, nullable=False),
    Column("scheduled_at", DateTime(timezone=True), nullable=False),
    # While an attempt runs (STARTED): the Celery task running it, and when it must
    # have reported, by Postgres's clock.
    Column("worker_task_id", Text, nullable=True),
    Column("attempt_deadline", DateTime(timezone=True), nullable=True),
    # While BACKING_OFF: when the next attempt may start.
    Column("next_attempt_at", DateTime(timezone=True), nullable=True),
    # An activity with a heartbeat timeout: a running attempt must heartbeat by
    # `heartbeat_deadline` (Postgres's clock), or it is failed as HeartbeatTimeout.
    Column("heartbeat_timeout_seconds", Float, nullable=True),
    Column("heartbeat_deadline", DateTime(timezone=True), nullable=True),
    # What the last heartbeat reported, kept for history.
    Column("heartbeat_details", JSONB, nullable=True),
    PrimaryKeyConstraint("run_id", "seq", name="activities_pkey"),
    CheckConstraint(f"state IN ({ACTIVITY_STATES_SQL})", name="activities_state_valid"),
    CheckConstraint(
        "(state = 'STARTED') = (worker_task_id IS NOT NULL AND attempt_deadline IS NOT NULL)",
        name="activities_started_iff_running",
    ),
    CheckConstraint(
        "(state = 'BACKING_OFF') = (next_attempt_at IS NOT NULL)",
        name="activities_backing_off_iff_due",
    ),
)

# One index per question the sweeper asks of activities (app/storage/queries.sql).
Index(
    "activities_started_by_deadline",
    activities.c.attempt_deadline,
    postgresql_where=text("state = 'STARTED'"),
)
Index(
    "activities_started_by_heartbeat_deadline",
    activities.c.heartbeat_deadline,
    postgresql_where=text("state = 'STARTED' AND heartbeat_deadline IS NOT NULL"),
)
Index(
    "activities_scheduled_since",
    activities.c.scheduled_at,
    postgresql_where=text("state = 'SCHEDULED'"),
)
Index(
    "activities_backing_off_until",
    activities.c.next_attempt_at,
    postgresql_where=text("state = 'BACKING_OFF'"),
)

# A durable timer of a run (`sleep`, `wait_condition(timeout=)`), by the command's seq:
# PENDING until beat fires it (FIRED) or the code stops waiting or the run closes
# (CANCELED).
timers = Table(
    "timers",
    metadata,
    Column("run_id", UUID(as_uuid=True), ForeignKey("runs.run_id", ondelete="CASCADE")),
    Column("seq", Integer, nullable=False),
    Column("fire_at", DateTime(timezone=True), nullable=False),
    Column("state", Text, nullable=False),
    PrimaryKeyConstraint("run_id", "seq", name="timers_pkey"),
    CheckConstraint("state IN ('CANCELED', 'FIRED', 'PENDING')", name="timers_state_valid"),
)
Index("timers_pending_by_fire_at", timers.c.fire_at, postgresql_where=text("state = 'PENDING'"))

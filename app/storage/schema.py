"""The tables. Postgres is the single source of truth for every execution."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
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
    # The schedule that started it, if one did.
    Column("schedule_id", Text, nullable=True),
    # Continue-as-new: the execution this one took over from, and the one that took over
    # from it (app/engine/workflow_tasks.py).
    Column("continued_from_execution_id", Text, nullable=True),
    Column("continued_as_execution_id", Text, nullable=True),
    # The last run of the execution it continued from, and the first run of the first
    # execution of the chain (its own first run, when it starts one): the events'
    # continued_run_id and first_execution_run_id.
    Column("continued_from_run_id", UUID(as_uuid=True), nullable=True),
    Column("first_execution_run_id", UUID(as_uuid=True), nullable=False),
    # Searchable metadata, {key: text or null} (app/model/search_keys.py).
    Column("search_keys", JSONB, nullable=True),
    # A child workflow: the parent's command (seq) that started it, whose outcome event
    # its closing records in the parent's current run, and what the parent's closing
    # does to it (ABANDON, REQUEST_CANCEL or TERMINATE; the sweeper applies it).
    Column("parent_seq", Integer, nullable=True),
    Column("parent_close_policy", Text, nullable=True),
    CheckConstraint(
        "parent_close_policy IN ('ABANDON', 'REQUEST_CANCEL', 'TERMINATE')",
        name="executions_parent_close_policy_valid",
    ),
)
Index(
    "executions_children_to_close",
    executions.c.parent_execution_id,
    postgresql_where=text("parent_close_policy IN ('REQUEST_CANCEL', 'TERMINATE')"),
)
Index("executions_by_search_keys", executions.c.search_keys, postgresql_using="gin")

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
    # Its execution's, which never change: copied so that one index answers each filter
    # of the runs API (app/storage/listing.py).
    Column("workflow_name", Text, nullable=False),
    Column("root_execution_id", Text, nullable=False),
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
    # A run started by a reset (app/engine/resets.py): the run and the event (a
    # WORKFLOW_TASK_COMPLETED) whose history it took over, and why.
    Column("reset_from_run_id", UUID(as_uuid=True), nullable=True),
    Column("reset_event_id", Integer, nullable=True),
    Column("reset_reason", Text, nullable=True),
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
# The runs API's listing: by start time, within one filter each (app/storage/listing.py).
Index("runs_by_start_time", runs.c.start_time, runs.c.run_id)
# text_pattern_ops: equality, and a prefix (the listing's `search`) too.
Index(
    "runs_by_workflow",
    runs.c.workflow_name,
    runs.c.start_time,
    runs.c.run_id,
    postgresql_ops={"workflow_name": "text_pattern_ops"},
)
Index(
    "runs_by_execution_prefix",
    runs.c.execution_id,
    postgresql_ops={"execution_id": "text_pattern_ops"},
)
Index("runs_by_root", runs.c.root_execution_id, runs.c.start_time, runs.c.run_id)
Index("runs_by_status", runs.c.status, runs.c.start_time, runs.c.run_id)
# By end time, open runs (no end time yet) last.
Index("runs_by_end_time", text("coalesce(end_time, 'infinity'::timestamptz)"), runs.c.run_id)
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
    # The transaction that wrote it (its xid8): the stream's sequencer numbers events in
    # (tx_id, sequence) order once every older transaction has ended.
    Column(
        "tx_id",
        BigInteger,
        nullable=False,
        server_default=text("(pg_current_xact_id())::text::bigint"),
    ),
    PrimaryKeyConstraint("run_id", "event_id", name="events_pkey"),
    UniqueConstraint("run_id", "dedup_key", name="events_run_dedup_key"),
)
Index("events_by_tx_id", events.c.tx_id, events.c.sequence)

# The streamed events, numbered in the order they became visible (app/storage/streams.py):
# `position` is the SSE stream's id and broker_sequence.
stream_events = Table(
    "stream_events",
    metadata,
    Column("position", BigInteger, primary_key=True),
    Column("run_id", UUID(as_uuid=True), nullable=False),
    Column("event_id", Integer, nullable=False),
    ForeignKeyConstraint(
        ["run_id", "event_id"],
        ["events.run_id", "events.event_id"],
        name="stream_events_event_fkey",
        ondelete="CASCADE",
    ),
    UniqueConstraint("run_id", "event_id", name="stream_events_event_key"),
)

# The sequencer's cursor: the last event it looked at, and the last position it gave.
stream_state = Table(
    "stream_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("last_tx_id", BigInteger, nullable=False),
    Column("last_sequence", BigInteger, nullable=False),
    Column("last_position", BigInteger, nullable=False),
    CheckConstraint("id = 1", name="stream_state_one_row"),
)

# Cluster-wide metric totals (app/storage/metrics.py), one row per metric and label set:
# the sequencer adds what the events it numbers measure, the sweeper its actions.
metric_totals = Table(
    "metric_totals",
    metadata,
    Column("metric", Text, primary_key=True),
    Column("labels", JSONB, primary_key=True),
    Column("value", Float, nullable=False),
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

# A schedule (app/engine/schedules.py): when it fires (`spec`, ScheduleSpec as JSON) and
# what it starts. Beat fires it once `next_fire_at` (its next tick plus jitter) has come,
# by Postgres's clock, and advances it in the same transaction.
schedules = Table(
    "schedules",
    metadata,
    Column("schedule_id", Text, primary_key=True),
    Column("workflow_name", Text, nullable=False),
    Column("input", JSONB, nullable=True),
    Column("spec", JSONB, nullable=False),
    Column("overlap", Integer, nullable=False),
    Column("catchup_window_seconds", BigInteger, nullable=False),
    Column("pause_on_failure", Boolean, nullable=False),
    Column("max_executions", Integer, nullable=True),
    # Counts down with each scheduled start (not triggers); 0: exhausted.
    Column("remaining_executions", Integer, nullable=True),
    Column("paused", Boolean, nullable=False, server_default=text("false")),
    Column("note", Text, nullable=True),
    Column("deployment_name", Text, nullable=True),
    Column("user_id", Text, nullable=True),
    # The next time it fires (None: it has no more), and that time plus its jitter.
    Column("next_tick", DateTime(timezone=True), nullable=True),
    Column("next_fire_at", DateTime(timezone=True), nullable=True),
    # The execution it started last: the one its overlap policy looks at.
    Column("last_execution_id", Text, nullable=True),
    # Ticks waiting (BUFFER_ONE, BUFFER_ALL, CANCEL_OTHER) for that execution to close.
    Column("buffered", Integer, nullable=False, server_default=text("0")),
    # Ticks passed over because they were older than the catch-up window when beat
    # came to them (beat was down), and the last of them.
    Column("missed_ticks", BigInteger, nullable=False, server_default=text("0")),
    Column("last_missed_tick", DateTime(timezone=True), nullable=True),
    # Bumped by every change of the spec, so that beat re-reads it.
    Column("revision", Integer, nullable=False, server_default=text("1")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    CheckConstraint("overlap BETWEEN 1 AND 6", name="schedules_overlap_valid"),
    CheckConstraint("buffered >= 0", name="schedules_buffered_not_negative"),
    CheckConstraint("(next_tick IS NULL) = (next_fire_at IS NULL)", name="schedules_fire_iff_tick"),
)
Index(
    "schedules_due",
    schedules.c.next_fire_at,
    postgresql_where=text("NOT paused AND next_fire_at IS NOT NULL"),
)
Index(
    "schedules_with_buffered_ticks",
    schedules.c.schedule_id,
    postgresql_where=text("buffered > 0 AND NOT paused"),
)
Index("schedules_by_workflow", schedules.c.workflow_name, schedules.c.schedule_id)

# What became of each tick of a schedule: one row per (schedule, tick), whoever fires
# it, so that no tick is fired twice. `kind` is SCHEDULED or TRIGGERED (by the API).
schedule_fires = Table(
    "schedule_fires",
    metadata,
    Column(
        "schedule_id",
        Text,
        ForeignKey("schedules.schedule_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("tick", DateTime(timezone=True), nullable=False),
    Column("kind", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("execution_id", Text, nullable=True),
    Column("detail", Text, nullable=True),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("schedule_id", "tick", name="schedule_fires_pkey"),
    CheckConstraint("kind IN ('SCHEDULED', 'TRIGGERED')", name="schedule_fires_kind_valid"),
    CheckConstraint(
        "outcome IN ('BUFFERED', 'FAILED', 'SKIPPED', 'STARTED')",
        name="schedule_fires_outcome_valid",
    ),
)
Index(
    "schedule_fires_started",
    schedule_fires.c.schedule_id,
    schedule_fires.c.recorded_at,
    postgresql_where=text("outcome = 'STARTED'"),
)
Index(
    "schedule_fires_buffered",
    schedule_fires.c.schedule_id,
    schedule_fires.c.tick,
    postgresql_where=text("outcome = 'BUFFERED'"),
)

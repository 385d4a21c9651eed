"""Schedules as stored, and the record of what each of their ticks did
(app/engine/schedules.py decides; this reads and writes)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from app.storage.transactions import Transaction

SCHEDULED = "SCHEDULED"
TRIGGERED = "TRIGGERED"


@dataclass
class ScheduleRow:
    """A schedule's row (the columns every read_* and lock_* query of schedules selects,
    in order). Beat and the API change it in memory, then save it."""

    schedule_id: str
    workflow_name: str
    input: Any
    spec: dict[str, Any]
    overlap: int
    catchup_window_seconds: int
    pause_on_failure: bool
    max_executions: int | None
    remaining_executions: int | None
    paused: bool
    note: str | None
    deployment_name: str | None
    user_id: str | None
    next_tick: datetime | None
    next_fire_at: datetime | None
    last_execution_id: str | None
    buffered: int
    missed_ticks: int
    last_missed_tick: datetime | None
    revision: int
    created_at: datetime | None = None
    updated_at: datetime | None = None


_COLUMNS = len(ScheduleRow.__dataclass_fields__)


@dataclass(frozen=True)
class DueSchedule:
    row: ScheduleRow
    # The status of the execution it started last (None if none).
    last_status: str | None
    now: datetime


@dataclass(frozen=True)
class RecentStart:
    tick: datetime
    started_at: datetime
    execution_id: str


def database_now(tx: Transaction) -> datetime:
    row = tx.fetch_one("database_now", {})
    assert row is not None
    now: datetime = row[0]
    return now


def insert_schedule(tx: Transaction, row: ScheduleRow) -> bool:
    """Record a new schedule; False (recording nothing) if its id is taken."""
    return tx.fetch_one("insert_schedule", _params(row)) is not None


def read_schedule(tx: Transaction, schedule_id: str) -> ScheduleRow | None:
    found = tx.fetch_one("read_schedule", {"schedule_id": schedule_id})
    return None if found is None else ScheduleRow(*found)


def lock_schedule(tx: Transaction, schedule_id: str) -> ScheduleRow | None:
    found = tx.fetch_one("lock_schedule", {"schedule_id": schedule_id})
    return None if found is None else ScheduleRow(*found)


def list_schedules(
    tx: Transaction,
    *,
    workflow_name: str | None,
    user_id: str | None,
    paused: bool | None,
    search: str | None,
    after_id: str | None,
    limit: int,
) -> list[ScheduleRow]:
    rows = tx.fetch_all(
        "list_schedules",
        {
            "workflow_name": workflow_name,
            "user_id": user_id,
            "paused": paused,
            "search": search,
            "after_id": after_id,
            "limit": limit,
        },
    )
    return [ScheduleRow(*row) for row in rows]


def lock_due_schedules(tx: Transaction, *, limit: int) -> list[DueSchedule]:
    """Up to `limit` schedules to fire now, locked (those another beat holds are left)."""
    rows = tx.fetch_all("lock_due_schedules", {"limit": limit})
    return [
        DueSchedule(ScheduleRow(*row[:_COLUMNS]), last_status=row[_COLUMNS], now=row[-1])
        for row in rows
    ]


def buffered_ticks(tx: Transaction, schedule_id: str, *, limit: int) -> list[datetime]:
    rows = tx.fetch_all("buffered_ticks", {"schedule_id": schedule_id, "limit": limit})
    return [row[0] for row in rows]


def save_schedule(tx: Transaction, row: ScheduleRow, *, touched: bool) -> None:
    """Queue the write of `row`'s state; `touched` (a change through the API) sets its
    updated_at."""
    tx.send("save_schedule", {**_params(row), "touched": touched})


def delete_schedule(tx: Transaction, schedule_id: str) -> bool:
    return tx.fetch_one("delete_schedule", {"schedule_id": schedule_id}) is not None


def record_fire(
    tx: Transaction, schedule_id: str, tick: datetime, kind: str, outcome: str, detail: str
) -> None:
    """Queue the record of a tick that started nothing (SKIPPED or BUFFERED)."""
    tx.send(
        "record_fire",
        {
            "schedule_id": schedule_id,
            "tick": tick,
            "kind": kind,
            "outcome": outcome,
            "detail": detail,
        },
    )


def record_start(
    tx: Transaction,
    schedule_id: str,
    tick: datetime,
    kind: str,
    execution_id: str,
    run_id: uuid.UUID,
) -> None:
    """Queue the record of a tick whose execution (run `run_id`) was just queued for
    insert in `tx`."""
    tx.send(
        "record_start",
        {
            "schedule_id": schedule_id,
            "tick": tick,
            "kind": kind,
            "execution_id": execution_id,
            "run_id": run_id,
        },
    )


def runs_that_exist(tx: Transaction, run_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    return [row[0] for row in tx.fetch_all("runs_that_exist", {"run_ids": run_ids})]


def recent_starts(tx: Transaction, schedule_id: str, *, limit: int) -> list[RecentStart]:
    rows = tx.fetch_all("recent_starts", {"schedule_id": schedule_id, "limit": limit})
    return [RecentStart(*row) for row in rows]


def _params(row: ScheduleRow) -> dict[str, Any]:
    return {
        "schedule_id": row.schedule_id,
        "workflow_name": row.workflow_name,
        "input": Jsonb(row.input),
        "spec": Jsonb(row.spec),
        "overlap": row.overlap,
        "catchup_window_seconds": row.catchup_window_seconds,
        "pause_on_failure": row.pause_on_failure,
        "max_executions": row.max_executions,
        "remaining_executions": row.remaining_executions,
        "paused": row.paused,
        "note": row.note,
        "deployment_name": row.deployment_name,
        "user_id": row.user_id,
        "next_tick": row.next_tick,
        "next_fire_at": row.next_fire_at,
        "last_execution_id": row.last_execution_id,
        "buffered": row.buffered,
        "missed_ticks": row.missed_ticks,
        "last_missed_tick": row.last_missed_tick,
        "revision": row.revision,
    }

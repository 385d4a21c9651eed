"""Listing runs (the runs API): filtered, ordered by start or end time, paged by keyset.

The statement is built per request, with only the filters asked for, so that Postgres
plans each combination on its own and walks the index that fits it (runs_by_workflow,
runs_by_root, runs_by_status, runs_by_start_time, runs_by_end_time). A page ends at a
cursor, the sort value and run id of its last run, and the next page starts strictly
after it: a run started while a client pages sorts before the cursor (newest first) or
after the last page (oldest first), so no run is skipped or shown twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, Engine, and_, func, literal_column, or_, select, tuple_

from app.model.search_keys import SearchKeyFilter
from app.model.statuses import ExecutionStatus
from app.storage.executions import ExecutionRecord
from app.storage.schema import executions, runs
from app.storage.transactions import autocommit

SortBy = Literal["start_time", "end_time"]
# Where open runs sort when ordered by end time: after every closed one. Written into
# the statement, not bound, so that it matches runs_by_end_time's expression.
NOT_ENDED: ColumnElement[Any] = literal_column("'infinity'::timestamptz")


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: its last run's sort value (None: open, by end time) and id."""

    sort_value: datetime | None
    run_id: uuid.UUID


@dataclass(frozen=True)
class RunFilter:
    workflow_name: str | None = None
    root_execution_id: str | None = None
    # A prefix of the workflow's name or of the execution's id.
    search: str | None = None
    statuses: tuple[ExecutionStatus, ...] = ()
    start_time_after: datetime | None = None
    start_time_before: datetime | None = None
    end_time_after: datetime | None = None
    end_time_before: datetime | None = None
    user_id: str | None = None
    # Each must hold, on the run's execution's search keys (GIN-indexed).
    search_keys: tuple[SearchKeyFilter, ...] = ()


@dataclass(frozen=True)
class RunPage:
    runs: list[ExecutionRecord]
    # Where the next page starts; None when this one is the last.
    next_cursor: Cursor | None


def _sort_column(sort_by: SortBy) -> ColumnElement[Any]:
    if sort_by == "end_time":
        return func.coalesce(runs.c.end_time, NOT_ENDED)
    return runs.c.start_time


def list_runs(
    engine: Engine,
    where: RunFilter,
    *,
    sort_by: SortBy = "start_time",
    descending: bool = True,
    limit: int = 50,
    after: Cursor | None = None,
) -> RunPage:
    """A page of at most `limit` runs matching `where`, after `after` if given."""
    sort = _sort_column(sort_by)
    conditions = _conditions(where)
    if after is not None:
        value: Any = NOT_ENDED if after.sort_value is None else after.sort_value
        position = tuple_(sort, runs.c.run_id)
        bound = tuple_(value, after.run_id)
        conditions.append(position < bound if descending else position > bound)
    order = (sort.desc(), runs.c.run_id.desc()) if descending else (sort.asc(), runs.c.run_id)
    statement = (
        select(
            executions.c.execution_id,
            executions.c.workflow_name,
            executions.c.root_execution_id,
            executions.c.parent_execution_id,
            executions.c.user_id,
            runs.c.run_id,
            runs.c.status,
            runs.c.start_time,
            runs.c.end_time,
            executions.c.schedule_id,
        )
        .select_from(runs.join(executions, executions.c.execution_id == runs.c.execution_id))
        .where(and_(*conditions))
        .order_by(*order)
        # One more than a page: whether there is a next page, without a count.
        .limit(limit + 1)
    )
    with autocommit(engine) as tx:
        rows = tx.select(statement)
    records = [
        ExecutionRecord(
            execution_id=row.execution_id,
            workflow_name=row.workflow_name,
            root_execution_id=row.root_execution_id,
            parent_execution_id=row.parent_execution_id,
            user_id=row.user_id,
            run_id=row.run_id,
            status=ExecutionStatus(row.status),
            start_time=row.start_time,
            end_time=row.end_time,
            result=None,
            error=None,
            schedule_id=row.schedule_id,
        )
        for row in rows[:limit]
    ]
    next_cursor = None
    if len(rows) > limit:
        last = records[-1]
        sort_value = last.start_time if sort_by == "start_time" else last.end_time
        next_cursor = Cursor(sort_value, last.run_id)
    return RunPage(records, next_cursor)


def _conditions(where: RunFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if where.workflow_name is not None:
        conditions.append(runs.c.workflow_name == where.workflow_name)
    if where.root_execution_id is not None:
        conditions.append(runs.c.root_execution_id == where.root_execution_id)
    if where.search is not None:
        # Prefixes, each served by a text_pattern_ops index.
        pattern = _escaped(where.search) + "%"
        conditions.append(
            or_(runs.c.workflow_name.like(pattern), runs.c.execution_id.like(pattern))
        )
    if where.statuses:
        conditions.append(runs.c.status.in_([s.value for s in where.statuses]))
    if where.start_time_after is not None:
        conditions.append(runs.c.start_time >= where.start_time_after)
    if where.start_time_before is not None:
        conditions.append(runs.c.start_time <= where.start_time_before)
    if where.end_time_after is not None:
        conditions.append(runs.c.end_time >= where.end_time_after)
    if where.end_time_before is not None:
        conditions.append(runs.c.end_time <= where.end_time_before)
    if where.user_id is not None:
        conditions.append(executions.c.user_id == where.user_id)
    conditions.extend(_search_key_condition(f) for f in where.search_keys)
    return conditions


def _search_key_condition(wanted: SearchKeyFilter) -> ColumnElement[bool]:
    keys = executions.c.search_keys
    if wanted.match == "exact":
        return keys.contains({wanted.key: wanted.value})
    if wanted.match == "null":
        return keys.contains({wanted.key: None})
    if wanted.match == "set":
        present: ColumnElement[bool] = keys.has_key(wanted.key)
        return present
    # Similar: contained, whatever the case; the key's presence narrows by the index.
    assert wanted.value is not None
    similar = f"%{_escaped(wanted.value)}%"
    return and_(keys.has_key(wanted.key), keys[wanted.key].astext.ilike(similar))


def _escaped(text: str) -> str:
    """`text` matched as itself by LIKE (whose escape character is a backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")

"""The write primitives every transaction on a run is built from.

Each function works inside the caller's transaction (`conn`). Writers serialise on the
run row: `lock_run` first, then read and write, so event ids stay dense and a check
followed by a write cannot race. `write_run` sends one statement for everything a step
records (events, activity rows, the run's counters and status), because round trips,
not Postgres, are what a workflow step spends its time on.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, NoReturn

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import Connection, Engine

from app.engine import events as ev
from app.engine.replay import HistoryEvent
from app.engine.statuses import OPEN_STATUSES, TERMINAL_STATUSES, ExecutionStatus, sources_of
from app.errors import IllegalTransition

log = logging.getLogger(__name__)

IN_FLIGHT_ACTIVITY_STATES = ("SCHEDULED", "STARTED", "BACKING_OFF")
CLOSED_CHANNEL = "chainline_execution_closed"


@dataclass(frozen=True)
class NewEvent:
    event_type: str
    attributes: dict[str, Any]
    # Names the fact recorded, so a redelivered message cannot record it twice.
    dedup_key: str | None = None
    # When the fact happened, if not now (an attempt's start, recorded with its outcome).
    timestamp_ns: int | None = None


@dataclass(frozen=True)
class DeferredWrite:
    first_event_id: int
    events: tuple[NewEvent, ...]
    also: tuple[Sql, ...]
    values: dict[str, Any]


@dataclass(frozen=True)
class LockedRun:
    run_id: uuid.UUID
    execution_id: str
    workflow_name: str
    status: ExecutionStatus
    deadline: datetime
    random_seed: int
    last_event_id: int
    processed_event_id: int
    workflow_task_due_at: datetime | None
    # A write held back to go out with the next one (write_run's `defer`).
    deferred: DeferredWrite | None = None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


_RUN_COLUMNS = (
    "r.run_id, r.execution_id, e.workflow_name, r.status, r.deadline, r.random_seed,"
    " r.last_event_id, r.processed_event_id, r.workflow_task_due_at"
)
_ACTIVITY_COLUMNS = (
    "seq",
    "activity_name",
    "input",
    "state",
    "attempt",
    "retry_policy",
    "start_to_close_seconds",
    "lease_owner",
    "lease_expires_at",
    "next_attempt_at",
)
_LOCK_RUN = (
    f"SELECT {_RUN_COLUMNS} FROM runs r JOIN executions e ON e.execution_id = r.execution_id"
    " WHERE r.run_id = %s FOR UPDATE OF r"
)
# Both rows locked: after waiting for the lock, Postgres re-reads the locked rows, so
# the activity is as fresh as the run. Lease and backoff times compare with the
# database's clock, the one that set them.
_READ_RUN_WITH_ACTIVITY = (
    f"SELECT {_RUN_COLUMNS}, "
    + ", ".join(f"a.{c}" for c in _ACTIVITY_COLUMNS)
    + ", a.lease_expires_at < now(), extract(epoch FROM a.next_attempt_at - now())::float8"
    ", {history} FROM runs r JOIN executions e ON e.execution_id = r.execution_id"
    " JOIN activities a ON a.run_id = r.run_id AND a.seq = %s"
    " WHERE r.run_id = %s"
)
_LOCK_RUN_WITH_ACTIVITY = _READ_RUN_WITH_ACTIVITY + " FOR UPDATE OF r, a"
_HISTORY_COLUMN = (
    "(SELECT coalesce(json_agg(json_build_array(h.event_id, h.event_type, h.attributes)"
    " ORDER BY h.event_id), '[]'::json) FROM events h WHERE h.run_id = r.run_id)"
)


def _locked(row: Sequence[Any]) -> LockedRun:
    return LockedRun(
        run_id=row[0],
        execution_id=row[1],
        workflow_name=row[2],
        status=ExecutionStatus(row[3]),
        deadline=row[4],
        random_seed=row[5],
        last_event_id=row[6],
        processed_event_id=row[7],
        workflow_task_due_at=row[8],
    )


def fetch_one(conn: Connection, statement: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
    """Run a hand-written query on the driver's cursor, inside `conn`'s transaction.

    The hot path's statements go this way: SQLAlchemy would build result metadata
    for every text statement, which costs more than the statement itself. Driver
    errors come out as psycopg's own classes.
    """
    with _driver_errors(conn), _driver_cursor(conn) as cursor:
        cursor.execute(statement, params)
        row: tuple[Any, ...] | None = cursor.fetchone()
        return row


def send(conn: Connection, sql: Sql) -> None:
    """Run a statement whose result nobody reads. Inside a pipelined transaction it is
    only queued, and its errors come out at the next read or at COMMIT."""
    with _driver_errors(conn):
        _driver_cursor(conn).execute(sql.text, sql.params)


@contextmanager
def _driver_errors(conn: Connection) -> Iterator[None]:
    """Driver errors as SQLAlchemy would handle them for statements it ran itself: a
    connection that broke leaves the pool instead of failing every later use."""
    try:
        yield
    except psycopg.Error as exc:
        _forget_if_broken(conn, exc)
        _raise_translated(exc)


def _forget_if_broken(conn: Connection, exc: psycopg.Error) -> None:
    if conn.invalidated:
        return  # a statement inside a pipelined transaction saw it first
    driver = conn.connection.driver_connection
    if driver is None or driver.broken or driver.closed:
        conn.invalidate(exc)
        # Most likely the server restarted, and every idle connection in the pool is
        # as dead as this one (SQLAlchemy drops them too on a disconnect it sees).
        conn.engine.dispose()


def _raise_translated(exc: psycopg.Error) -> NoReturn:
    """Raise the domain error a driver error stands for, else the driver error."""
    if exc.sqlstate == REQUIRE_FAILED:
        raise IllegalTransition(exc.diag.message_primary or str(exc)) from exc
    if exc.sqlstate == SNAPSHOT_STALE:
        raise StaleSnapshot(exc.diag.message_primary or str(exc)) from exc
    raise exc


REQUIRE_FAILED = "CL001"  # raised by chainline_require() (migration 0002)
SNAPSHOT_STALE = "CL002"  # raised by chainline_expect_current() (migration 0003)


class StaleSnapshot(Exception):
    """The run changed since the snapshot a write was built from: nothing was written."""


def expect_current(run_id: uuid.UUID, seq: int, attempt: int, last_event_id: int) -> Sql:
    """Lock the run and one activity as `lock_run_with_activity` does, and fail the
    transaction with StaleSnapshot unless the run is still as a RunSnapshot saw it:
    no event since `last_event_id`, RUNNING, no workflow task due, and the activity's
    `attempt` still scheduled. Sent without waiting, ahead of the writes it guards."""
    return Sql(
        "SELECT chainline_expect_current(count(*) = 1) FROM ("
        "SELECT 1 FROM runs r JOIN activities a ON a.run_id = r.run_id AND a.seq = %s"
        " WHERE r.run_id = %s AND r.last_event_id = %s AND r.status = 'RUNNING'"
        " AND r.workflow_task_due_at IS NULL AND a.state = 'SCHEDULED' AND a.attempt = %s"
        " FOR UPDATE OF r, a) AS current",
        (seq, run_id, last_event_id, attempt),
    )


@contextmanager
def pipelined_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that waits for the server only when it reads a result.

    BEGIN travels with the first read (the run's lock), and the writes that follow go
    out with COMMIT: two round trips for an activity's outcome instead of five. On any
    error the transaction rolls back, as with `engine.begin()`.
    """
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        driver = conn.connection.driver_connection
        assert driver is not None, "the connection is open"
        try:
            with driver.pipeline():
                try:
                    driver.execute("BEGIN")
                    yield conn
                    driver.execute("COMMIT")
                except BaseException as exc:
                    if not isinstance(exc, psycopg.Error):
                        # Before leaving the pipeline, which waits for every result.
                        _cancel_in_flight(driver)
                    raise
        except psycopg.Error as exc:
            interruption = _interruption_behind(exc)
            if interruption is not None and _in_pipeline(driver):
                # Leaving the pipeline failed because an interruption left it busy.
                _abandon(conn, driver)
                raise interruption from None
            _forget_if_broken(conn, exc)
            if not conn.invalidated:
                # A statement that failed made the server skip the ones queued behind
                # it, the preparation of any among them reaching psycopg's prepare
                # threshold included; psycopg still counts those as prepared, and
                # would name them in every later use on this connection. A new
                # connection is cheaper than that (failures here are rare: a guard, a
                # stale snapshot, a duplicate).
                conn.invalidate(exc)
            _raise_translated(exc)
        except BaseException:
            _abandon(conn, driver)
            raise
        finally:
            if not conn.invalidated and driver.info.transaction_status in OPEN_TRANSACTION:
                driver.execute("ROLLBACK")


OPEN_TRANSACTION = (psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR)
CANCEL_TIMEOUT_SECONDS = 2.0


def _interruption_behind(exc: BaseException) -> BaseException | None:
    """The exception, not the driver's, that `exc` was raised while handling."""
    cause = exc.__context__
    while cause is not None and isinstance(cause, psycopg.Error):
        cause = cause.__context__
    return cause


def _abandon(conn: Connection, driver: psycopg.Connection[Any]) -> None:
    """Interrupted, perhaps while the pipeline waited for its results: what is still
    in flight is cancelled, and a connection left mid-pipeline leaves the pool
    (closing it rolls back whatever remains)."""
    _cancel_in_flight(driver)
    if _in_pipeline(driver):
        conn.invalidate()


def _in_pipeline(driver: psycopg.Connection[Any]) -> bool:
    return driver.pgconn.pipeline_status != psycopg.pq.PipelineStatus.OFF


def _cancel_in_flight(driver: psycopg.Connection[Any]) -> None:
    """Stop the statements the server still runs for a transaction given up on.

    Interrupted (a time limit's exception) with statements in flight, COMMIT among
    them, the server would still commit what this process has let go of once, say, a
    lock it waits for frees. Cancelled, the transaction rolls back instead, unless
    its COMMIT is done already (which the caller cannot tell, as after a lost reply).
    """
    if driver.info.transaction_status != psycopg.pq.TransactionStatus.ACTIVE:
        return
    try:
        driver.cancel_safe(timeout=CANCEL_TIMEOUT_SECONDS)
    except psycopg.Error:
        log.warning("could not cancel the statements of an interrupted transaction")


def _driver_cursor(conn: Connection) -> psycopg.Cursor[Any]:
    driver_connection = conn.connection.driver_connection
    assert driver_connection is not None, "the connection is open"
    cursor: psycopg.Cursor[Any] = driver_connection.cursor()
    return cursor


def lock_run(conn: Connection, run_id: uuid.UUID) -> LockedRun | None:
    """Lock the run row: the per-execution lock every writer takes first."""
    row = fetch_one(conn, _LOCK_RUN, (run_id,))
    return None if row is None else _locked(row)


@dataclass(frozen=True)
class LockedActivity:
    run: LockedRun | None
    activity: dict[str, Any] | None
    # The run's history, when asked for and current; None means "read it yourself".
    history: list[HistoryEvent] | None


def read_run_with_activity(conn: Connection, run_id: uuid.UUID, seq: int) -> LockedActivity:
    """Read the run and one of its activities without locking them: a snapshot to
    decide on, never to write from."""
    query = _READ_RUN_WITH_ACTIVITY.format(history="NULL")
    row = fetch_one(conn, query, (seq, run_id))
    if row is None:
        return LockedActivity(None, None, None)
    return _with_activity(row)


def lock_run_with_activity(
    conn: Connection, run_id: uuid.UUID, seq: int, *, with_history: bool = False
) -> LockedActivity:
    """Lock the run and read one of its activities (and its history), in one round trip."""
    query = _LOCK_RUN_WITH_ACTIVITY.format(history=_HISTORY_COLUMN if with_history else "NULL")
    row = fetch_one(conn, query, (seq, run_id))
    if row is None:
        return LockedActivity(lock_run(conn, run_id), None, None)
    return _with_activity(row)


def load_history(conn: Connection, run_id: uuid.UUID) -> list[HistoryEvent]:
    with _driver_errors(conn), _driver_cursor(conn) as cursor:
        cursor.execute(
            "SELECT event_id, event_type, attributes FROM events"
            " WHERE run_id = %s ORDER BY event_id",
            (run_id,),
        )
        return [HistoryEvent(*row) for row in cursor.fetchall()]


def _with_activity(row: Sequence[Any]) -> LockedActivity:
    run = _locked(row)
    columns = (*_ACTIVITY_COLUMNS, "lease_expired", "next_attempt_in_seconds")
    activity = dict(zip(columns, row[9:-1], strict=True))
    history = None
    if row[-1] is not None:
        history = [HistoryEvent(*event) for event in row[-1]]
        # Read in the statement's snapshot, which predates waiting for the lock: if a
        # writer committed meanwhile, the history misses its events, so drop it.
        if not history or history[-1].event_id != run.last_event_id:
            history = None
    return LockedActivity(run, activity, history)


@dataclass(frozen=True)
class Sql:
    """A statement written by hand: the hot path skips SQLAlchemy's compiler."""

    text: str
    params: tuple[Any, ...] = ()


class _Now:
    """As a column value: the database's now()."""


@dataclass(frozen=True)
class NowPlus:
    """As a column value: the database's now() plus some seconds."""

    seconds: float


NOW = _Now()
JSON_COLUMNS = frozenset({"attributes", "input", "result", "error", "retry_policy"})


def _param(column: str, value: Any) -> Any:
    # None in a JSON column is SQL NULL; Jsonb(None), JSON's null.
    if column in JSON_COLUMNS and value is not None and not isinstance(value, Jsonb):
        return Jsonb(value)
    return value


def _assignments(values: dict[str, Any]) -> tuple[str, list[Any]]:
    parts: list[str] = []
    params: list[Any] = []
    for column, value in values.items():
        if isinstance(value, _Now):
            parts.append(f"{column} = now()")
        elif isinstance(value, NowPlus):
            parts.append(f"{column} = now() + make_interval(secs => %s::float8)")
            params.append(value.seconds)
        else:
            parts.append(f"{column} = %s")
            params.append(_param(column, value))
    return ", ".join(parts), params


def insert_rows(table: str, rows: Sequence[dict[str, Any]]) -> Sql:
    columns = list(rows[0])
    placeholders = "(" + ", ".join(["%s"] * len(columns)) + ")"
    params = [_param(column, row[column]) for row in rows for column in columns]
    text = f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ", ".join(
        [placeholders] * len(rows)
    )
    return Sql(text, tuple(params))


def write_run(
    conn: Connection,
    run: LockedRun,
    *,
    new_events: Sequence[NewEvent] = (),
    status: ExecutionStatus | None = None,
    values: dict[str, Any] | None = None,
    also: Sequence[Sql] = (),
    reason: str | None = None,
    history: list[HistoryEvent] | None = None,
    defer: bool = False,
) -> LockedRun:
    """Append events, run the `also` statements, and update the run row: one statement.

    The appended events are added to `history`, when given, so the caller can replay
    without reading them back. With `defer`, nothing is sent yet: the write goes out
    with the next `write_run` on the returned run, which the caller must make in the
    same transaction (an activity's outcome, then the workflow task it wakes).

    A status change is a guarded update (allowed only from the statuses the table
    lists); a non-terminal change records WORKFLOW_STATUS_CHANGED, a terminal one
    expects the caller's closing event among `new_events`. A guard that fails raises
    IllegalTransition, and the caller's transaction rolls back.
    """
    appended = list(new_events)
    run_values: dict[str, Any] = dict(values or {})
    if defer:
        assert status is None and run.deferred is None, "only a plain write waits for the next"
        # Whoever replays before the next write must see these events: through `history`.
        assert history is not None, "a deferred write needs the run's history"
        first_event_id = run.last_event_id + 1
        if history is not None:
            history.extend(
                HistoryEvent(first_event_id + offset, event.event_type, event.attributes)
                for offset, event in enumerate(appended)
            )
        due = run_values.get("workflow_task_due_at", run.workflow_task_due_at)
        return replace(
            run,
            last_event_id=run.last_event_id + len(appended),
            workflow_task_due_at=datetime.now(UTC) if isinstance(due, _Now) else due,
            deferred=DeferredWrite(first_event_id, tuple(appended), tuple(also), run_values),
        )
    base_event_id = run.last_event_id
    earlier = run.deferred
    if earlier is not None:
        # The held-back write goes first: its events, its statements, then our values
        # over its values.
        base_event_id = earlier.first_event_id - 1
        also = [*earlier.also, *also]
        run_values = {**earlier.values, **run_values}
    guard = ""
    guard_params: list[Any] = []
    if status is not None:
        allowed = sorted(s.value for s in sources_of(status))
        guard = " AND status IN (" + ", ".join(["%s"] * len(allowed)) + ")"
        guard_params = list(allowed)
        run_values["status"] = status.value
        if status in TERMINAL_STATUSES:
            run_values.update(end_time=NOW, workflow_task_due_at=None)
        else:
            appended.append(
                NewEvent(
                    ev.WORKFLOW_STATUS_CHANGED,
                    {"from_status": run.status.value, "to_status": status.value, "reason": reason},
                )
            )
    ctes: list[Sql] = []
    to_insert = [*(earlier.events if earlier else ()), *appended]
    if to_insert:
        now_ns = time.time_ns()
        ctes.append(
            insert_rows(
                "events",
                [
                    {
                        "run_id": run.run_id,
                        "event_id": base_event_id + 1 + offset,
                        "execution_id": run.execution_id,
                        "event_type": event.event_type,
                        "attributes": event.attributes,
                        "event_timestamp": event.timestamp_ns or now_ns + offset,
                        "dedup_key": event.dedup_key,
                    }
                    for offset, event in enumerate(to_insert)
                ],
            )
        )
    ctes.extend(also)
    last_event_id = run.last_event_id + len(appended)
    run_values["last_event_id"] = last_event_id
    assignments, params = _assignments(run_values)
    ctes.append(
        Sql(
            f"UPDATE runs SET {assignments} WHERE run_id = %s{guard} RETURNING 1",
            (*params, run.run_id, *guard_params),
        )
    )
    # The guard fails the statement itself, so nothing has to be read back before
    # COMMIT (pipelined_transaction queues this statement and the COMMIT together).
    failure = f"run {run.run_id} cannot go from {run.status} to {status}"
    changed = f"w{len(ctes) - 1}"
    statement = (
        "WITH "
        + ", ".join(f"w{i} AS ({cte.text})" for i, cte in enumerate(ctes))
        + f" SELECT chainline_require(count(*) = 1, %s) FROM {changed}"
    )
    send(conn, Sql(statement, (*(p for cte in ctes for p in cte.params), failure)))
    if history is not None:
        history.extend(
            HistoryEvent(run.last_event_id + 1 + offset, event.event_type, event.attributes)
            for offset, event in enumerate(appended)
        )
    if status in TERMINAL_STATUSES:
        # Delivered at commit: wakes API requests waiting for this execution's result.
        send(conn, Sql("SELECT pg_notify(%s, %s)", (CLOSED_CHANNEL, run.execution_id)))
    due = run_values.get("workflow_task_due_at", run.workflow_task_due_at)
    return replace(
        run,
        last_event_id=last_event_id,
        processed_event_id=run_values.get("processed_event_id", run.processed_event_id),
        status=status or run.status,
        workflow_task_due_at=datetime.now(UTC) if isinstance(due, _Now) else due,
        deferred=None,
    )


def abandon_activities(run_id: uuid.UUID) -> Sql:
    """A closed run's in-flight activities: their later outcomes are not recorded."""
    return Sql(
        "UPDATE activities SET state = 'ABANDONED' WHERE run_id = %s AND state = ANY(%s)",
        (run_id, list(IN_FLIGHT_ACTIVITY_STATES)),
    )


def update_activity(run_id: uuid.UUID, seq: int, **values: Any) -> Sql:
    assignments, params = _assignments(values)
    return Sql(
        f"UPDATE activities SET {assignments} WHERE run_id = %s AND seq = %s",
        (*params, run_id, seq),
    )


def insert_activities(rows: Sequence[dict[str, Any]]) -> Sql:
    return insert_rows("activities", rows)


def close_run(
    conn: Connection,
    run: LockedRun,
    new_status: ExecutionStatus,
    closing_event: NewEvent,
    *,
    result: Any = None,
    error: dict[str, Any] | None = None,
    new_events: Sequence[NewEvent] = (),
    values: dict[str, Any] | None = None,
    also: Sequence[Sql] = (),
) -> LockedRun:
    """Record the closing event and move the run to its terminal status.

    A retrying run passes through RUNNING first, as the status table demands.
    """
    if run.deferred is not None:
        # The held-back write may complete an activity that abandoning would also
        # update, and two updates of one row in one statement leave only one of them:
        # the held-back write goes out on its own first.
        run = write_run(conn, run)
    if run.status not in sources_of(new_status):
        run = write_run(conn, run, status=ExecutionStatus.RUNNING, reason="closing")
    return write_run(
        conn,
        run,
        new_events=[*new_events, closing_event],
        status=new_status,
        values={**(values or {}), "result": result, "error": error},
        also=[*also, abandon_activities(run.run_id)],
    )


def has_retrying_activity(conn: Connection, run_id: uuid.UUID, *, besides: int = 0) -> bool:
    # On the driver's cursor: it is read inside pipelined transactions.
    row = fetch_one(
        conn,
        "SELECT EXISTS (SELECT 1 FROM activities WHERE run_id = %s AND seq <> %s"
        " AND state = ANY(%s) AND attempt > 1)",
        (run_id, besides, list(IN_FLIGHT_ACTIVITY_STATES)),
    )
    assert row is not None
    return bool(row[0])

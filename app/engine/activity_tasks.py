"""One activity attempt, in three steps: claim it, run it, record its outcome.

The user's function runs with no transaction open. The attempt is leased to the
claiming process, so a redelivered message can tell a live attempt (leave it) from a
lost one (count it as failed and retry by the policy). With a Redis lease store the
claim writes nothing to Postgres (and a new activity's first attempt, whose message
carries a claim ticket, does not read it either): ACTIVITY_TASK_STARTED is written with
the outcome, or once the attempt has run for `record_started_after_seconds`
(start_recorder.py). Without one, the claim is a Postgres transaction that records the
start.

A success is recorded, and the workflow task it wakes run, in the same transaction.
When the ticket carried a run snapshot (a lone activity's), that transaction reads
nothing first: its writes go out behind a guard that fails it if the run changed since
the snapshot, and the outcome is then recorded after reading the run under its lock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine

from app.engine import events as ev
from app.engine.binding import bind_input, to_json
from app.engine.dispatch import ActivityDispatch, Dispatch, RunSnapshot
from app.engine.leases import (
    TICKET_MAX_HISTORY_BYTES,
    TICKET_MAX_INPUT_BYTES,
    TICKET_SECONDS,
    Lease,
    LeaseStore,
    Taken,
)
from app.engine.payloads import check_payload_size, json_size
from app.engine.replay import HistoryEvent
from app.engine.retry import RetryPolicy
from app.engine.statuses import ExecutionStatus
from app.engine.transient import INTERRUPTIONS, TRANSIENT_ERRORS
from app.engine.workflow_tasks import advance, time_out_run
from app.errors import PayloadTooLarge
from app.storage.history import (
    NOW,
    LockedRun,
    NewEvent,
    NowPlus,
    StaleSnapshot,
    expect_current,
    has_retrying_activity,
    load_history,
    lock_run_with_activity,
    pipelined_transaction,
    read_run_with_activity,
    send,
    update_activity,
    write_run,
)
from app.workflows.context import current_activity_execution_id
from app.workflows.errors import WorkflowError
from app.workflows.registry import ActivityDefinition, Registry

log = logging.getLogger(__name__)

# Time past start_to_close before a silent attempt counts as lost (the hard kill lands first).
LEASE_GRACE = timedelta(seconds=10)


@dataclass(frozen=True)
class Attempt:
    """Run the activity now."""

    run_id: uuid.UUID
    execution_id: str
    seq: int
    attempt: int
    definition: ActivityDefinition
    input: Any
    # Set when the claim is a Redis lease, not (yet) a Postgres row in state STARTED.
    lease: Lease | None = None
    # The run as its message's ticket saw it: the outcome can be recorded from it.
    snapshot: RunSnapshot | None = None


@dataclass(frozen=True)
class RetryLater:
    """Send the message again after `countdown` seconds."""

    countdown: float


@dataclass(frozen=True)
class Done:
    """Nothing (more) to run for this message; `reason` says why.

    `advanced` says the run's next workflow task already ran inline; `dispatches` is
    the work it asked for.
    """

    reason: str
    dispatches: list[Dispatch] = field(default_factory=list)
    advanced: bool = False


ClaimOutcome = Attempt | RetryLater | Done


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# Attempts whose outcome this process gave up writing: (run_id, seq, attempt). Their
# leases still name this live process, but they are lost now, not when they expire.
_let_go: set[tuple[uuid.UUID, int, int]] = set()

# Pauses between tries at writing an outcome before giving up to the message's own
# retry: the result lives only in this process, so a short outage should not cost a rerun.
OUTCOME_WRITE_BACKOFFS = (0.05, 0.2, 0.5, 1.0, 2.0)


def _lease_owner_alive(owner: str | None, run_id: uuid.UUID, seq: int, attempt: int) -> bool | None:
    """Whether the owner of the attempt's lease is still running it: True or False
    when the owner ran on this host; None when we cannot tell."""
    if not owner:
        return False
    if owner == worker_identity() and (run_id, seq, attempt) in _let_go:
        return False
    host, _, pid_text = owner.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# The common claim (a scheduled or due attempt of an open run) as one autocommit
# statement: lock the run, lease the activity, record ACTIVITY_TASK_STARTED, bump the
# event counter. One round trip instead of four; anything else takes the full path.
_FAST_CLAIM = """
WITH run AS (
    SELECT run_id, execution_id, last_event_id FROM runs
    WHERE run_id = %(run_id)s::uuid AND status IN ('RUNNING', 'RETRYING_AFTER_ERROR')
    FOR UPDATE
), claimed AS (
    UPDATE activities AS a
    SET state = 'STARTED',
        lease_owner = %(owner)s::text,
        lease_expires_at = now()
            + make_interval(secs => a.start_to_close_seconds + %(grace)s::float8),
        next_attempt_at = NULL
    FROM run
    WHERE a.run_id = run.run_id AND a.seq = %(seq)s::int
      AND (a.state = 'SCHEDULED'
           OR (a.state = 'BACKING_OFF' AND a.next_attempt_at <= now() + interval '50 ms'))
    RETURNING a.activity_name, a.input, a.attempt
), started AS (
    INSERT INTO events (run_id, event_id, execution_id, event_type, attributes,
                        event_timestamp, dedup_key)
    SELECT run.run_id, run.last_event_id + 1, run.execution_id, 'ACTIVITY_TASK_STARTED',
           jsonb_build_object('task_id', %(task_id)s::text, 'activity_name', claimed.activity_name,
                              'input', jsonb_build_object('type', 'json', 'value', claimed.input),
                              'seq', %(seq)s::int, 'attempt', claimed.attempt),
           %(timestamp)s::bigint,
           'activity:' || %(seq)s::int || ':attempt:' || claimed.attempt || ':started'
    FROM run, claimed
)
UPDATE runs SET last_event_id = runs.last_event_id + 1
FROM run, claimed
WHERE runs.run_id = run.run_id
RETURNING claimed.activity_name, claimed.input, claimed.attempt, run.execution_id
"""


def claim_attempt(
    engine: Engine,
    registry: Registry,
    run_id: uuid.UUID,
    seq: int,
    leases: LeaseStore | None = None,
    *,
    ticket: Mapping[str, Any] | None = None,
) -> ClaimOutcome:
    """Decide what this message should do: run an attempt, wait, or nothing.

    `ticket`: the claim ticket the message carries (see `ticket_for`), if any. Retried
    messages leave it out: their first delivery almost always claimed the attempt."""
    if leases is not None:
        return _claim_with_lease(engine, registry, leases, run_id, seq, ticket)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        row = conn.exec_driver_sql(
            _FAST_CLAIM,
            {
                "run_id": run_id,
                "seq": seq,
                "owner": worker_identity(),
                "grace": LEASE_GRACE.total_seconds(),
                "task_id": ev.activity_task_id(run_id, seq),
                "timestamp": time.time_ns(),
            },
        ).first()
    if row is not None:
        definition = registry.activities.get(row.activity_name)
        if definition is not None:
            return Attempt(run_id, row.execution_id, seq, row.attempt, definition, row.input)
    return _claim_slowly(engine, registry, run_id, seq)


def ticket_for(
    activity: ActivityDispatch, *, issued_at: float | None = None
) -> dict[str, Any] | None:
    """The claim ticket a just-scheduled activity's message carries: what the claim of
    its first attempt would otherwise read from Postgres. None for an activity sent
    again (the sweeper's) and for inputs over TICKET_MAX_INPUT_BYTES as JSON."""
    scheduled = activity.ticket
    if scheduled is None or json_size(scheduled.input) > TICKET_MAX_INPUT_BYTES:
        return None
    ticket = {
        "execution_id": scheduled.execution_id,
        "activity_name": activity.activity_name,
        "input": scheduled.input,
        "lease_seconds": activity.start_to_close_seconds + LEASE_GRACE.total_seconds(),
        # By the publisher's clock: see TICKET_SECONDS for what skew this tolerates.
        "issued_at": time.time() if issued_at is None else issued_at,
    }
    if scheduled.run is not None:
        history = [[e.event_id, e.event_type, e.attributes] for e in scheduled.run.history]
        if json_size(history) <= TICKET_MAX_HISTORY_BYTES:
            ticket["run"] = _snapshot_to_json(scheduled.run, history)
    return ticket


def _snapshot_to_json(snapshot: RunSnapshot, history: list[list[Any]]) -> dict[str, Any]:
    return {
        "workflow_name": snapshot.workflow_name,
        "deadline": snapshot.deadline.isoformat(),
        "random_seed": snapshot.random_seed,
        "last_event_id": snapshot.last_event_id,
        "processed_event_id": snapshot.processed_event_id,
        "history": history,
    }


def _snapshot_from_json(data: Any) -> RunSnapshot | None:
    """A ticket's run snapshot; None (and a warning) when it is malformed."""
    if data is None:
        return None
    try:
        history = tuple(
            HistoryEvent(int(event_id), str(event_type), dict(attributes))
            for event_id, event_type, attributes in data["history"]
        )
        snapshot = RunSnapshot(
            workflow_name=str(data["workflow_name"]),
            deadline=datetime.fromisoformat(data["deadline"]),
            random_seed=int(data["random_seed"]),
            last_event_id=int(data["last_event_id"]),
            processed_event_id=int(data["processed_event_id"]),
            history=history,
        )
    except (KeyError, TypeError, ValueError):
        log.warning("ignoring a malformed run snapshot in a claim ticket")
        return None
    if not history or history[-1].event_id != snapshot.last_event_id:
        log.warning("ignoring a run snapshot whose history ends elsewhere")
        return None
    return snapshot


@dataclass(frozen=True)
class _Ticketed:
    definition: ActivityDefinition
    execution_id: str
    input: Any
    lease_seconds: float
    snapshot: RunSnapshot | None


def _honoured(ticket: Mapping[str, Any] | None, registry: Registry) -> _Ticketed | None:
    """The ticket's content if it may start the first attempt: issued within
    TICKET_SECONDS, well formed, and for an activity registered here."""
    if ticket is None:
        return None
    try:
        issued_at = float(ticket["issued_at"])
        definition = registry.activities.get(ticket["activity_name"])
        execution_id, input_value = str(ticket["execution_id"]), ticket["input"]
        lease_seconds = float(ticket["lease_seconds"])
    except (KeyError, TypeError, ValueError):
        log.warning("ignoring a malformed claim ticket")
        return None
    if definition is None or time.time() - issued_at > TICKET_SECONDS:
        return None
    snapshot = _snapshot_from_json(ticket.get("run"))
    return _Ticketed(definition, execution_id, input_value, lease_seconds, snapshot)


def _claim_with_lease(
    engine: Engine,
    registry: Registry,
    leases: LeaseStore,
    run_id: uuid.UUID,
    seq: int,
    ticket: Mapping[str, Any] | None,
) -> ClaimOutcome:
    ticketed = _honoured(ticket, registry)
    if ticketed is not None:
        # Within the ticket's seconds, a first attempt that was ever claimed still has
        # its key (TICKET_SECONDS): the lease alone tells whether it is still to run.
        claim = leases.acquire(
            run_id, seq, 1, owner=worker_identity(), lease_seconds=ticketed.lease_seconds
        )
        if isinstance(claim, Lease):
            return Attempt(
                run_id,
                ticketed.execution_id,
                seq,
                1,
                ticketed.definition,
                ticketed.input,
                claim,
                ticketed.snapshot,
            )
        return _already_leased(engine, leases, run_id, seq, claim)
    # A snapshot read, no lock: a stale answer only costs a duplicate Redis claim,
    # and every write that follows is guarded again under the run's lock.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        snapshot = read_run_with_activity(conn, run_id, seq)
    run, row = snapshot.run, snapshot.activity
    if run is None or row is None or row["state"] == "STARTED":
        # Unknown, or started in Postgres (a long attempt): the locked path decides.
        return _claim_slowly(engine, registry, run_id, seq)
    if not run.is_open:
        return Done("run closed")
    state = row["state"]
    if state in CLOSED_ACTIVITY_STATES:
        return Done(f"already {state.lower()}")
    if state == "BACKING_OFF" and row["next_attempt_in_seconds"] > 0.05:
        return RetryLater(row["next_attempt_in_seconds"])
    definition = registry.activities.get(row["activity_name"])
    if definition is None:
        return RetryLater(5.0)
    attempt = int(row["attempt"])
    claim = leases.acquire(
        run_id,
        seq,
        attempt,
        owner=worker_identity(),
        lease_seconds=row["start_to_close_seconds"] + LEASE_GRACE.total_seconds(),
    )
    if isinstance(claim, Lease):
        return Attempt(run_id, run.execution_id, seq, attempt, definition, row["input"], claim)
    return _already_leased(engine, leases, run_id, seq, claim)


def _already_leased(
    engine: Engine, leases: LeaseStore, run_id: uuid.UUID, seq: int, claim: Taken
) -> RetryLater | Done:
    """Someone holds the attempt: leave it while they may still run it, else record
    it lost."""
    holder = claim.holder
    alive = _lease_owner_alive(holder.owner, run_id, seq, holder.attempt)
    if not claim.expired and alive is not False:
        return Done("attempt in progress elsewhere")
    outcome = _record_lost_lease(engine, run_id, seq, holder)
    leases.finish(run_id, seq, holder.attempt)
    return outcome


def _record_lost_lease(
    engine: Engine, run_id: uuid.UUID, seq: int, holder: Lease
) -> RetryLater | Done:
    """Record an attempt whose holder stopped before reporting: it started, then failed."""
    with engine.begin() as conn:
        locked = lock_run_with_activity(conn, run_id, seq)
        run, row = locked.run, locked.activity
        if run is None or row is None or not run.is_open:
            return Done("run closed")
        if row["state"] in CLOSED_ACTIVITY_STATES:
            return Done(f"already {row['state'].lower()}")
        if row["attempt"] != holder.attempt:
            # The holder recorded its outcome, then stopped before its lease was
            # finished; the next attempt has its own message.
            return Done("attempt superseded")
        if row["state"] == "STARTED":
            return _settle_started_attempt(conn, run, row)
        alive = _lease_owner_alive(holder.owner, run_id, seq, holder.attempt)
        error_type = "WorkerLost" if alive is False else "StartToCloseTimeout"
        delay, _ = _record_failure(
            conn,
            run,
            row,
            error_type,
            f"attempt {holder.attempt} was lost: its outcome was never recorded",
            started=_started_event(run.run_id, row, holder),
        )
    return Done("lost attempt failed for good") if delay is None else RetryLater(delay)


CLOSED_ACTIVITY_STATES = ("COMPLETED", "FAILED", "ABANDONED")


def _claim_slowly(engine: Engine, registry: Registry, run_id: uuid.UUID, seq: int) -> ClaimOutcome:
    with engine.begin() as conn:
        locked = lock_run_with_activity(conn, run_id, seq)
        run, row = locked.run, locked.activity
        if run is None:
            return Done("unknown run")
        if row is None:
            return Done("unknown activity")
        if not run.is_open:
            return Done("run closed")
        state = row["state"]
        if state in CLOSED_ACTIVITY_STATES:
            return Done(f"already {state.lower()}")
        if state == "BACKING_OFF" and row["next_attempt_in_seconds"] > 0.05:
            return RetryLater(row["next_attempt_in_seconds"])
        if state == "STARTED":
            return _settle_started_attempt(conn, run, row)
        definition = registry.activities.get(row["activity_name"])
        if definition is None:
            return RetryLater(5.0)
        attempt = int(row["attempt"])
        write_run(
            conn,
            run,
            new_events=[_started_event(run_id, row)],
            also=[
                update_activity(
                    run_id,
                    seq,
                    state="STARTED",
                    lease_owner=worker_identity(),
                    lease_expires_at=NowPlus(
                        row["start_to_close_seconds"] + LEASE_GRACE.total_seconds()
                    ),
                    next_attempt_at=None,
                )
            ],
        )
        return Attempt(run_id, run.execution_id, seq, attempt, definition, row["input"])


def _settle_started_attempt(conn: Connection, run: LockedRun, row: Any) -> RetryLater | Done:
    """An attempt started in Postgres: leave it if it is live, else record it lost."""
    alive = _lease_owner_alive(row["lease_owner"], run.run_id, row["seq"], row["attempt"])
    # An expired lease is lost even if its process lives: that process may be serving
    # other work, or be a new one that got the same pid.
    if not row["lease_expired"] and alive is not False:
        return Done("attempt in progress elsewhere")
    error_type = "WorkerLost" if alive is False else "StartToCloseTimeout"
    message = f"attempt {row['attempt']} was lost: its outcome was never recorded"
    delay, _ = _record_failure(conn, run, row, error_type, message)
    return Done("lost attempt failed for good") if delay is None else RetryLater(delay)


def _started_event(run_id: uuid.UUID, row: Any, lease: Lease | None = None) -> NewEvent:
    """ACTIVITY_TASK_STARTED for the activity's current attempt; a lease gives its
    real start time."""
    seq, attempt = row["seq"], int(row["attempt"])
    return NewEvent(
        ev.ACTIVITY_TASK_STARTED,
        {
            "task_id": ev.activity_task_id(run_id, seq),
            "activity_name": row["activity_name"],
            "input": ev.payload(row["input"]),
            "seq": seq,
            "attempt": attempt,
        },
        dedup_key=f"activity:{seq}:attempt:{attempt}:started",
        timestamp_ns=None if lease is None else lease.started_ns,
    )


def record_attempt_started(engine: Engine, attempt: Attempt) -> bool:
    """Write a leased attempt's start to history while it runs; False if it is no
    longer the current attempt (its outcome will be discarded too)."""
    lease = attempt.lease
    assert lease is not None, "only a leased attempt starts outside its claim"
    with engine.begin() as conn:
        locked = lock_run_with_activity(conn, attempt.run_id, attempt.seq)
        run, row = locked.run, locked.activity
        if (
            run is None
            or row is None
            or not run.is_open
            or row["state"] not in ("SCHEDULED", "BACKING_OFF")
            or row["attempt"] != attempt.attempt
        ):
            return False
        write_run(
            conn,
            run,
            new_events=[_started_event(run.run_id, row, lease)],
            also=[
                update_activity(
                    run.run_id,
                    attempt.seq,
                    state="STARTED",
                    lease_owner=lease.owner,
                    # From now, by Postgres's clock: a little later than the
                    # Redis lease, never sooner.
                    lease_expires_at=NowPlus(lease.lease_seconds),
                    next_attempt_at=None,
                )
            ],
        )
        return True


def execute_attempt(attempt: Attempt) -> tuple[bool, Any]:
    """Call the user's function; (True, JSON result) or (False, the exception)."""
    token = current_activity_execution_id.set(attempt.execution_id)
    try:
        fn = attempt.definition.fn
        kwargs = bind_input(fn, attempt.input)
        if attempt.definition.is_async:
            timeout = attempt.definition.start_to_close_timeout.total_seconds()
            value = asyncio.run(asyncio.wait_for(fn(**kwargs), timeout))
        else:
            value = fn(**kwargs)
        result = to_json(value)
        check_payload_size(result, f"the result of activity {attempt.definition.name!r}")
        return True, result
    except PayloadTooLarge as exc:
        return False, WorkflowError(exc.detail, type="PayloadTooLarge", non_retryable=True)
    except Exception as exc:
        return False, exc
    finally:
        current_activity_execution_id.reset(token)


def record_outcome(
    engine: Engine,
    attempt: Attempt,
    succeeded: bool,
    value: Any,
    registry: Registry | None = None,
    leases: LeaseStore | None = None,
) -> RetryLater | Done:
    """Record the attempt's result or failure, unless the attempt is no longer ours.

    With a registry, the run's next workflow task runs right here, in the same
    transaction: the outcome and the commands it leads to commit together. Should that
    workflow task break, the transaction is tried again recording the outcome alone,
    and the chained workflow task advances the run instead.

    Transient errors are retried here, OUTCOME_WRITE_BACKOFFS apart. Should the write
    still fail (or be interrupted), the attempt is let go: its lease is released, and
    the next message for it records it lost at once instead of when the lease expires.
    """
    try:
        for tries, backoff in enumerate((*OUTCOME_WRITE_BACKOFFS, None)):
            try:
                outcome = _record_outcome_with_fallback(
                    engine, attempt, succeeded, value, registry, again=tries > 0
                )
                break
            except TRANSIENT_ERRORS:
                if backoff is None:
                    raise
                log.warning("could not record an outcome of run %s; trying again", attempt.run_id)
                time.sleep(backoff)
    except BaseException:
        _let_go.add((attempt.run_id, attempt.seq, attempt.attempt))
        if leases is not None and attempt.lease is not None:
            _release_quietly(leases, attempt, attempt.lease)
        raise
    if leases is not None and attempt.lease is not None:
        leases.finish(attempt.run_id, attempt.seq, attempt.attempt)
    return outcome


def _release_quietly(leases: LeaseStore, attempt: Attempt, lease: Lease) -> None:
    """Tell every worker the attempt is let go; on failure, only this process knows."""
    try:
        leases.release(attempt.run_id, attempt.seq, lease)
    except Exception:
        log.warning("could not release the lease of run %s", attempt.run_id, exc_info=True)


def _record_outcome_with_fallback(
    engine: Engine,
    attempt: Attempt,
    succeeded: bool,
    value: Any,
    registry: Registry | None,
    *,
    again: bool,
) -> RetryLater | Done:
    if registry is not None:
        if attempt.snapshot is not None and succeeded and not again:
            try:
                return _record_success_from_snapshot(
                    engine, attempt, attempt.snapshot, value, registry
                )
            except StaleSnapshot:
                pass  # the run moved on: read it under its lock instead
            except (*TRANSIENT_ERRORS, *INTERRUPTIONS):
                raise
            except Exception:
                log.exception("recording from the snapshot of run %s failed", attempt.run_id)
        try:
            return _record_outcome(engine, attempt, succeeded, value, registry, again=again)
        except (*TRANSIENT_ERRORS, *INTERRUPTIONS):
            raise
        except Exception:
            log.exception("inline workflow task of run %s failed", attempt.run_id)
    return _record_outcome(engine, attempt, succeeded, value, None, again=again)


def _record_success_from_snapshot(
    engine: Engine, attempt: Attempt, snapshot: RunSnapshot, value: Any, registry: Registry
) -> Done:
    """Record a ticketed first attempt's success and run the next workflow task, from
    the run snapshot the ticket carried: one round trip, with no read before the writes.

    The writes go out behind a guard that locks the run and the activity and checks
    that neither changed since the snapshot; when one did, the transaction rolls back
    and StaleSnapshot is raised, for the caller to take the usual path.
    """
    assert attempt.lease is not None, "a ticketed attempt is leased"
    run = LockedRun(
        run_id=attempt.run_id,
        execution_id=attempt.execution_id,
        workflow_name=snapshot.workflow_name,
        status=ExecutionStatus.RUNNING,
        deadline=snapshot.deadline,
        random_seed=snapshot.random_seed,
        last_event_id=snapshot.last_event_id,
        processed_event_id=snapshot.processed_event_id,
        workflow_task_due_at=None,
    )
    # The activity row's columns that recording a success reads, as the guard ensures.
    row = {
        "seq": attempt.seq,
        "activity_name": attempt.definition.name,
        "input": attempt.input,
        "attempt": attempt.attempt,
    }
    history = list(snapshot.history)
    now = datetime.now(UTC)
    with pipelined_transaction(engine) as conn:
        send(conn, expect_current(run.run_id, attempt.seq, attempt.attempt, run.last_event_id))
        started = _started_event(run.run_id, row, attempt.lease)
        run = _record_success(conn, run, row, value, history, started, defer=True)
        return _advance_inline(conn, registry, run, history, now, "completed")


def _advance_inline(
    conn: Connection,
    registry: Registry,
    run: LockedRun,
    history: list[HistoryEvent] | None,
    now: datetime,
    reason: str,
) -> Done:
    """The workflow task an outcome wakes, in the transaction that recorded it."""
    if now >= run.deadline:
        time_out_run(conn, run)
        return Done("run timed out")
    dispatches = advance(conn, registry, run, now, history=history)
    return Done(reason, dispatches=dispatches, advanced=True)


def _record_outcome(
    engine: Engine,
    attempt: Attempt,
    succeeded: bool,
    value: Any,
    registry: Registry | None,
    *,
    again: bool = False,
) -> RetryLater | Done:
    """`again`: an earlier try met a transient error, and may have committed."""
    with pipelined_transaction(engine) as conn:
        locked = lock_run_with_activity(
            conn, attempt.run_id, attempt.seq, with_history=registry is not None
        )
        run, row, history = locked.run, locked.activity, locked.history
        if run is None or row is None or not run.is_open:
            return Done("outcome discarded: the attempt is no longer current")
        if row["attempt"] != attempt.attempt:
            if again and row["state"] == "BACKING_OFF" and row["attempt"] == attempt.attempt + 1:
                # The earlier try committed the failure, and only its reply was lost:
                # this message still has to run the next attempt.
                return RetryLater(max(row["next_attempt_in_seconds"], 0.0))
            return Done("outcome discarded: the attempt is no longer current")
        started: NewEvent | None = None
        if row["state"] == "STARTED" and row["lease_owner"] == worker_identity():
            pass  # claimed in Postgres, or its start already written by the start recorder
        elif row["state"] in ("SCHEDULED", "BACKING_OFF") and attempt.lease is not None:
            started = _started_event(run.run_id, row, attempt.lease)
        else:
            return Done("outcome discarded: the attempt is no longer current")
        now = datetime.now(UTC)
        if succeeded:
            if registry is not None and history is None:
                history = load_history(conn, run.run_id)
            # The workflow task that follows writes in the same statement.
            run = _record_success(
                conn, run, row, value, history, started, defer=registry is not None
            )
        else:
            error: BaseException = value
            error_type = error.type if isinstance(error, WorkflowError) else type(error).__name__
            retry = not (isinstance(error, WorkflowError) and error.non_retryable)
            delay, run = _record_failure(
                conn,
                run,
                row,
                error_type,
                str(error),
                retry=retry,
                history=history,
                started=started,
            )
            if delay is not None:
                return RetryLater(delay)
        reason = "completed" if succeeded else "failed"
        if registry is None:
            return Done(reason)
        return _advance_inline(conn, registry, run, history, now, reason)


def _record_success(
    conn: Connection,
    run: LockedRun,
    row: Any,
    value: Any,
    history: list[HistoryEvent] | None,
    started: NewEvent | None = None,
    *,
    defer: bool = False,
) -> LockedRun:
    seq = row["seq"]
    settled = run.status is ExecutionStatus.RETRYING_AFTER_ERROR and not has_retrying_activity(
        conn, run.run_id, besides=seq
    )
    return write_run(
        conn,
        run,
        history=history,
        new_events=[
            *([started] if started else []),
            NewEvent(
                ev.ACTIVITY_TASK_COMPLETED,
                {
                    "task_id": ev.activity_task_id(run.run_id, seq),
                    "activity_name": row["activity_name"],
                    "result": ev.payload(value),
                    "seq": seq,
                    "attempt": row["attempt"],
                },
                dedup_key=f"activity:{seq}:outcome",
            ),
        ],
        also=[update_activity(run.run_id, seq, state="COMPLETED", lease_owner=None)],
        values={"workflow_task_due_at": run.workflow_task_due_at or NOW},
        status=ExecutionStatus.RUNNING if settled else None,
        reason="activity retry succeeded" if settled else None,
        # Only a run that is plainly RUNNING: a retrying one reads activity rows next.
        defer=defer and run.status is ExecutionStatus.RUNNING,
    )


def _record_failure(
    conn: Connection,
    run: LockedRun,
    row: Any,
    error_type: str,
    message: str,
    *,
    retry: bool = True,
    history: list[HistoryEvent] | None = None,
    started: NewEvent | None = None,
) -> tuple[float | None, LockedRun]:
    """Record a failed attempt (after its start, when `started` says it was not
    written yet); returns the backoff before the next one (None if it was the last)
    and the run as written."""
    before = [started] if started else []
    seq, attempt = row["seq"], row["attempt"]
    policy = RetryPolicy.from_json(row["retry_policy"])
    delay = policy.next_delay(attempt, error_type) if retry else None
    attributes = {
        "task_id": ev.activity_task_id(run.run_id, seq),
        "activity_name": row["activity_name"],
        "attempt": attempt,
        "failure": ev.failure(error_type, message),
        "seq": seq,
    }
    if delay is None:
        run = write_run(
            conn,
            run,
            history=history,
            new_events=[
                *before,
                NewEvent(ev.ACTIVITY_TASK_FAILED, attributes, dedup_key=f"activity:{seq}:outcome"),
            ],
            also=[update_activity(run.run_id, seq, state="FAILED", lease_owner=None)],
            values={"workflow_task_due_at": run.workflow_task_due_at or NOW},
        )
        return None, run
    start_retrying = run.status is ExecutionStatus.RUNNING
    run = write_run(
        conn,
        run,
        new_events=[
            *before,
            NewEvent(
                ev.ACTIVITY_TASK_RETRYING,
                {**attributes, "next_attempt_in_seconds": delay},
                dedup_key=f"activity:{seq}:attempt:{attempt}:retrying",
            ),
        ],
        also=[
            update_activity(
                run.run_id,
                seq,
                state="BACKING_OFF",
                attempt=attempt + 1,
                lease_owner=None,
                lease_expires_at=None,
                next_attempt_at=NowPlus(delay),
            )
        ],
        status=ExecutionStatus.RETRYING_AFTER_ERROR if start_retrying else None,
        reason=f"activity {row['activity_name']!r} attempt {attempt} failed"
        if start_retrying
        else None,
    )
    return delay, run

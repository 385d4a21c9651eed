"""Schedules: starting executions at the times of a spec (app/model/schedule_spec.py).

Beat fires them (`fire_due_schedules`, from workers/beat.py every
`schedule_poll_seconds`): it locks the schedules due by Postgres's clock, skipping those
another beat holds, and in one transaction per batch records, for each tick, what it
did (schedule_fires, unique on schedule and tick), inserts the executions it starts
(each id made of the schedule's and the tick's, so a tick can only start one), and
advances each schedule to its next tick. Nothing is kept in beat between two polls, so
a schedule created, changed, paused or deleted through the API counts from the next
poll; a beat that dies mid-batch commits nothing, and the next poll (of any beat) does
the batch again.

A tick that comes while the execution the schedule started last is still open follows
the overlap policy: SKIP records it skipped; BUFFER_ONE keeps one tick to start once
that execution closes, BUFFER_ALL keeps them all (up to BUFFER_ALL_LIMIT); CANCEL_OTHER
asks that execution to cancel and keeps the tick as BUFFER_ONE does; TERMINATE_OTHER
terminates it and starts at once; ALLOW_ALL starts at once. Ticks older than the
catch-up window when beat comes to them (it was down) are counted as missed, not fired.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from app.engine.dispatch import Dispatch, FollowUp
from app.engine.executions import new_execution
from app.engine.interactions import request_cancel, terminate_in
from app.errors import ExecutionClosed, ExecutionNotFound, ScheduleExists, ScheduleNotFound
from app.model.schedule_spec import OverlapPolicy, SchedulePolicy, ScheduleSpec
from app.model.statuses import OPEN_STATUSES
from app.storage.executions import execution_status, send_insert_execution
from app.storage.schedules import (
    SCHEDULED,
    TRIGGERED,
    RecentStart,
    ScheduleRow,
    buffered_ticks,
    database_now,
    delete_schedule,
    insert_schedule,
    list_schedules,
    lock_due_schedules,
    lock_schedule,
    read_schedule,
    recent_starts,
    record_fire,
    record_start,
    runs_that_exist,
    save_schedule,
)
from app.storage.transactions import Transaction, autocommit, transaction
from app.workflows.registry import Registry, WorkflowDefinition

log = logging.getLogger(__name__)

# Schedules fired per transaction, and batches per poll at most (so that beat's other
# work is never held up long).
BATCH = 250
MOST_BATCHES = 8
# Ticks of one schedule fired per poll at most: a schedule that beat comes back to after
# a long stop catches up over several polls, never holding one transaction long.
MOST_TICKS_PER_POLL = 100
# Ticks older than the catch-up window counted per poll at most (the rest are passed
# over at once, so a stop of months costs nothing).
MOST_MISSED_COUNTED = 1000
BUFFER_ALL_LIMIT = 1000
FUTURE_SHOWN = 10
RECENT_SHOWN = 10
TERMINATED_BY_SCHEDULE = "terminated by its schedule's overlap policy (TERMINATE_OTHER)"
# Parsed specs by (schedule, revision): parsing one costs more than firing it.
_SPEC_CACHE_SIZE = 10_000
_specs: dict[tuple[str, int], ScheduleSpec] = {}


def execution_id_for(schedule_id: str, tick: datetime) -> str:
    """The id of the execution a tick starts: the schedule's and the tick's, so that a
    tick cannot start two (Temporal names them alike)."""
    stamp = tick.strftime("%Y%m%dT%H%M%S")
    if tick.microsecond:
        stamp += f".{tick.microsecond:06d}"
    return f"{schedule_id}-{stamp}Z"


def spec_of(row: ScheduleRow) -> ScheduleSpec:
    key = (row.schedule_id, row.revision)
    spec = _specs.get(key)
    if spec is None:
        if len(_specs) >= _SPEC_CACHE_SIZE:
            _specs.clear()
        spec = _specs[key] = ScheduleSpec.model_validate(row.spec)
    return spec


def spec_json(spec: ScheduleSpec) -> dict[str, Any]:
    """The spec as stored (and shown): durations as ISO 8601, times with their zone."""
    stored: dict[str, Any] = spec.model_dump(mode="json", exclude_none=True)
    return stored


def _count_taken(row: ScheduleRow, kind: str) -> None:
    """A scheduled tick that starts or waits to start uses one of max_executions."""
    if kind == SCHEDULED and row.remaining_executions is not None:
        row.remaining_executions -= 1


def _schedule_next(row: ScheduleRow, spec: ScheduleSpec, after: datetime) -> None:
    """Point `row` at its first tick after `after` (none once it is exhausted)."""
    tick = None if row.remaining_executions == 0 else spec.next_after(after)
    row.next_tick = tick
    row.next_fire_at = None if tick is None else tick + spec.jitter_for(row.schedule_id, tick)


# --- Changes through the API ---------------------------------------------------------


@dataclass(frozen=True)
class NewSchedule:
    schedule_id: str
    workflow_name: str
    input_value: Any
    spec: ScheduleSpec
    policy: SchedulePolicy
    max_executions: int | None
    deployment_name: str | None
    user_id: str | None


def create_schedule(engine: Engine, new: NewSchedule) -> None:
    """Record the schedule, due at its first tick from now; ScheduleExists if the id is
    taken."""
    row = ScheduleRow(
        schedule_id=new.schedule_id,
        workflow_name=new.workflow_name,
        input=new.input_value,
        spec=spec_json(new.spec),
        overlap=int(new.policy.overlap or OverlapPolicy.SKIP),
        catchup_window_seconds=new.policy.catchup_window_seconds,
        pause_on_failure=new.policy.pause_on_failure,
        max_executions=new.max_executions,
        remaining_executions=new.max_executions,
        paused=False,
        note=None,
        deployment_name=new.deployment_name,
        user_id=new.user_id,
        next_tick=None,
        next_fire_at=None,
        last_execution_id=None,
        buffered=0,
        missed_ticks=0,
        last_missed_tick=None,
        revision=1,
    )
    with transaction(engine) as tx:
        _schedule_next(row, new.spec, database_now(tx))
        if not insert_schedule(tx, row):
            raise ScheduleExists(f"Schedule {new.schedule_id!r} already exists")


@dataclass(frozen=True)
class ScheduleChange:
    """A partial update: each field given replaces the stored one."""

    input_value: Any = None
    input_given: bool = False
    spec_fields: dict[str, Any] = field(default_factory=dict)
    policy: SchedulePolicy | None = None
    max_executions: int | None = None
    max_executions_given: bool = False


def change_schedule(engine: Engine, schedule_id: str, change: ScheduleChange) -> None:
    """Apply `change`; the merged spec is validated whole (ValueError), and the next tick
    counts from now."""
    with transaction(engine) as tx:
        row = _locked(tx, schedule_id)
        spec = ScheduleSpec.model_validate({**row.spec, **change.spec_fields})
        row.spec = spec_json(spec)
        if change.input_given:
            row.input = change.input_value
        if change.policy is not None:
            row.overlap = int(change.policy.overlap or OverlapPolicy.SKIP)
            row.catchup_window_seconds = change.policy.catchup_window_seconds
            row.pause_on_failure = change.policy.pause_on_failure
        if change.max_executions_given:
            row.max_executions = row.remaining_executions = change.max_executions
        row.revision += 1
        _schedule_next(row, spec, database_now(tx))
        save_schedule(tx, row, touched=True)


def set_paused(engine: Engine, schedule_id: str, paused: bool, note: str | None) -> None:
    """Pause or resume (with the note given). A resumed schedule fires from its next
    tick after now: ticks that passed while it was paused are not caught up."""
    with transaction(engine) as tx:
        row = _locked(tx, schedule_id)
        if row.paused and not paused:
            _schedule_next(row, spec_of(row), database_now(tx))
        row.paused = paused
        row.note = note
        save_schedule(tx, row, touched=True)


def remove_schedule(engine: Engine, schedule_id: str) -> None:
    """Delete it: it fires no more; the executions it started go on."""
    with transaction(engine) as tx:
        if not delete_schedule(tx, schedule_id):
            raise ScheduleNotFound(f"Schedule {schedule_id!r} not found")


def trigger(
    engine: Engine, registry: Registry, schedule_id: str, overlap: OverlapPolicy | None
) -> FollowUp:
    """Start one execution now, by the overlap policy given or the schedule's (paused
    or not; it does not count against max_executions)."""
    with transaction(engine) as tx:
        row = _locked(tx, schedule_id)
        now = database_now(tx)
        firing = _Firing(tx, registry)
        running = firing.is_running(row.last_execution_id)
        firing.take_tick(row, now, TRIGGERED, running, OverlapPolicy(overlap or row.overlap))
        save_schedule(tx, row, touched=False)
        return firing.finish()


def _locked(tx: Transaction, schedule_id: str) -> ScheduleRow:
    row = lock_schedule(tx, schedule_id)
    if row is None:
        raise ScheduleNotFound(f"Schedule {schedule_id!r} not found")
    return row


# --- Reading --------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleView:
    row: ScheduleRow
    future: list[datetime]
    recent: list[RecentStart]


def describe(engine: Engine, schedule_id: str) -> ScheduleView:
    """The schedule, its next FUTURE_SHOWN fire times and the RECENT_SHOWN executions
    it started last (newest last)."""
    with autocommit(engine) as tx:
        row = read_schedule(tx, schedule_id)
        if row is None:
            raise ScheduleNotFound(f"Schedule {schedule_id!r} not found")
        recent = recent_starts(tx, schedule_id, limit=RECENT_SHOWN)
    return ScheduleView(row, future_fire_times(row), list(reversed(recent)))


def future_fire_times(row: ScheduleRow) -> list[datetime]:
    """When it fires next (tick plus jitter), as far as max_executions lets it."""
    if row.next_tick is None or row.next_fire_at is None:
        return []
    spec = spec_of(row)
    count = FUTURE_SHOWN
    if row.remaining_executions is not None:
        count = min(count, row.remaining_executions)
    ticks = [row.next_tick, *spec.times_after(row.next_tick, count - 1)][:count]
    return [tick + spec.jitter_for(row.schedule_id, tick) for tick in ticks]


def list_page(
    engine: Engine,
    *,
    workflow_name: str | None,
    user_id: str | None,
    paused: bool | None,
    search: str | None,
    after_id: str | None,
    limit: int,
) -> list[ScheduleRow]:
    with autocommit(engine) as tx:
        return list_schedules(
            tx,
            workflow_name=workflow_name,
            user_id=user_id,
            paused=paused,
            search=search,
            after_id=after_id,
            limit=limit,
        )


# --- Beat -----------------------------------------------------------------------------


def fire_due_schedules(engine: Engine, registry: Registry) -> list[FollowUp]:
    """Fire every due schedule (up to MOST_BATCHES batches); returns what to send."""
    follow_ups = []
    for _ in range(MOST_BATCHES):
        with transaction(engine) as tx:
            due = lock_due_schedules(tx, limit=BATCH)
            firing = _Firing(tx, registry)
            for schedule in due:
                firing.advance(schedule.row, schedule.last_status, schedule.now)
            follow_ups.append(firing.finish())
        if len(due) < BATCH:
            break
    return [f for f in follow_ups if f.dispatches or f.stop_task_ids]


class _Firing:
    """One transaction's ticks: what they record, and the executions they start."""

    def __init__(self, tx: Transaction, registry: Registry) -> None:
        self.tx = tx
        self.registry = registry
        self.run_ids: list[uuid.UUID] = []
        self.follow_ups: list[FollowUp] = []

    def advance(self, row: ScheduleRow, last_status: str | None, now: datetime) -> None:
        """Fire what is due of `row`: a buffered tick whose wait is over, then its ticks
        up to now; then save it."""
        spec = spec_of(row)
        running = last_status in OPEN_STATUSES
        if row.buffered and not running:
            (tick,) = buffered_ticks(self.tx, row.schedule_id, limit=1) or (None,)
            row.buffered -= 1
            if tick is not None:
                running = self._start(row, tick, SCHEDULED) or running
        window = timedelta(seconds=row.catchup_window_seconds)
        taken = missed = 0
        while (
            row.next_tick is not None
            and row.next_fire_at is not None
            and row.next_fire_at <= now
            and taken < MOST_TICKS_PER_POLL
        ):
            tick = row.next_tick
            if now - tick > window:
                missed += 1
                row.missed_ticks += 1
                row.last_missed_tick = tick
                after = tick if missed < MOST_MISSED_COUNTED else now - window
                _schedule_next(row, spec, after)
                continue
            taken += 1
            running = self.take_tick(row, tick, SCHEDULED, running, OverlapPolicy(row.overlap))
            _schedule_next(row, spec, tick)
        if missed:
            log.warning(
                "schedule %s: %d tick(s) older than its catch-up window (%ss) not fired,"
                " the last at %s",
                row.schedule_id,
                missed,
                row.catchup_window_seconds,
                row.last_missed_tick,
            )
        save_schedule(self.tx, row, touched=False)

    def take_tick(
        self, row: ScheduleRow, tick: datetime, kind: str, running: bool, policy: OverlapPolicy
    ) -> bool:
        """Do what `policy` says with one tick; returns whether an execution of the
        schedule is open after it."""
        if not running or policy is OverlapPolicy.ALLOW_ALL:
            _count_taken(row, kind)
            return self._start(row, tick, kind) or running
        last = row.last_execution_id
        if policy is OverlapPolicy.TERMINATE_OTHER:
            self._stop_last(row, terminate=True)
            _count_taken(row, kind)
            return self._start(row, tick, kind) or running
        if policy is OverlapPolicy.CANCEL_OTHER:
            self._stop_last(row, terminate=False)
        limit = BUFFER_ALL_LIMIT if policy is OverlapPolicy.BUFFER_ALL else 1
        if policy is not OverlapPolicy.SKIP and row.buffered < limit:
            _count_taken(row, kind)
            row.buffered += 1
            record_fire(
                self.tx, row.schedule_id, tick, kind, "BUFFERED", f"waits for {last} to close"
            )
        else:
            record_fire(self.tx, row.schedule_id, tick, kind, "SKIPPED", f"{last} was still open")
        return running

    def is_running(self, execution_id: str | None) -> bool:
        if execution_id is None:
            return False
        return execution_status(self.tx, execution_id) in OPEN_STATUSES

    def _start(self, row: ScheduleRow, tick: datetime, kind: str) -> bool:
        """Start the tick's execution; False if its workflow is not deployed here."""
        definition: WorkflowDefinition | None = self.registry.workflows.get(row.workflow_name)
        if definition is None:
            record_fire(
                self.tx,
                row.schedule_id,
                tick,
                kind,
                "FAILED",
                f"workflow {row.workflow_name!r} is not deployed (CHAINLINE_WORKFLOWS)",
            )
            return False
        new = new_execution(
            definition,
            execution_id=execution_id_for(row.schedule_id, tick),
            input_value=row.input,
            user_id=row.user_id,
            schedule_id=row.schedule_id,
        )
        send_insert_execution(self.tx, new)
        record_start(self.tx, row.schedule_id, tick, kind, new.execution_id, new.run_id)
        self.run_ids.append(new.run_id)
        row.last_execution_id = new.execution_id
        return True

    def _stop_last(self, row: ScheduleRow, *, terminate: bool) -> None:
        assert row.last_execution_id is not None
        try:
            if terminate:
                stopped = terminate_in(self.tx, row.last_execution_id, TERMINATED_BY_SCHEDULE)
            else:
                stopped = request_cancel(self.tx, row.last_execution_id)
        except (ExecutionClosed, ExecutionNotFound):
            return
        self.follow_ups.append(stopped)

    def finish(self) -> FollowUp:
        """What to send once the transaction commits: the first workflow task of each
        execution started (those whose id was free), and what stopping others needs."""
        started = runs_that_exist(self.tx, self.run_ids) if self.run_ids else []
        dispatches = [Dispatch(run_id) for run_id in started]
        stops: list[str] = []
        for follow_up in self.follow_ups:
            dispatches.extend(follow_up.dispatches)
            stops.extend(follow_up.stop_task_ids)
        return FollowUp("schedules fired", dispatches=tuple(dispatches), stop_task_ids=tuple(stops))

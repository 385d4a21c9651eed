"""Schedules fired by the engine's own calls against a real Postgres (no beat process,
no broker: each poll is taken by the test). A schedule is made due by moving its next
tick into the past, as a beat that was down would find it."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from app.engine import interactions, schedules
from app.engine.executions import insert_execution
from app.engine.schedules import NewSchedule, execution_id_for, fire_due_schedules
from app.errors import ScheduleExists, ScheduleNotFound
from app.model import events as ev
from app.model.schedule_spec import OverlapPolicy, SchedulePolicy, ScheduleSpec
from app.storage.executions import read_events, read_execution
from app.workflows.registry import Registry
from tests.support import schedule_fires

MINUTE = timedelta(minutes=1)


def _create(
    engine: Engine,
    *,
    overlap: OverlapPolicy = OverlapPolicy.SKIP,
    every: str = "PT1M",
    catchup_window_seconds: int = 365 * 24 * 3600,
    max_executions: int | None = None,
    pause_on_failure: bool = False,
    workflow_name: str = "sequential-sum",
    **spec: Any,
) -> str:
    schedule_id = f"sched-{uuid.uuid4().hex[:12]}"
    schedules.create_schedule(
        engine,
        NewSchedule(
            schedule_id=schedule_id,
            workflow_name=workflow_name,
            input_value={"values": [1, 2]},
            spec=ScheduleSpec.model_validate(spec or {"intervals": [{"every": every}]}),
            policy=SchedulePolicy(
                overlap=overlap,
                catchup_window_seconds=catchup_window_seconds,
                pause_on_failure=pause_on_failure,
            ),
            max_executions=max_executions,
            deployment_name=None,
            user_id="key-test",
        ),
    )
    return schedule_id


def _db_now(engine: Engine) -> datetime:
    with engine.connect() as conn:
        now: datetime = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    return now


def _rewind(engine: Engine, schedule_id: str, ticks_ago: int) -> datetime:
    """Make the schedule (every minute) due `ticks_ago` ticks back, as if beat had been
    down that long; returns that tick."""
    now = _db_now(engine)
    tick = now.replace(second=0, microsecond=0) - MINUTE * (ticks_ago - 1)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE schedules SET next_tick = :t, next_fire_at = :t WHERE schedule_id = :s"),
            {"t": tick, "s": schedule_id},
        )
    return tick


def _outcomes(engine: Engine, schedule_id: str) -> list[str]:
    return [fire[2] for fire in schedule_fires(engine, schedule_id)]


def _executions(engine: Engine, schedule_id: str) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT execution_id FROM executions WHERE schedule_id = :s"
                    " ORDER BY execution_id"
                ),
                {"s": schedule_id},
            ).scalars()
        )


def _row(engine: Engine, schedule_id: str) -> Any:
    return schedules.describe(engine, schedule_id).row


def _fire_only(engine: Engine, registry: Registry, schedule_id: str) -> None:
    """One poll, with every other test's schedules out of the way."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE schedules SET paused = true WHERE schedule_id <> :s AND NOT paused"
                " AND next_fire_at <= clock_timestamp()"
            ),
            {"s": schedule_id},
        )
    fire_due_schedules(engine, registry)


def test_a_new_schedule_is_due_at_its_first_tick_after_now(engine: Engine) -> None:
    before = _db_now(engine)
    schedule_id = _create(engine)
    view = schedules.describe(engine, schedule_id)
    assert view.row.next_tick == view.row.next_fire_at
    assert view.row.next_tick is not None
    assert before < view.row.next_tick <= before + MINUTE
    assert view.row.next_tick.second == 0 and view.row.next_tick.microsecond == 0
    assert len(view.future) == 10
    assert [b - a for a, b in zip(view.future, view.future[1:], strict=False)] == [MINUTE] * 9
    assert view.recent == []
    with pytest.raises(ScheduleExists):
        schedules.create_schedule(
            engine,
            NewSchedule(
                schedule_id=schedule_id,
                workflow_name="sequential-sum",
                input_value=None,
                spec=ScheduleSpec.model_validate({"cron_expressions": ["0 * * * *"]}),
                policy=SchedulePolicy(),
                max_executions=None,
                deployment_name=None,
                user_id=None,
            ),
        )


def test_a_due_tick_starts_one_execution_named_by_the_schedule_and_tick(
    engine: Engine, registry: Registry
) -> None:
    schedule_id = _create(engine)
    tick = _rewind(engine, schedule_id, 1)
    _fire_only(engine, registry, schedule_id)
    expected = execution_id_for(schedule_id, tick)
    assert schedule_fires(engine, schedule_id) == [(tick, "SCHEDULED", "STARTED", expected)]
    record = read_execution(engine, expected)
    assert record.schedule_id == schedule_id
    assert record.user_id == "key-test"
    started = read_events(engine, record.run_id)[0]
    assert started.event_type == ev.WORKFLOW_EXECUTION_STARTED
    assert started.attributes["input"]["value"] == {"values": [1, 2]}
    row = _row(engine, schedule_id)
    assert row.next_tick == tick + MINUTE
    assert row.last_execution_id == expected
    # Nothing more is due: another poll starts nothing.
    _fire_only(engine, registry, schedule_id)
    assert _executions(engine, schedule_id) == [expected]
    view = schedules.describe(engine, schedule_id)
    assert [(r.tick, r.execution_id) for r in view.recent] == [(tick, expected)]


def test_two_beats_polling_at_once_start_each_tick_once(engine: Engine, registry: Registry) -> None:
    ids = [_create(engine, overlap=OverlapPolicy.ALLOW_ALL) for _ in range(40)]
    for schedule_id in ids:
        _rewind(engine, schedule_id, 3)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def beat() -> None:
        try:
            barrier.wait()
            for _ in range(3):
                fire_due_schedules(engine, registry)
        except BaseException as exc:  # reported below
            errors.append(exc)

    beats = [threading.Thread(target=beat) for _ in range(2)]
    for thread in beats:
        thread.start()
    for thread in beats:
        thread.join(timeout=60)
    assert errors == []
    for schedule_id in ids:
        fires = schedule_fires(engine, schedule_id)
        assert [f[2] for f in fires] == ["STARTED"] * 3
        assert _executions(engine, schedule_id) == sorted(f[3] for f in fires if f[3])


def test_skip_records_a_tick_that_comes_while_the_last_execution_runs(
    engine: Engine, registry: Registry
) -> None:
    schedule_id = _create(engine, overlap=OverlapPolicy.SKIP)
    first = _rewind(engine, schedule_id, 2)
    _fire_only(engine, registry, schedule_id)
    fires = schedule_fires(engine, schedule_id)
    assert [(f[0], f[2]) for f in fires] == [(first, "STARTED"), (first + MINUTE, "SKIPPED")]
    assert len(_executions(engine, schedule_id)) == 1


def test_buffer_one_starts_one_waiting_tick_once_the_last_execution_closes(
    engine: Engine, registry: Registry
) -> None:
    schedule_id = _create(engine, overlap=OverlapPolicy.BUFFER_ONE)
    first = _rewind(engine, schedule_id, 3)
    _fire_only(engine, registry, schedule_id)
    assert _outcomes(engine, schedule_id) == ["STARTED", "BUFFERED", "SKIPPED"]
    assert _row(engine, schedule_id).buffered == 1
    # Still running: the buffered tick waits.
    _fire_only(engine, registry, schedule_id)
    assert len(_executions(engine, schedule_id)) == 1
    interactions.terminate(engine, execution_id_for(schedule_id, first))
    _fire_only(engine, registry, schedule_id)
    fires = schedule_fires(engine, schedule_id)
    assert [f[2] for f in fires] == ["STARTED", "STARTED", "SKIPPED"]
    assert fires[1][3] == execution_id_for(schedule_id, first + MINUTE)
    assert _row(engine, schedule_id).buffered == 0
    assert len(_executions(engine, schedule_id)) == 2


def test_buffer_all_keeps_every_tick_and_starts_them_one_after_another(
    engine: Engine, registry: Registry
) -> None:
    schedule_id = _create(engine, overlap=OverlapPolicy.BUFFER_ALL)
    first = _rewind(engine, schedule_id, 3)
    _fire_only(engine, registry, schedule_id)
    assert _outcomes(engine, schedule_id) == [
        "STARTED",
        "BUFFERED",
        "BUFFERED",
    ]
    for started in range(2):
        interactions.terminate(engine, execution_id_for(schedule_id, first + MINUTE * started))
        _fire_only(engine, registry, schedule_id)
    assert _outcomes(engine, schedule_id) == ["STARTED"] * 3
    assert _row(engine, schedule_id).buffered == 0


def test_terminate_other_ends_the_running_execution_and_starts_the_tick(
    engine: Engine, registry: Registry
) -> None:
    schedule_id = _create(engine, overlap=OverlapPolicy.TERMINATE_OTHER)
    first = _rewind(engine, schedule_id, 2)
    _fire_only(engine, registry, schedule_id)
    assert _outcomes(engine, schedule_id) == ["STARTED", "STARTED"]
    old = read_execution(engine, execution_id_for(schedule_id, first))
    new = read_execution(engine, execution_id_for(schedule_id, first + MINUTE))
    assert old.status.value == "TERMINATED"
    assert new.status.value == "RUNNING"


def test_cancel_other_asks_the_running_execution_to_cancel_and_buffers_the_tick(
    engine: Engine, registry: Registry
) -> None:
    schedule_id = _create(engine, overlap=OverlapPolicy.CANCEL_OTHER)
    first = _rewind(engine, schedule_id, 2)
    _fire_only(engine, registry, schedule_id)
    assert _outcomes(engine, schedule_id) == ["STARTED", "BUFFERED"]
    old = read_execution(engine, execution_id_for(schedule_id, first))
    assert ev.WORKFLOW_EXECUTION_CANCEL_REQUESTED in [
        e.event_type for e in read_events(engine, old.run_id)
    ]


def test_allow_all_starts_every_tick(engine: Engine, registry: Registry) -> None:
    schedule_id = _create(engine, overlap=OverlapPolicy.ALLOW_ALL)
    _rewind(engine, schedule_id, 3)
    _fire_only(engine, registry, schedule_id)
    assert len(_executions(engine, schedule_id)) == 3


def test_ticks_older_than_the_catchup_window_are_counted_not_fired(
    engine: Engine, registry: Registry
) -> None:
    schedule_id = _create(engine, overlap=OverlapPolicy.ALLOW_ALL, catchup_window_seconds=150)
    first = _rewind(engine, schedule_id, 6)
    _fire_only(engine, registry, schedule_id)
    fired = [f[0] for f in schedule_fires(engine, schedule_id)]
    row = _row(engine, schedule_id)
    # Six ticks were due, the last within the minute: those within 150 s are fired.
    assert row.missed_ticks + len(fired) == 6
    assert 2 <= len(fired) <= 3
    assert fired == [first + MINUTE * i for i in range(6 - len(fired), 6)]
    assert row.last_missed_tick == fired[0] - MINUTE


def test_max_executions_counts_down_and_exhausts_the_schedule(
    engine: Engine, registry: Registry
) -> None:
    schedule_id = _create(engine, overlap=OverlapPolicy.ALLOW_ALL, max_executions=2)
    assert len(schedules.describe(engine, schedule_id).future) == 2
    _rewind(engine, schedule_id, 3)
    _fire_only(engine, registry, schedule_id)
    row = _row(engine, schedule_id)
    assert len(_executions(engine, schedule_id)) == 2
    assert row.remaining_executions == 0
    assert row.next_tick is None
    assert schedules.describe(engine, schedule_id).future == []


def test_a_paused_schedule_fires_nothing_and_resumes_from_now(
    engine: Engine, registry: Registry
) -> None:
    schedule_id = _create(engine)
    _rewind(engine, schedule_id, 2)
    schedules.set_paused(engine, schedule_id, True, "maintenance")
    assert _row(engine, schedule_id).note == "maintenance"
    _fire_only(engine, registry, schedule_id)
    assert schedule_fires(engine, schedule_id) == []
    schedules.set_paused(engine, schedule_id, False, None)
    row = _row(engine, schedule_id)
    assert row.next_tick is not None and row.next_tick > _db_now(engine) - timedelta(seconds=1)
    _fire_only(engine, registry, schedule_id)
    assert schedule_fires(engine, schedule_id) == []


def test_pause_on_failure_pauses_when_an_execution_it_started_fails(
    engine: Engine, registry: Registry
) -> None:
    schedule_id = _create(engine, pause_on_failure=True)
    tick = _rewind(engine, schedule_id, 1)
    _fire_only(engine, registry, schedule_id)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE runs SET status = 'FAILED', end_time = clock_timestamp()"
                " WHERE execution_id = :e"
            ),
            {"e": execution_id_for(schedule_id, tick)},
        )
    row = _row(engine, schedule_id)
    assert row.paused
    assert "FAILED" in (row.note or "")
    # A schedule without it stays active.
    other = _create(engine)
    other_tick = _rewind(engine, other, 1)
    _fire_only(engine, registry, other)
    interactions.terminate(engine, execution_id_for(other, other_tick))
    assert not _row(engine, other).paused


def test_trigger_starts_one_now_by_the_overlap_given(engine: Engine, registry: Registry) -> None:
    schedule_id = _create(engine, overlap=OverlapPolicy.SKIP)
    schedules.trigger(engine, registry, schedule_id, None)
    assert [f[1:3] for f in schedule_fires(engine, schedule_id)] == [("TRIGGERED", "STARTED")]
    # The first still runs: SKIP records the second, ALLOW_ALL starts the third.
    schedules.trigger(engine, registry, schedule_id, None)
    schedules.trigger(engine, registry, schedule_id, OverlapPolicy.ALLOW_ALL)
    assert _outcomes(engine, schedule_id) == ["STARTED", "SKIPPED", "STARTED"]
    assert len(_executions(engine, schedule_id)) == 2
    with pytest.raises(ScheduleNotFound):
        schedules.trigger(engine, registry, "no-such-schedule", None)


def test_a_tick_of_a_workflow_not_deployed_is_recorded_failed(
    engine: Engine, registry: Registry
) -> None:
    schedule_id = _create(engine)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE schedules SET workflow_name = 'gone' WHERE schedule_id = :s"),
            {"s": schedule_id},
        )
    _rewind(engine, schedule_id, 1)
    _fire_only(engine, registry, schedule_id)
    assert _outcomes(engine, schedule_id) == ["FAILED"]
    assert _executions(engine, schedule_id) == []


def test_a_tick_whose_execution_id_is_taken_is_recorded_failed(
    engine: Engine, registry: Registry
) -> None:
    schedule_id = _create(engine)
    tick = _rewind(engine, schedule_id, 1)
    taken = execution_id_for(schedule_id, tick)
    definition = registry.workflow("sequential-sum")
    insert_execution(engine, definition, execution_id=taken, input_value={"values": [9]})
    _fire_only(engine, registry, schedule_id)
    assert _outcomes(engine, schedule_id) == ["FAILED"]
    assert read_execution(engine, taken).schedule_id is None


def test_a_change_is_validated_whole_and_counts_from_now(engine: Engine) -> None:
    schedule_id = _create(engine)
    schedules.change_schedule(
        engine,
        schedule_id,
        schedules.ScheduleChange(spec_fields={"cron_expressions": ["0 0 * * *"]}),
    )
    row = _row(engine, schedule_id)
    assert row.spec["cron_expressions"] == ["0 0 * * *"]
    assert row.spec["intervals"]  # kept
    assert row.revision == 2
    with pytest.raises(ValueError):
        schedules.change_schedule(
            engine,
            schedule_id,
            schedules.ScheduleChange(spec_fields={"intervals": None, "cron_expressions": None}),
        )
    assert _row(engine, schedule_id).revision == 2


def test_deleting_a_schedule_keeps_what_it_started(engine: Engine, registry: Registry) -> None:
    schedule_id = _create(engine)
    tick = _rewind(engine, schedule_id, 1)
    _fire_only(engine, registry, schedule_id)
    schedules.remove_schedule(engine, schedule_id)
    with pytest.raises(ScheduleNotFound):
        schedules.describe(engine, schedule_id)
    assert read_execution(engine, execution_id_for(schedule_id, tick)).schedule_id == schedule_id
    with pytest.raises(ScheduleNotFound):
        schedules.remove_schedule(engine, schedule_id)


def test_execution_ids_name_the_tick_to_the_microsecond() -> None:
    whole = datetime(2026, 12, 8, 9, 30, tzinfo=UTC)
    assert execution_id_for("nightly", whole) == "nightly-20261208T093000Z"
    assert (
        execution_id_for("nightly", whole.replace(microsecond=5))
        == "nightly-20261208T093000.000005Z"
    )

"""Schedules through the public `mistralai` SDK, on the Procfile's processes with the
settings users get, and two beat processes firing them at once: each tick starts one
execution, pause, trigger, resume and delete take effect at once, a beat that was
stopped catches up exactly once per missed tick within the window, and every refusal
changes nothing."""

from __future__ import annotations

import itertools
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from mistralai.client import Mistral
from mistralai.client.errors import HTTPValidationError, SDKError
from sqlalchemy import Engine, create_engine, text

from app.settings import normalize_database_url
from tests.acceptance.conftest import Stack, procfile
from tests.support import schedule_fires, wait_until

SECOND = timedelta(seconds=1)


@pytest.fixture(scope="module")
def second_beat(stack: Stack) -> Iterator[None]:
    """A second beat beside the stack's own, with its own schedule file."""
    stack.start("beat-2", procfile()["beat"], CHAINLINE_BEAT_SCHEDULE_FILE=str(stack.logs / "b2"))
    yield
    stack.stop_process("beat-2")


@pytest.fixture
def client(stack: Stack, second_beat: None) -> Mistral:
    return Mistral(api_key="test-key", server_url=stack.base_url)


@pytest.fixture(scope="module")
def db(stack: Stack) -> Iterator[Engine]:
    engine = create_engine(normalize_database_url(stack.env["CHAINLINE_DATABASE_URL"]))
    yield engine
    engine.dispose()


def _schedule_id() -> str:
    return f"sched-{uuid.uuid4().hex[:12]}"


def _every_second(client: Mistral, schedule_id: str, **policy: Any) -> None:
    client.workflows.schedules.schedule_workflow(
        workflow_identifier="sequential-sum",
        schedule_id=schedule_id,
        schedule={
            "input": {"values": [1, 2, 3]},
            "intervals": [{"every": "PT1S"}],
            "policy": {"overlap": 6, **policy},
        },
    )


def _started(db: Engine, schedule_id: str) -> list[str]:
    with db.connect() as conn:
        return list(
            conn.execute(
                text("SELECT execution_id FROM executions WHERE schedule_id = :s"),
                {"s": schedule_id},
            ).scalars()
        )


def _each_tick_once(db: Engine, schedule_id: str) -> list[datetime]:
    """The ticks fired, after checking that each started exactly one execution."""
    fires = schedule_fires(db, schedule_id)
    scheduled = [f for f in fires if f[1] == "SCHEDULED"]
    assert all(f[2] == "STARTED" for f in fires), fires
    assert sorted(_started(db, schedule_id)) == sorted(f[3] for f in fires if f[3])
    return [f[0] for f in scheduled]


def _stays(count: Callable[[], int], expected: int, seconds: float) -> None:
    """`count()` is `expected` throughout the next `seconds` (looked at every 0.1 s)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert count() == expected
        time.sleep(0.1)


def test_an_interval_schedule_fires_each_second_once_and_obeys_pause_trigger_resume_delete(
    client: Mistral, db: Engine
) -> None:
    schedules = client.workflows.schedules
    schedule_id = _schedule_id()
    _every_second(client, schedule_id)
    wait_until(lambda: len(_started(db, schedule_id)) >= 4, timeout=20, what="four ticks")
    ticks = _each_tick_once(db, schedule_id)
    assert [b - a for a, b in itertools.pairwise(ticks)] == [SECOND] * (len(ticks) - 1)

    shown = schedules.get_schedule(schedule_id=schedule_id)
    assert shown.workflow_name == "sequential-sum" and not shown.paused
    assert shown.input == {"values": [1, 2, 3]}
    recent = shown.recent_executions or []
    assert recent and [r.scheduled_at for r in recent] == sorted(r.scheduled_at for r in recent)
    for execution in recent:
        # Never before its tick, by Postgres's clock (how soon after is the bench's).
        assert execution.started_at >= execution.scheduled_at
        record = client.workflows.executions.get_workflow_execution(
            execution_id=execution.execution_id
        )
        assert record.workflow_name == "sequential-sum"
    history = client.workflows.executions.get_workflow_execution_history(
        execution_id=recent[-1].execution_id
    )
    assert history["events"][0]["schedule_id"] == schedule_id

    schedules.pause_schedule(schedule_id=schedule_id, note="maintenance")
    paused_at = len(_started(db, schedule_id))
    assert schedules.get_schedule(schedule_id=schedule_id).note == "maintenance"
    _stays(lambda: len(_started(db, schedule_id)), paused_at, 2.5)

    schedules.trigger_schedule(schedule_id=schedule_id)
    wait_until(
        lambda: len(_started(db, schedule_id)) == paused_at + 1, timeout=10, what="the trigger"
    )
    _stays(lambda: len(_started(db, schedule_id)), paused_at + 1, 1.5)
    assert [f[1] for f in schedule_fires(db, schedule_id)].count("TRIGGERED") == 1

    schedules.resume_schedule(schedule_id=schedule_id)
    wait_until(
        lambda: len(_started(db, schedule_id)) >= paused_at + 3, timeout=10, what="resumed ticks"
    )
    _each_tick_once(db, schedule_id)

    schedules.unschedule_workflow(schedule_id=schedule_id)
    deleted_at = len(_started(db, schedule_id))
    _stays(lambda: len(_started(db, schedule_id)), deleted_at, 2.5)
    with pytest.raises(SDKError) as gone:
        schedules.get_schedule(schedule_id=schedule_id)
    assert gone.value.status_code == 404


def test_a_cron_schedule_lists_its_next_cron_times_in_its_time_zone(client: Mistral) -> None:
    schedules = client.workflows.schedules
    created = schedules.schedule_workflow(
        workflow_identifier="sequential-sum",
        schedule={
            "input": {"values": [1]},
            "cron_expressions": ["30 9 * * 1-5"],
            "time_zone_name": "America/New_York",
        },
    )
    shown = schedules.get_schedule(schedule_id=created.schedule_id)
    assert shown.cron_expressions == ["30 9 * * 1-5"]
    assert shown.policy is not None and shown.policy.overlap == 1
    future = [f.scheduled_at for f in shown.future_executions or []]
    assert len(future) == 10 and future == sorted(future)
    for moment in future:
        local = moment.astimezone(ZoneInfo("America/New_York"))
        assert (local.hour, local.minute, local.second) == (9, 30, 0)
        assert local.weekday() < 5
    assert future[0] > datetime.now(UTC) - timedelta(seconds=5)

    schedules.update_schedule(
        schedule_id=created.schedule_id, schedule={"cron_expressions": ["0 0 1 * *"]}
    )
    changed = schedules.get_schedule(schedule_id=created.schedule_id)
    assert changed.time_zone_name == "America/New_York"
    for moment in [f.scheduled_at for f in changed.future_executions or []]:
        local = moment.astimezone(ZoneInfo("America/New_York"))
        assert (local.day, local.hour, local.minute) == (1, 0, 0)

    listed = schedules.get_schedules(workflow_name="sequential-sum", status="active")
    assert listed is not None
    assert created.schedule_id in [s.schedule_id for s in listed.result.schedules]
    schedules.unschedule_workflow(schedule_id=created.schedule_id)


def test_schedules_are_listed_by_page_and_filter(client: Mistral) -> None:
    schedules = client.workflows.schedules
    ids = sorted(_schedule_id() for _ in range(5))
    for schedule_id in ids:
        schedules.schedule_workflow(
            workflow_identifier="sequential-sum",
            schedule_id=schedule_id,
            schedule={"input": {"values": [1]}, "cron_expressions": ["0 0 * * *"]},
        )
    schedules.pause_schedule(schedule_id=ids[0])
    seen: list[str] = []
    page = schedules.get_schedules(workflow_name="sequential-sum", page_size=2)
    while page is not None:
        seen.extend(s.schedule_id for s in page.result.schedules)
        page = page.next()
    assert len(seen) == len(set(seen))
    assert set(ids) <= set(seen)
    paused = schedules.get_schedules(status="paused")
    assert paused is not None
    paused_ids = [s.schedule_id for s in paused.result.schedules]
    assert ids[0] in paused_ids and ids[1] not in paused_ids
    assert all(s.paused for s in paused.result.schedules)
    for schedule_id in ids:
        schedules.unschedule_workflow(schedule_id=schedule_id)


@pytest.mark.parametrize(
    "schedule",
    [
        {"input": {"values": [1]}},
        {"input": {"values": [1]}, "cron_expressions": ["61 * * * *"]},
        {"input": {"values": [1]}, "cron_expressions": ["* * * *"]},
        {"input": {"values": [1]}, "intervals": [{"every": "soon"}]},
        {"input": {"values": [1]}, "intervals": [{"every": "PT0S"}]},
        {"input": {"values": [1]}, "calendars": [{"hour": [{"start": 25}]}]},
        {"input": {"values": [1]}, "cron_expressions": ["0 * * * *"], "time_zone_name": "Mars/X"},
        {"input": {"values": "not a list"}, "cron_expressions": ["0 * * * *"]},
    ],
)
def test_invalid_specs_and_inputs_are_refused_with_422_and_change_nothing(
    client: Mistral, db: Engine, schedule: dict[str, Any]
) -> None:
    schedule_id = _schedule_id()
    with pytest.raises(HTTPValidationError):
        client.workflows.schedules.schedule_workflow(
            workflow_identifier="sequential-sum", schedule_id=schedule_id, schedule=schedule
        )
    with db.connect() as conn:
        found = conn.execute(
            text("SELECT count(*) FROM schedules WHERE schedule_id = :s"), {"s": schedule_id}
        ).scalar_one()
    assert found == 0


def test_unknown_workflows_ids_and_duplicates_get_the_documented_errors(
    client: Mistral, db: Engine
) -> None:
    schedules = client.workflows.schedules
    spec = {"input": {"values": [1]}, "cron_expressions": ["0 * * * *"]}
    with pytest.raises(SDKError) as unknown:
        schedules.schedule_workflow(workflow_identifier="no-such-workflow", schedule=spec)
    assert unknown.value.status_code == 404
    with pytest.raises(HTTPValidationError):
        schedules.schedule_workflow(schedule=spec)

    schedule_id = _schedule_id()
    schedules.schedule_workflow(
        workflow_identifier="sequential-sum", schedule_id=schedule_id, schedule=spec
    )
    with pytest.raises(SDKError) as duplicate:
        schedules.schedule_workflow(
            workflow_identifier="sequential-sum", schedule_id=schedule_id, schedule=spec
        )
    assert duplicate.value.status_code == 409
    with pytest.raises(HTTPValidationError):
        schedules.update_schedule(schedule_id=schedule_id, schedule={"cron_expressions": []})
    assert schedules.get_schedule(schedule_id=schedule_id).cron_expressions == ["0 * * * *"]

    missing = "no-such-schedule"
    calls: list[Callable[[], object]] = [
        lambda: schedules.get_schedule(schedule_id=missing),
        lambda: schedules.pause_schedule(schedule_id=missing),
        lambda: schedules.resume_schedule(schedule_id=missing),
        lambda: schedules.trigger_schedule(schedule_id=missing),
        lambda: schedules.unschedule_workflow(schedule_id=missing),
        lambda: schedules.update_schedule(schedule_id=missing, schedule={"input": None}),
    ]
    for call in calls:
        with pytest.raises(SDKError) as refused:
            call()
        assert refused.value.status_code == 404
    schedules.unschedule_workflow(schedule_id=schedule_id)


def test_beats_stopped_then_restarted_catch_up_each_missed_tick_once_within_the_window(
    stack: Stack, client: Mistral, db: Engine
) -> None:
    caught_up, narrow = _schedule_id(), _schedule_id()
    _every_second(client, caught_up)
    _every_second(client, narrow, catchup_window_seconds=1)
    wait_until(lambda: len(_started(db, caught_up)) >= 2, timeout=20, what="first ticks")
    # One is killed outright, mid-poll as likely as not: what it had not committed is
    # done again by whichever beat comes next.
    stack.stop_process("beat", signal.SIGKILL)
    stack.stop_process("beat-2")
    try:
        stopped_at = len(_started(db, caught_up))
        _stays(lambda: len(_started(db, caught_up)), stopped_at, 4)
    finally:
        stack.start("beat")
        stack.start(
            "beat-2", procfile()["beat"], CHAINLINE_BEAT_SCHEDULE_FILE=str(stack.logs / "b2")
        )
    wait_until(
        lambda: len(_started(db, caught_up)) >= stopped_at + 6, timeout=30, what="catching up"
    )
    client.workflows.schedules.pause_schedule(schedule_id=caught_up)
    client.workflows.schedules.pause_schedule(schedule_id=narrow)
    ticks = _each_tick_once(db, caught_up)
    # No gap: every tick from the first to the last fired, once.
    assert [b - a for a, b in itertools.pairwise(ticks)] == [SECOND] * (len(ticks) - 1)

    narrow_ticks = _each_tick_once(db, narrow)
    gaps = [b - a for a, b in itertools.pairwise(narrow_ticks)]
    assert max(gaps) >= 3 * SECOND
    # Chainline's own field, beside the SDK's (which leaves it out).
    missed = httpx.get(f"{stack.base_url}/v1/workflows/schedules/{narrow}").json()[
        "missed_catchup_window"
    ]
    assert isinstance(missed, int) and missed >= 2
    assert missed + len(narrow_ticks) - 1 == sum(g // SECOND for g in gaps)
    for schedule_id in (caught_up, narrow):
        client.workflows.schedules.unschedule_workflow(schedule_id=schedule_id)

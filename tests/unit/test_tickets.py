"""What a new activity's claim ticket carries, and what it leaves out. No I/O."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from app.engine import events as ev
from app.engine.activity_tasks import ticket_for
from app.engine.dispatch import ActivityDispatch, ClaimTicket, RunSnapshot
from app.engine.leases import TICKET_MAX_HISTORY_BYTES
from app.engine.replay import HistoryEvent


def _dispatch(result_size: int) -> ActivityDispatch:
    """Activity 2 of a run whose activity 1 returned `result_size` characters."""
    result = ev.payload("x" * result_size)
    history = (
        HistoryEvent(1, ev.WORKFLOW_EXECUTION_STARTED, {"input": ev.payload(None)}),
        HistoryEvent(2, ev.ACTIVITY_TASK_COMPLETED, {"seq": 1, "result": result}),
        HistoryEvent(3, ev.ACTIVITY_TASK_SCHEDULED, {"seq": 2, "activity_name": "step"}),
    )
    snapshot = RunSnapshot(
        workflow_name="steps",
        deadline=datetime(2026, 12, 1, 12, 30, 0, 123456, tzinfo=UTC),
        random_seed=2**62 + 1,
        last_event_id=3,
        processed_event_id=2,
        history=history,
    )
    return ActivityDispatch(uuid.uuid4(), 2, "step", 10.0, ClaimTicket("exec-1", {}, snapshot))


def test_a_ticket_carries_its_run_snapshot_as_json() -> None:
    ticket = ticket_for(_dispatch(10))

    assert ticket is not None
    run = json.loads(json.dumps(ticket))["run"]
    assert run == {
        "workflow_name": "steps",
        "deadline": "2026-12-01T12:30:00.123456+00:00",
        "random_seed": 2**62 + 1,
        "last_event_id": 3,
        "processed_event_id": 2,
        "history": [
            [1, ev.WORKFLOW_EXECUTION_STARTED, {"input": ev.payload(None)}],
            [2, ev.ACTIVITY_TASK_COMPLETED, {"seq": 1, "result": ev.payload("x" * 10)}],
            [3, ev.ACTIVITY_TASK_SCHEDULED, {"seq": 2, "activity_name": "step"}],
        ],
    }


def test_a_run_whose_history_outgrew_the_ticket_travels_without_its_snapshot() -> None:
    ticket = ticket_for(_dispatch(TICKET_MAX_HISTORY_BYTES))

    assert ticket is not None and ticket["execution_id"] == "exec-1"
    assert "run" not in ticket

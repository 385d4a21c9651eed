"""Driving runs to their end in-process, as workers would: every workflow task and
activity a follow-up asks for, one after another (no broker, no worker)."""

from __future__ import annotations

import uuid
from collections import deque

from sqlalchemy import Engine

from app.engine.activities.claim import Attempt, claim
from app.engine.activities.outcome import record_outcome
from app.engine.activities.run import run_attempt
from app.engine.dispatch import FollowUp
from app.engine.executions import insert_execution
from app.engine.workflow_tasks import run_workflow_task
from app.workflows.registry import Registry


def drive(engine: Engine, registry: Registry, first: FollowUp) -> None:
    """Do all the work follow-ups ask for, until none is left."""
    pending = deque([first])
    while pending:
        follow_up = pending.popleft()
        for dispatch in follow_up.dispatches:
            for activity in dispatch.activities:
                attempt = claim(
                    engine,
                    registry,
                    activity.run_id,
                    activity.seq,
                    activity_name=activity.activity_name,
                    task_id=uuid.uuid4().hex,
                )
                if isinstance(attempt, Attempt):
                    pending.append(record_outcome(engine, registry, attempt, run_attempt(attempt)))
            pending.append(run_workflow_task(engine, registry, dispatch.run_id))


def start_and_drive(engine: Engine, registry: Registry, name: str, value: object) -> str:
    """Start an execution of `name` and drive it (and all it starts) to the end."""
    execution_id = f"driven-{uuid.uuid4().hex}"
    record = insert_execution(
        engine, registry.workflow(name), execution_id=execution_id, input_value=value
    )
    drive(engine, registry, run_workflow_task(engine, registry, record.run_id))
    return execution_id

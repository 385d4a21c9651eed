"""Custom task events (workflows.task) reported by an activity: appended to its run's
history at once, under the run's lock, as any writer does; nothing for a closed run."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy import Engine

from app.storage.runs import Step, lock_run_state, write_step
from app.storage.transactions import transaction

log = logging.getLogger(__name__)


def record_task_event(
    engine: Engine, run_id: uuid.UUID, event_type: str, attributes: dict[str, Any]
) -> None:
    with transaction(engine) as tx:
        state = lock_run_state(tx, run_id)
        if state is None or not state.run.is_open:
            log.info("run %s is closed: its task event %s is not recorded", run_id, event_type)
            return
        step = Step(run=state.run)
        step.record(event_type, attributes)
        write_step(tx, step)

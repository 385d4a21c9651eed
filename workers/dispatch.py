"""Sends the engine's dispatches as Celery messages.

An activity goes out as `chain(activity, workflow_task)`; activities started together
go out as `chord(group(activities), workflow_task)`. Either way the workflow task runs
once the activity work is done, so an execution is a Celery chain that grows as it runs.
"""

from __future__ import annotations

import logging

from celery import chain, chord
from celery.canvas import Signature

from app.engine.dispatch import ActivityDispatch, Dispatch
from workers.celery_app import WORKFLOW_TASK, activity_task_name, app

log = logging.getLogger(__name__)

# Celery's limits cover recording the outcome too, so the soft one leaves it a moment;
# the hard one (the kill) lands well before the lease expires (LEASE_GRACE).
SOFT_LIMIT_MARGIN = 1.0
HARD_LIMIT_MARGIN = 5.0


def activity_signature(activity: ActivityDispatch, *, keep_result: bool) -> Signature:
    # Only a chord's bookkeeping reads activity task results; a chain needs none.
    return app.signature(
        activity_task_name(activity.activity_name),
        args=[str(activity.run_id), activity.seq],
        immutable=True,
        soft_time_limit=activity.start_to_close_seconds + SOFT_LIMIT_MARGIN,
        time_limit=activity.start_to_close_seconds + HARD_LIMIT_MARGIN,
        ignore_result=not keep_result,
    )


def workflow_task_signature(dispatch: Dispatch) -> Signature:
    return app.signature(WORKFLOW_TASK, args=[str(dispatch.run_id)], immutable=True)


class CeleryDispatcher:
    def send(self, dispatches: list[Dispatch]) -> None:
        for dispatch in dispatches:
            try:
                self._send_one(dispatch)
            except Exception:
                # The run stays marked in Postgres; the sweeper sends it again.
                log.exception("could not publish work for run %s", dispatch.run_id)

    def _send_one(self, dispatch: Dispatch) -> None:
        callback = workflow_task_signature(dispatch)
        if not dispatch.activities:
            callback.apply_async()
        elif len(dispatch.activities) == 1:
            chain(
                activity_signature(dispatch.activities[0], keep_result=False), callback
            ).apply_async()
        else:
            group = [activity_signature(a, keep_result=True) for a in dispatch.activities]
            chord(group, callback).apply_async()


dispatcher = CeleryDispatcher()

"""Sends the engine's dispatches as Celery messages.

An activity goes out as `chain(activity, workflow_task)`; activities started together
go out as `chord(group(activities), workflow_task)`. Either way the workflow task runs
once the activity work is done, so an execution is a Celery chain that grows as it runs.
A just-scheduled activity's message carries its claim ticket (the `ticket` keyword), so
that its first attempt starts without reading Postgres (app/engine/leases.py).

Every activity of every execution is published here, so publishing is on the hot path:
messages go through this module's own producer pool (see `Publisher`), and a chain is
handed to Celery as the message's `chain` field instead of being built as a canvas.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery, chord
from celery.canvas import Signature
from kombu import pools
from kombu.exceptions import BatchPublishError  # type: ignore[attr-defined]  # (kombu 5.7; the stubs are older)

from app.engine.activity_tasks import ticket_for
from app.engine.dispatch import ActivityDispatch, Dispatch
from workers.celery_app import WORKFLOW_TASK, activity_task_name, create_celery_app, settings

log = logging.getLogger(__name__)

# Celery's limits cover recording the outcome too, so the soft one leaves it a moment;
# the hard one (the kill) lands well before the lease expires (LEASE_GRACE).
SOFT_LIMIT_MARGIN = 1.0
HARD_LIMIT_MARGIN = 5.0


class Publisher:
    """A producer pool of this process's own, made on first use after each fork.

    Producers are pooled, so threads (the API's) never share one.
    """

    def __init__(self, celery_app: Celery) -> None:
        self.app = celery_app
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._producers: Any = None

    @contextmanager
    def producer(self) -> Iterator[Any]:
        with self._pool().acquire(block=True) as producer:
            yield producer

    def close(self) -> None:
        """Close this process's broker connections (for a publisher no longer used)."""
        with self._lock:
            if self._producers is not None and self._pid == os.getpid():
                self._producers.force_close_all()
                self._producers.connections.force_close_all()
            self._producers, self._pid = None, None

    def _pool(self) -> Any:
        with self._lock:
            if self._pid != os.getpid():
                self._producers = self._new_pool()
                self._pid = os.getpid()
            return self._producers

    def _new_pool(self) -> Any:
        conf = self.app.conf
        connections = self.app.connection_for_write()
        limit = conf.broker_pool_limit
        return pools.ProducerPool(
            connections.Pool(limit=limit), limit=limit, Producer=self.app.amqp.Producer
        )


def activity_options(activity: ActivityDispatch, *, keep_result: bool) -> dict[str, Any]:
    return {
        "soft_time_limit": activity.start_to_close_seconds + SOFT_LIMIT_MARGIN,
        "time_limit": activity.start_to_close_seconds + HARD_LIMIT_MARGIN,
        # Only a chord's bookkeeping reads activity task results; a chain needs none.
        "ignore_result": not keep_result,
    }


class CeleryDispatcher:
    """Publishes dispatches, each in one round trip to the broker."""

    def __init__(self, celery_app: Celery) -> None:
        self.app = celery_app
        self.publisher = Publisher(celery_app)

    def send(self, dispatches: list[Dispatch]) -> None:
        for dispatch in dispatches:
            try:
                self._send_one(dispatch)
            except Exception:
                # The run stays marked in Postgres; the sweeper sends it again.
                log.exception("could not publish work for run %s", dispatch.run_id)

    def _send_one(self, dispatch: Dispatch) -> None:
        with self.publisher.producer() as producer:
            try:
                # The messages and their task-sent events in one round trip.
                with producer.batch():
                    self._publish(dispatch, producer)
            except BatchPublishError:
                # kombu does not replay a batch whose reply was lost (a dropped
                # connection, say): sent again one message at a time, with kombu's
                # retries. Should the batch have landed after all, the duplicate's
                # claim finds the attempt taken.
                log.warning("batched publish for run %s failed; publishing again", dispatch.run_id)
                self._publish(dispatch, producer)

    def _publish(self, dispatch: Dispatch, producer: Any) -> None:
        callback = self.app.signature(WORKFLOW_TASK, args=[str(dispatch.run_id)], immutable=True)
        if not dispatch.activities:
            callback.apply_async(producer=producer)
        elif len(dispatch.activities) == 1:
            self._send_chain(dispatch.activities[0], callback, producer)
        else:
            group = [self._chord_member(a) for a in dispatch.activities]
            chord(group, callback).apply_async(producer=producer)

    def _chord_member(self, activity: ActivityDispatch) -> Signature:
        kwargs = _activity_kwargs(activity)
        return self.app.signature(
            activity_task_name(activity.activity_name),
            args=_activity_args(activity),
            kwargs=kwargs,
            immutable=True,
            kwargsrepr=_kwargs_shown(kwargs),
            **activity_options(activity, keep_result=True),
        )

    def _send_chain(self, activity: ActivityDispatch, callback: Signature, producer: Any) -> None:
        # What `chain(activity, callback).apply_async()` sends, without building and
        # freezing a canvas for two immutable steps: the message's `chain` field lists
        # what runs after it.
        args, kwargs = _activity_args(activity), _activity_kwargs(activity)
        self.app.send_task(
            activity_task_name(activity.activity_name),
            args=args,
            kwargs=kwargs,
            chain=[dict(callback)],
            producer=producer,
            # Given, so Celery need not build a safe repr of the arguments.
            argsrepr=repr(args),
            kwargsrepr=_kwargs_shown(kwargs),
            **activity_options(activity, keep_result=False),
        )


def _activity_args(activity: ActivityDispatch) -> list[Any]:
    return [str(activity.run_id), activity.seq]


def _activity_kwargs(activity: ActivityDispatch) -> dict[str, Any]:
    ticket = ticket_for(activity)
    return {} if ticket is None else {"ticket": ticket}


def _kwargs_shown(kwargs: dict[str, Any]) -> str:
    """The keywords as task events (Flower) and worker logs show them: the claim
    ticket without the activity's input and the run's snapshot, which history holds
    and may be sensitive."""
    ticket = kwargs.get("ticket")
    if ticket is None:
        return repr(kwargs)
    return repr({"ticket": {k: v for k, v in ticket.items() if k not in HIDDEN_TICKET_KEYS}})


HIDDEN_TICKET_KEYS = frozenset({"input", "run"})


# An app of its own: its result backend never subscribes to what it publishes.
dispatcher = CeleryDispatcher(create_celery_app(settings, publish_only=True))

"""Sends the engine's follow-ups: dispatches as Celery messages, stops as revocations.

An activity goes out as `chain(activity, workflow_task)`; activities started together
go out as `chord(group(activities), workflow_task)`. Either way the workflow task runs
once the activity work is done, so an execution is a Celery chain that grows as it runs
(the workflow task usually runs inline with the last outcome, and the chained one then
finds nothing to do). A lone workflow task goes out as one message.

Every activity of every execution is published here, so publishing is on the hot path:
messages go through this module's own producer pool (`Publisher`), a message and its
task-sent event travel in one round trip, and a chain is handed to Celery as the
message's `chain` field instead of being built as a canvas. A publish that fails is
logged and left to the sweeper, which finds the work waiting in Postgres.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from celery import Celery, chord
from celery.canvas import Signature
from kombu import pools
from kombu.exceptions import BatchPublishError  # type: ignore[attr-defined]  # (kombu 5.7; the stubs are older)

from app.engine.dispatch import ActivityDispatch, Dispatch, FollowUp
from app.messaging.broker import (
    TIME_LIMIT_MARGIN_SECONDS,
    WORKFLOW_TASK,
    activity_task_name,
    create_celery_app,
)
from app.settings import get_settings

log = logging.getLogger(__name__)


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
        # The attempt's own deadline is enforced around the user's code (time_limits.py);
        # this kill is for a process stuck where nothing else can reach it.
        "time_limit": activity.start_to_close_seconds + TIME_LIMIT_MARGIN_SECONDS,
        # Only a chord's bookkeeping reads activity task results; a chain needs none.
        "ignore_result": not keep_result,
    }


class CeleryDispatcher:
    """Publishes dispatches, each in one round trip to the broker, and stops attempts."""

    def __init__(self, celery_app: Celery) -> None:
        self.app = celery_app
        self.publisher = Publisher(celery_app)

    def send(self, follow_ups: Iterable[FollowUp]) -> None:
        for follow_up in follow_ups:
            for dispatch in follow_up.dispatches:
                try:
                    self._send_one(dispatch)
                except Exception:
                    # The work stays recorded in Postgres; the sweeper sends it again.
                    log.exception("could not publish work for run %s", dispatch.run_id)
            if follow_up.stop_task_ids:
                self.stop(follow_up.stop_task_ids)

    def stop(self, task_ids: Iterable[str]) -> None:
        """Stop the attempts these tasks run, wherever they run: their pool processes
        are terminated and replaced. Whatever they would return is discarded anyway
        (their rows no longer name them), so a revocation lost with the broker costs
        only the pool slot until the attempt's own time limit."""
        ids = list(task_ids)
        try:
            self.app.control.revoke(ids, terminate=True, signal="SIGTERM")
        except Exception:
            log.exception("could not revoke tasks %s", ids)

    def _send_one(self, dispatch: Dispatch) -> None:
        with self.publisher.producer() as producer:
            try:
                # The messages and their task-sent events in one round trip.
                with producer.batch():
                    self._publish(dispatch, producer)
            except BatchPublishError:
                # kombu does not replay a batch whose reply was lost (a dropped
                # connection, say): sent again one message at a time, with kombu's
                # retries. Should the batch have landed after all, the duplicate finds
                # its work claimed or done.
                log.warning("batched publish for run %s failed; publishing again", dispatch.run_id)
                self._publish(dispatch, producer)

    def _publish(self, dispatch: Dispatch, producer: Any) -> None:
        callback = self.app.signature(WORKFLOW_TASK, args=[str(dispatch.run_id)], immutable=True)
        options: dict[str, Any] = {"producer": producer}
        if dispatch.countdown > 0:
            options["countdown"] = dispatch.countdown
        if not dispatch.activities:
            callback.apply_async(**options)
        elif len(dispatch.activities) == 1:
            self._send_chain(dispatch.activities[0], callback, options)
        else:
            group = [self._chord_member(a) for a in dispatch.activities]
            chord(group, callback).apply_async(**options)

    def _chord_member(self, activity: ActivityDispatch) -> Signature:
        return self.app.signature(
            activity_task_name(activity.activity_name),
            args=[str(activity.run_id), activity.seq],
            immutable=True,
            **activity_options(activity, keep_result=True),
        )

    def _send_chain(
        self, activity: ActivityDispatch, callback: Signature, options: dict[str, Any]
    ) -> None:
        # What `chain(activity, callback).apply_async()` sends, without building and
        # freezing a canvas for two immutable steps: the message's `chain` field lists
        # what runs after it.
        args = [str(activity.run_id), activity.seq]
        self.app.send_task(
            activity_task_name(activity.activity_name),
            args=args,
            chain=[dict(callback)],
            # Given, so Celery need not build a safe repr of the arguments.
            argsrepr=repr(args),
            kwargsrepr="{}",
            **options,
            **activity_options(activity, keep_result=False),
        )


@lru_cache(maxsize=1)
def get_dispatcher() -> CeleryDispatcher:
    """This process's dispatcher, on a Celery app of its own: its result backend never
    subscribes to what it publishes (transports.PublishingRedisBackend)."""
    return CeleryDispatcher(create_celery_app(get_settings(), publish_only=True))

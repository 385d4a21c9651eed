"""How Chainline's processes talk to the broker, trimmed of per-message costs.

Every activity is a Celery message, so what kombu and Celery spend per message is
spent per activity: on a small machine the worker's main process, which receives,
acknowledges and reports on every task, costs as much CPU as running the task.
Two costs go here: a new redis-py client for every command kombu sends to Redis
(`ClientKeepingTransport`), and a round trip to publish the monitoring events of
every task or two on their own, on any broker (`EventBatchingConsumer`). And one
leak: the Redis subscriptions a chord's publisher is left with (`PublishingRedisBackend`).
"""

from __future__ import annotations

import time
from typing import Any

from celery.backends.redis import RedisBackend
from celery.worker.consumer import Consumer
from kombu.transport import redis as kombu_redis
from vine import promise

from app.settings import REDIS_BROKER_SCHEMES


class ClientKeepingChannel(kombu_redis.Channel):
    """A Redis channel that keeps one redis-py client for the commands it sends.

    kombu builds a new client for each command it sends outside the receiving loop:
    each message published, its task-sent event, each acknowledgement. Building one
    costs about 0.15 ms of CPU, a third of what a publish costs. A client holds no
    connection of its own (it borrows from the channel's pool per command), so one
    can serve them all. Receiving keeps kombu's own asynchronous client.
    """

    _kept_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            # kombu's stubs leave out this private method, the one to override.
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        if self._kept_client is None:
            self._kept_client = super()._create_client()  # type: ignore[misc]
        return self._kept_client


class ClientKeepingTransport(kombu_redis.Transport):
    Channel = ClientKeepingChannel


class PublishingRedisBackend(RedisBackend):
    """The Redis result backend of an app that publishes work and never waits for it.

    Publishing a chord registers each member's result as pending, for a caller that
    may wait on the group, and on Redis that subscribes the publisher to the member's
    result channel. Chainline's dispatcher never waits (the chord's callback is the
    workflow task), and Celery drops those subscriptions only when the results are
    garbage collected, which the chord's reference cycles put off indefinitely: an API
    or worker process gathered one subscription per fan-out activity it published,
    and with it every result published to them, unread. Nothing is registered here.
    Chord bookkeeping (`apply_chord`) and storing results are the stock backend's.
    """

    def add_pending_result(
        self, result: Any, weak: bool = False, start_drainer: bool = True
    ) -> Any:
        return result

    def add_pending_results(self, results: Any, weak: bool = False) -> Any:
        return results


PUBLISHING_REDIS_BACKEND = f"{__name__}:{PublishingRedisBackend.__name__}"


def broker_transport(broker_url: str) -> type[Any] | None:
    """The kombu transport for this broker: ours on Redis, the URL's own otherwise."""
    return ClientKeepingTransport if broker_url.startswith(REDIS_BROKER_SCHEMES) else None


class EventBatchingConsumer(Consumer):
    """Celery's worker consumer, publishing task events in batches.

    Celery buffers a worker's task events (received, started, succeeded...), but
    publishes the buffer on the event loop's next turn: with a few tasks in flight,
    one publish, and a blocking round trip, for every event or two. Here the buffer
    is published `chainline_event_flush_seconds` (CHAINLINE_EVENT_FLUSH_SECONDS)
    after its first event, at once when Celery's buffer limit (24 events) is
    reached, and when the worker shuts down. Events are for monitoring: Flower shows
    tasks that much later, at most, and nothing in Chainline waits for them.
    """

    hub: Any  # celery-types leaves it out
    event_dispatcher: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # When the scheduled publish of the buffered events is due; None: none scheduled.
        self._event_flush_due: float | None = None
        # One object for every event, so the loop's ready set holds it at most once.
        self._schedule_event_flush_promise = promise(self._schedule_event_flush)

    def on_send_event_buffered(self) -> None:  # type: ignore[override]  # (the stubs say it returns a callable)
        if self.hub is None:
            super().on_send_event_buffered()
            return
        # Events may be sent from other threads: the timer is set on the loop's own.
        self.hub.call_soon(self._schedule_event_flush_promise)

    def _schedule_event_flush(self) -> None:
        now = time.monotonic()
        due = self._event_flush_due
        # A publish long overdue was lost with its timer: schedule another.
        if due is not None and now < due + 1.0:
            return
        delay = float(self.app.conf.chainline_event_flush_seconds)
        self._event_flush_due = now + delay
        self.hub.call_later(delay, self._flush_scheduled_events)

    def _flush_scheduled_events(self) -> None:
        self._event_flush_due = None
        self._publish_buffered_events()

    def shutdown(self) -> None:
        # The last tasks' events are still buffered.
        self._publish_buffered_events()
        super().shutdown()

    def _publish_buffered_events(self) -> None:
        if self.event_dispatcher is not None:
            self.event_dispatcher.flush()

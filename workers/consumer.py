"""The worker's consumer: Celery's, publishing the monitoring events of tasks in batches.

Every activity is a Celery message, and a worker's main process receives, acknowledges
and reports on each: on a small machine it costs as much CPU as running the task.
Celery publishes a worker's task events one or two at a time, a broker round trip each;
publishing them in batches removes most of that cost (on any broker).
"""

from __future__ import annotations

import time
from typing import Any

from celery.worker.consumer import Consumer
from vine import promise


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

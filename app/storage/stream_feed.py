"""One thread per API process that feeds its live streams: it numbers ready events (the
sequencer, app/storage/streams.py; whichever process holds the lock does it), reads the
events numbered after the last it saw, and hands each batch to every subscriber. It
wakes on the sequencer's NOTIFY, or every SEQUENCE_SECONDS (SEQUENCE_BUSY_SECONDS while
events flow) to number events itself, so an event reaches a stream within about that
long of committing, from any process.

Subscribers get every new event and keep those they want: a stream first reads what it
missed from Postgres, then takes the feed from where that reading ended.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy import Engine

from app.storage.background import BackgroundThread
from app.storage.queries import QUERIES
from app.storage.streams import (
    StreamedEvent,
    last_position,
    number_new_events,
    read_stream,
)
from app.storage.transactions import autocommit, transaction

log = logging.getLogger(__name__)

SEQUENCE_SECONDS = 0.02
# While events flow, sooner: the next ones are likely on their way.
SEQUENCE_BUSY_SECONDS = 0.005
READ_BATCH = 1000

Deliver = Callable[[list[StreamedEvent]], None]


class StreamSubscription:
    def __init__(self, feed: StreamFeed, deliver: Deliver) -> None:
        self._feed = feed
        self.deliver = deliver

    def cancel(self) -> None:
        self._feed._unsubscribe(self)


class StreamFeed(BackgroundThread):
    def __init__(self, engine: Engine, dsn: str) -> None:
        super().__init__("chainline-stream-feed")
        self._engine = engine
        self._dsn = dsn
        self._subscribers: set[StreamSubscription] = set()
        # The last position handed to subscribers; None until the thread has started.
        self._position: int | None = None
        self._started = threading.Event()

    def subscribe(self, deliver: Deliver) -> tuple[StreamSubscription, int]:
        """Call `deliver` (from the feed's thread) with each batch of new events; returns
        the subscription and the position the feed has handed out up to, after which
        every event comes through `deliver`."""
        self._ensure_started()
        self._started.wait(timeout=5.0)
        subscription = StreamSubscription(self, deliver)
        with self._lock:
            self._subscribers.add(subscription)
            position = self._position
        if position is None:  # Postgres out of reach so far: start from what it says
            with autocommit(self._engine) as tx:
                position = last_position(tx)
        return subscription, position

    def _unsubscribe(self, subscription: StreamSubscription) -> None:
        with self._lock:
            self._subscribers.discard(subscription)

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True) as conn:
                    conn.execute(QUERIES["listen_for_stream"].text.encode())
                    if self._position is None:
                        with autocommit(self._engine) as tx:
                            self._position = last_position(tx)
                    self._started.set()
                    while not self._closed.is_set():
                        busy = self._number_and_deliver()
                        wait = SEQUENCE_BUSY_SECONDS if busy else SEQUENCE_SECONDS
                        for _ in conn.notifies(timeout=wait, stop_after=1):
                            pass
            except Exception:
                if self._closed.is_set():
                    return
                log.warning("the stream feed lost Postgres; reconnecting", exc_info=True)
                self._started.set()
                self._closed.wait(1.0)

    def _number_and_deliver(self) -> bool:
        """Number what is ready, and hand out what is new; whether there was any."""
        with transaction(self._engine) as tx:
            number_new_events(tx)
        assert self._position is not None
        delivered = False
        while True:
            with autocommit(self._engine) as tx:
                batch = read_stream(tx, self._position, READ_BATCH)
            if not batch:
                return delivered
            delivered = True
            with self._lock:
                self._position = batch[-1].position
                subscribers = list(self._subscribers)
            for subscription in subscribers:
                try:
                    subscription.deliver(batch)
                except Exception:
                    log.exception("a stream subscriber failed on a batch")
            if len(batch) < READ_BATCH:
                return delivered

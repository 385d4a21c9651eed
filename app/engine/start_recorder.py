"""Writes a leased attempt's start to history once it has run for a while.

A leased attempt (leases.py) records ACTIVITY_TASK_STARTED with its outcome. So that
history shows long attempts while they run, one thread per worker process writes the
start of any attempt still running `delay` seconds after it began. Attempts that end
sooner, nearly all of them, cost the thread nothing but a heap entry.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Engine

from app.engine.activity_tasks import Attempt, record_attempt_started

log = logging.getLogger(__name__)


@dataclass(order=True)
class _Watch:
    due: float
    order: int
    engine: Engine = field(compare=False)
    attempt: Attempt = field(compare=False)
    # waiting -> writing -> done, or waiting -> cancelled
    state: str = field(default="waiting", compare=False)


class StartRecorder:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._order = itertools.count()
        self._starting = threading.Lock()
        self._pid = -1
        self._changed = threading.Condition()
        self._due: list[_Watch] = []

    @contextmanager
    def watching(self, engine: Engine, attempt: Attempt) -> Iterator[None]:
        """Around running a leased attempt; when it ends, a start being written has
        committed (the outcome must find it) and no start is written after."""
        if attempt.lease is None:
            yield
            return
        watch = _Watch(time.monotonic() + self.delay, next(self._order), engine, attempt)
        self._start_thread_in_this_process()
        with self._changed:
            heapq.heappush(self._due, watch)
            if self._due[0] is watch:
                self._changed.notify()
        try:
            yield
        finally:
            with self._changed:
                if watch.state == "waiting":
                    watch.state = "cancelled"
                while watch.state == "writing":
                    self._changed.wait()

    def _start_thread_in_this_process(self) -> None:
        # A forked pool process inherits this object but not the parent's thread.
        if self._pid == os.getpid():
            return
        with self._starting:
            if self._pid == os.getpid():
                return
            self._changed = threading.Condition()
            self._due = []
            threading.Thread(target=self._run, name="chainline-start-recorder", daemon=True).start()
            self._pid = os.getpid()

    def _run(self) -> None:
        while True:
            watch = self._next_due()
            try:
                record_attempt_started(watch.engine, watch.attempt)
            except Exception:
                # Not fatal: the outcome records the start as well.
                log.exception("could not record the start of run %s", watch.attempt.run_id)
            with self._changed:
                watch.state = "done"
                self._changed.notify_all()

    def _next_due(self) -> _Watch:
        with self._changed:
            while True:
                while self._due and self._due[0].state == "cancelled":
                    heapq.heappop(self._due)
                if not self._due:
                    self._changed.wait()
                    continue
                wait = self._due[0].due - time.monotonic()
                if wait > 0:
                    self._changed.wait(wait)
                    continue
                watch = heapq.heappop(self._due)
                watch.state = "writing"
                return watch

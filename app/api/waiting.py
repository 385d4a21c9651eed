"""wait_for_result: waiting for an execution to close on the event loop, no thread each.

A waiter subscribes to the execution's closing (app/storage/closings.py) before its work
goes out, then sleeps on an asyncio event that the listener's NOTIFY sets. Every few
seconds it checks whether its client went away (then it stops) and, in case a
notification was lost while the listener reconnected, whether the execution closed. The
number of waiters per API process is capped: beyond it a request is refused before it
starts anything, so that waiting can never take the API down.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from enum import Enum
from functools import lru_cache

from starlette.concurrency import run_in_threadpool

from app.settings import get_settings, libpq_url
from app.storage.closings import ClosedListener

# How often a waiter looks at its client, and how often at Postgres, while it waits.
CLIENT_CHECK_SECONDS = 1.0
RECHECK_SECONDS = 5.0


class Waited(Enum):
    CLOSED = "closed"
    TIMED_OUT = "timed out"
    CLIENT_GONE = "client gone"


class Waiters:
    """The waiting requests of one API process (used from its event loop only)."""

    def __init__(self, listener: ClosedListener, limit: int) -> None:
        self.listener = listener
        self.limit = limit
        self.active = 0

    def reserve(self) -> bool:
        """Take a waiter's place; False when all are taken."""
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1

    @asynccontextmanager
    async def subscribed(self, execution_id: str) -> AsyncIterator[Closing]:
        """Hear of the execution's closing from now on, while the block runs."""
        loop = asyncio.get_running_loop()
        closed = asyncio.Event()

        def wake() -> None:  # from the listener's thread
            loop.call_soon_threadsafe(closed.set)

        subscription = self.listener.subscribe(execution_id, wake)
        try:
            # A new listener's LISTEN must be on before the work goes out.
            if not self.listener.is_listening():
                await run_in_threadpool(self.listener.wait_listening)
            yield Closing(closed)
        finally:
            subscription.cancel()


class Closing:
    def __init__(self, closed: asyncio.Event) -> None:
        self._closed = closed

    async def wait(
        self,
        timeout: float,
        *,
        is_closed: Callable[[], Awaitable[bool]],
        client_gone: Callable[[], Awaitable[bool]],
    ) -> Waited:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_recheck = loop.time() + RECHECK_SECONDS
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return Waited.TIMED_OUT
            try:
                await asyncio.wait_for(self._closed.wait(), min(remaining, CLIENT_CHECK_SECONDS))
                return Waited.CLOSED
            except TimeoutError:
                pass
            if await client_gone():
                return Waited.CLIENT_GONE
            if loop.time() >= next_recheck:
                next_recheck = loop.time() + RECHECK_SECONDS
                if await is_closed():
                    return Waited.CLOSED


@lru_cache(maxsize=1)
def waiters() -> Waiters:
    """This API process's waiters: those of wait_for_result and of updates, one cap."""
    settings = get_settings()
    listener = ClosedListener(libpq_url(settings.database_url))
    return Waiters(listener, settings.max_waiting_requests)

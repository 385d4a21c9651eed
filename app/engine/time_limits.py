"""Time limits on code Chainline calls but does not control: activities and workflow code.

`Limit.enforced` arms a timer (SIGALRM) that raises into whatever runs when it expires, the
way Celery's soft time limit does, but around exactly the user's code and nothing of
Chainline's, so that recording an outcome is never interrupted. The exceptions derive
from BaseException, as asyncio.CancelledError does, so that a broad `except Exception`
in user code does not swallow them. Signals reach only the main thread: elsewhere (a
threads pool) the limit is not armed, and the deadlines Postgres keeps still hold, the
late result being discarded.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType


class TimeLimitExceeded(BaseException):
    """User code ran past the time it was given."""


class StartToCloseTimeout(TimeLimitExceeded):
    """The activity attempt ran past its start_to_close_timeout."""


class WorkflowTaskTimeout(TimeLimitExceeded):
    """Workflow code ran past the workflow task's time limit."""


@dataclass
class Limit:
    """A time limit on a block of user code: `with Limit(5).enforced(Timeout): ...`."""

    seconds: float
    # Set once the limit has fired, even if the code it fired into swallowed it.
    expired: bool = False

    @contextmanager
    def enforced(self, exceeded: Callable[[], TimeLimitExceeded]) -> Iterator[None]:
        """Raise `exceeded()` into the block if it runs longer than `seconds`."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def expire(signum: int, frame: FrameType | None) -> None:
            self.expired = True
            raise exceeded()

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, max(self.seconds, 0.001))
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

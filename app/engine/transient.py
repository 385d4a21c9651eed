"""Errors that say a service was briefly out of reach, not that the work is wrong.

Work that meets one is tried again (by the task's retry, or in place where the work's
result lives only in memory) rather than dropped or recorded as failed.
"""

from __future__ import annotations

from celery.exceptions import SoftTimeLimitExceeded
from psycopg import InterfaceError as DriverInterfaceError
from psycopg import OperationalError as DriverOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError as RedisReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError, OperationalError

TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    DriverOperationalError,  # from statements sent on the driver's cursor (history.py)
    DriverInterfaceError,
    RedisConnectionError,
    RedisTimeoutError,
    RedisReadOnlyError,  # a replica promoted while we still talk to the old primary
)

# Raised into running code from outside it (Celery's soft time limit, by a signal): the
# work was interrupted, not wrong. Whoever meets one stops and lets the work go.
INTERRUPTIONS: tuple[type[BaseException], ...] = (SoftTimeLimitExceeded,)

"""The SQLAlchemy engine (a connection pool), one per process."""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy import Engine, create_engine

from app.settings import get_settings, normalize_database_url

# Bounds on what a connection may wait for, so that nothing hangs on a server that has
# gone quiet or on a lock a stuck process holds: connecting, one statement, and a
# transaction left open between statements (whose locks Postgres then releases).
CONNECT_TIMEOUT_SECONDS = 5
STATEMENT_TIMEOUT_MS = 30_000
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000


def make_engine(url: str, *, bounded: bool = True) -> Engine:
    """An engine for `url`; `bounded=False` leaves out the statement timeouts (for
    migrations, whose index builds may take longer)."""
    options = (
        f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
        f" -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS}"
    )
    connect_args: dict[str, object] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    if bounded:
        connect_args["options"] = options
    # No pre-ping: it costs a round trip per transaction on the hot path. A connection
    # that died is replaced when it fails, and the work is retried.
    return create_engine(
        normalize_database_url(url),
        pool_size=5,
        max_overflow=10,
        pool_recycle=1800,
        connect_args=connect_args,
    )


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    return make_engine(get_settings().database_url)

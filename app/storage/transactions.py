"""Running the named statements: transactions, pipelining, and driver errors translated.

`transaction(engine)` opens a transaction whose statements travel in psycopg's pipeline
mode: a statement is sent when it is queued, and the client waits only when it reads a
result. Reads queued together come back in one round trip, and writes go out with their
COMMIT. `autocommit(engine)` runs single statements, each its own transaction.

Driver errors are translated here, at the storage boundary: Postgres out of reach (down,
restarting, read-only after a failover, refusing connections) is DatabaseUnavailable,
which callers retry; a guard that fails is IllegalTransition.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NoReturn

import psycopg
from sqlalchemy import Connection, Engine, Row, Select
from sqlalchemy import exc as sa_exc

from app.errors import DatabaseUnavailable, IllegalTransition
from app.storage.queries import QUERIES

# Raised by chainline_require() and the transition triggers (app/storage/sql/).
GUARD_FAILED = "CL001"
# Postgres answers with these while it cannot do the work, though the work is fine.
UNAVAILABLE_STATES = frozenset(
    {
        "25006",  # read_only_sql_transaction: a demoted primary, mid-failover
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "53300",  # too_many_connections
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now
        # query_canceled: a statement timeout, which our bounded statements meet only
        # waiting for a lock that a stuck process holds (until Postgres drops it).
        "57014",
    }
)


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says Postgres was out of reach, not that the work was wrong."""
    if isinstance(exc, DatabaseUnavailable):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        return is_unavailable(exc.orig)
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate or ""
        return (
            isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
            or state.startswith("08")
            or state in UNAVAILABLE_STATES
        )
    return False


def _translated(exc: BaseException) -> NoReturn:
    if is_unavailable(exc):
        raise DatabaseUnavailable(f"Postgres is unavailable: {exc}") from exc
    driver = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    if isinstance(driver, psycopg.Error) and driver.sqlstate == GUARD_FAILED:
        raise IllegalTransition(driver.diag.message_primary or str(driver)) from exc
    raise exc


class Transaction:
    """Statements by name on one connection; `conn` is the SQLAlchemy connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        driver = conn.connection.driver_connection
        assert driver is not None, "the connection is open"
        self.driver: psycopg.Connection[Any] = driver

    def send(self, name: str, params: Mapping[str, Any]) -> psycopg.Cursor[Any]:
        """Queue a statement; its result (if read) comes with the next read or COMMIT."""
        cursor = self.driver.cursor()
        try:
            cursor.execute(QUERIES[name].text, params)
        except psycopg.Error as exc:
            self._forget_if_broken(exc)
            _translated(exc)
        return cursor

    def fetch_one(self, name: str, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        return self.read_one(self.send(name, params))

    def fetch_all(self, name: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        return self.read_all(self.send(name, params))

    def select(self, statement: Select[Any]) -> list[Row[Any]]:
        """Run a statement built with SQLAlchemy Core (one whose shape depends on the
        request, as a filtered listing's does); its rows."""
        try:
            return list(self.conn.execute(statement).all())
        except sa_exc.DBAPIError as exc:
            self._forget_if_broken(exc)
            _translated(exc)

    def read_one(self, cursor: psycopg.Cursor[Any]) -> tuple[Any, ...] | None:
        """The first row of a statement sent earlier (waiting for it, if need be)."""
        try:
            row: tuple[Any, ...] | None = cursor.fetchone()
        except psycopg.Error as exc:
            self._forget_if_broken(exc)
            _translated(exc)
        return row

    def read_all(self, cursor: psycopg.Cursor[Any]) -> list[tuple[Any, ...]]:
        try:
            return cursor.fetchall()
        except psycopg.Error as exc:
            self._forget_if_broken(exc)
            _translated(exc)

    def _forget_if_broken(self, exc: BaseException) -> None:
        _forget_if_broken(self.conn, exc)


def _forget_if_broken(conn: Connection, exc: BaseException) -> None:
    """A connection that failed as a lost one does: it leaves the pool, and so do the
    pool's idle connections, most likely as dead (the server restarted)."""
    lost = isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    driver = conn.connection.driver_connection if not conn.invalidated else None
    if driver is not None and (lost or driver.broken or driver.closed):
        conn.invalidate(exc if isinstance(exc, Exception) else None)
        conn.engine.dispose()


@contextmanager
def _connection(engine: Engine) -> Iterator[Connection]:
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            yield conn
    except sa_exc.DBAPIError as exc:
        # Checking a connection out (connecting) failed.
        _translated(exc)


@contextmanager
def autocommit(engine: Engine) -> Iterator[Transaction]:
    """Each statement commits on its own: for work that is one statement."""
    with _connection(engine) as conn:
        yield Transaction(conn)


@contextmanager
def transaction(engine: Engine) -> Iterator[Transaction]:
    """One transaction, pipelined; rolled back if the block raises."""
    with _connection(engine) as conn:
        tx = Transaction(conn)
        driver = tx.driver
        try:
            with driver.pipeline():
                driver.execute("BEGIN")
                yield tx
                driver.execute("COMMIT")
        except BaseException as exc:
            _forget_if_broken(conn, exc)
            if not conn.invalidated:
                # A failed statement makes the server skip those queued behind it,
                # the preparation of any that reached psycopg's prepare threshold
                # included, which psycopg still counts as prepared and would name on
                # this connection forever after. A new connection is cheaper than
                # that; failures here are rare (a guard, an outage, a duplicate).
                conn.invalidate(exc if isinstance(exc, Exception) else None)
            if isinstance(exc, psycopg.Error):
                _translated(exc)
            raise

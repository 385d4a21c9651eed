"""The SQLAlchemy engine, one per process."""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy import Engine, create_engine

from app.settings import get_settings


def make_engine(url: str) -> Engine:
    # No pre-ping: it costs a round trip per transaction on the hot path. A connection
    # that died is replaced when it fails, and tasks retry on OperationalError.
    return create_engine(url, pool_size=5, max_overflow=10, pool_recycle=1800)


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    return make_engine(get_settings().database_url)

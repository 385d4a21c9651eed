"""Alembic environment: migrates the database named by CHAINLINE_DATABASE_URL."""

from __future__ import annotations

from alembic import context

from app.settings import get_settings, normalize_database_url
from app.storage.db import make_engine
from app.storage.schema import metadata

url = normalize_database_url(
    context.config.get_main_option("sqlalchemy.url") or get_settings().database_url
)
# Unbounded: building an index on a large table may take longer than a statement may.
engine = make_engine(url, bounded=False)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()

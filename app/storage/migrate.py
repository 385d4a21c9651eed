"""Apply the schema migrations (the Procfile's `release` process)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

ALEMBIC_INI = Path(__file__).with_name("alembic.ini")
MIGRATIONS_SQL = Path(__file__).with_name("migrations") / "sql"


def sql_file(name: str) -> str:
    """The SQL (PL/pgSQL functions and triggers) a migration runs, kept as SQL."""
    return (MIGRATIONS_SQL / name).read_text()


def alembic_config(database_url: str | None = None) -> Config:
    config = Config(str(ALEMBIC_INI))
    if database_url:
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str | None = None) -> None:
    command.upgrade(alembic_config(database_url), "head")


if __name__ == "__main__":
    upgrade()

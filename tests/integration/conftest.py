from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from app.storage.db import make_engine
from app.storage.migrate import upgrade
from app.workflows.registry import Registry, load_workflow_modules
from tests.support import create_database, drop_database


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    url = create_database()
    upgrade(url)
    yield url
    drop_database(url)


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def registry() -> Registry:
    return load_workflow_modules(["tests.workflows"])

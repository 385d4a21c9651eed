from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import Engine

from app.engine.leases import LeaseStore
from app.settings import normalize_database_url
from app.storage.db import make_engine
from app.storage.migrate import upgrade
from app.workflows.registry import Registry, load_workflow_modules
from tests.support import BROKER_URL, create_database, delete_broker_keys, drop_database


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    url = create_database()
    upgrade(url)
    yield url
    drop_database(url)


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(normalize_database_url(database_url))
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def registry() -> Registry:
    return load_workflow_modules(["tests.workflows"])


@pytest.fixture
def leases() -> Iterator[LeaseStore]:
    """A lease store of the test's own, under a key prefix it deletes afterwards."""
    client = redis.Redis.from_url(BROKER_URL)
    store = LeaseStore(client, prefix=f"test-leases-{uuid.uuid4().hex[:8]}:")
    yield store
    delete_broker_keys(store.prefix)
    client.close()

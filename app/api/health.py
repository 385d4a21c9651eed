"""Liveness and readiness probes for the deploy files."""

from __future__ import annotations

from typing import Any

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.messaging.dispatcher import get_dispatcher
from app.storage.db import get_engine
from app.storage.migrate import alembic_config
from app.storage.transactions import autocommit

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and serving: answered on the event loop, behind nothing."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
def readyz() -> dict[str, Any] | JSONResponse:
    """The database and the broker answer, and the schema is at the newest migration."""
    checks = {"database": _database(), "schema": _schema(), "broker": _broker()}
    body = {"status": "ok" if all(v == "ok" for v in checks.values()) else "unavailable", **checks}
    if body["status"] != "ok":
        return JSONResponse(body, status_code=503)
    return body


def _database() -> str:
    try:
        with autocommit(get_engine()) as tx:
            tx.fetch_one("ping", {})
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


def _schema() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    try:
        with get_engine().connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok" if current == head else f"at {current}, head is {head}"


def _broker() -> str:
    try:
        with get_dispatcher().app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"

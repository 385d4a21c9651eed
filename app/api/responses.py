"""Chainline's error answers, and those each route can give as OpenAPI documents them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse

from app.api.schemas import Error
from app.errors import ChainlineError

_DESCRIPTIONS = {
    400: "The workflow's handler rejected the update, or could not answer the query",
    401: "Missing or invalid API key",
    404: "No such workflow, execution or handler",
    408: "The execution, or the update, did not finish within the wait (it goes on)",
    409: "An execution with this id already exists, or the execution has ended",
    413: "A payload, or the request, is over the size limit",
    422: "Invalid input (FastAPI's detail list; Chainline's errors name the field)",
    501: "Not implemented by Chainline yet",
    503: "Postgres unreachable, or too many waiting requests: try again (Retry-After)",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status with its description and body model (a
    422 keeps FastAPI's own model)."""
    documented: dict[int | str, dict[str, Any]] = {}
    for status in (401, 503, *statuses):
        documented[status] = {"description": _DESCRIPTIONS[status]}
        if status != 422:
            documented[status]["model"] = Error
    return documented


def error_response(error: ChainlineError, headers: Mapping[str, str] = {}) -> JSONResponse:
    """`{"detail", "code"}` with the error's status and headers (and `headers`)."""
    return JSONResponse(
        {"detail": error.detail, "code": error.code},
        status_code=error.http_status,
        headers={**error.headers, **headers},
    )

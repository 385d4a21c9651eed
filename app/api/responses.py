"""The error answers each route can give, as OpenAPI documents them."""

from __future__ import annotations

from typing import Any

from app.api.schemas import Error

_DESCRIPTIONS = {
    401: "Missing or invalid API key",
    404: "No such workflow or execution",
    408: "The execution did not finish within the wait (it goes on)",
    409: "An execution with this id already exists",
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

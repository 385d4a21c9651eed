"""The FastAPI application (the Procfile's `api` process).

Its documentation pages are served from the package's own copies of Swagger UI and
ReDoc (fastapi-offline), so that they work without internet. Errors answer JSON:
Chainline's `{"detail", "code"}`, or FastAPI's detail list for invalid requests; a
database out of reach answers 503 with Retry-After, never a traceback.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from app.api import (
    executions,
    health,
    metrics,
    runs,
    schedules,
    streams,
    ui,
    unimplemented,
    workflows,
)
from app.api.access import Guard
from app.api.responses import error_response
from app.errors import ChainlineError

app = FastAPIOffline(
    title="Chainline",
    version="0.1.0",
    description="Durable workflow executions on Celery and Postgres, with the HTTP API"
    " of Mistral AI's Workflows.",
)
app.add_middleware(Guard)
app.include_router(health.router)
app.include_router(metrics.router)
app.include_router(ui.router)
app.mount("/ui/static", ui.static_files, name="ui-static")
app.include_router(executions.router)
app.include_router(schedules.router)
app.include_router(runs.router)
app.include_router(streams.router)
app.include_router(workflows.router)
# Literal paths first: /v1/workflows/runs must not be read as a workflow named "runs".
app.include_router(unimplemented.router())
app.include_router(workflows.named_router)


@app.exception_handler(ChainlineError)
async def _chainline_error(_: Request, exc: ChainlineError) -> JSONResponse:
    return error_response(exc)


@app.exception_handler(RequestValidationError)
async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's shape, with what was sent made JSON-safe: an error about a NaN must
    # not fail to be written itself.
    problems = [{**error, "input": _json_safe(error.get("input"))} for error in exc.errors()]
    for problem in problems:
        problem.pop("ctx", None)
        problem.pop("url", None)
    return JSONResponse({"detail": problems}, status_code=422)


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False).encode()
    except (TypeError, ValueError, UnicodeEncodeError):
        return repr(value)
    return value

"""The FastAPI application (the Procfile's `api` process)."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api import health
from app.api.schemas import (
    LOCAL_TENANT,
    WorkflowExecutionRequest,
    event_json,
    execution_json,
)
from app.engine.binding import bind_input
from app.engine.dispatch import FollowUp
from app.engine.executions import (
    get_execution,
    get_history,
    new_execution_id,
    start_execution,
)
from app.errors import ChainlineError, DatabaseUnavailable, InvalidPayload
from app.messaging.dispatcher import get_dispatcher
from app.model.payloads import encode
from app.settings import get_settings
from app.storage.closings import ClosedListener
from app.storage.db import get_engine
from app.storage.executions import ExecutionRecord
from app.workflows.registry import WorkflowDefinition, load_workflow_modules

registry = load_workflow_modules(get_settings().workflow_modules)

# How long wait_for_result waits when the caller does not say.
DEFAULT_WAIT_SECONDS = 60.0


@lru_cache(maxsize=1)
def closed_listener() -> ClosedListener:
    return ClosedListener(
        get_settings().database_url.replace("postgresql+psycopg://", "postgresql://")
    )


app = FastAPI(title="Chainline", version="0.1.0")
app.include_router(health.router)


@app.exception_handler(ChainlineError)
async def _chainline_error(_: Request, exc: ChainlineError) -> JSONResponse:
    headers = {"Retry-After": "5"} if isinstance(exc, DatabaseUnavailable) else None
    return JSONResponse(
        {"detail": exc.detail, "code": exc.code}, status_code=exc.http_status, headers=headers
    )


class BodySizeLimit:
    """Answers 413 to a request whose declared body is over the limit, unread.

    Plain ASGI rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware
    runs every request and its response through a task and a stream of their own.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            limit = get_settings().max_payload_bytes + 64 * 1024
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > limit:
                response = JSONResponse(
                    {"detail": f"request body is larger than {limit} bytes", "code": "WF_1002"},
                    status_code=413,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


app.add_middleware(BodySizeLimit)


async def require_api_key(request: Request) -> str | None:
    """Check the bearer token when keys are configured; return the caller's key id.

    A coroutine, though it awaits nothing: FastAPI runs a plain function dependency
    in its thread pool, a hop per request."""
    accepted = get_settings().accepted_api_keys
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    if accepted and token not in accepted:
        raise HTTPException(status_code=401, detail="invalid or missing API key")
    return token[:8] if token else None


Caller = Annotated[str | None, Depends(require_api_key)]


def _workflow_basic(definition: WorkflowDefinition) -> dict[str, Any]:
    return {
        "id": definition.name,
        "name": definition.name,
        "display_name": definition.display_name or definition.name,
        "description": definition.description,
        "archived": False,
    }


# response_model=None: the routes answer plain dicts, which FastAPI would otherwise
# validate against their annotations, in its thread pool for plain functions.
@app.get("/v1/workflows", response_model=None)
def list_workflows(
    _: Caller,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: str | None = None,
    order: str = "asc",
) -> dict[str, Any]:
    names = sorted(registry.workflows, reverse=order == "desc")
    if cursor:
        names = [n for n in names if (n < cursor if order == "desc" else n > cursor)]
    page = names[:limit]
    next_cursor = page[-1] if len(names) > limit else None
    return {
        "workflows": [_workflow_basic(registry.workflows[n]) for n in page],
        "next_cursor": next_cursor,
    }


@app.get("/v1/workflows/executions/{execution_id}", response_model=None)
def read_execution(execution_id: str, _: Caller) -> dict[str, Any]:
    return execution_json(get_execution(get_engine(), execution_id))


@app.get("/v1/workflows/executions/{execution_id}/history", response_model=None)
def read_history(execution_id: str, _: Caller) -> dict[str, Any]:
    engine = get_engine()
    record = get_execution(engine, execution_id)
    return {"events": [event_json(e, record) for e in get_history(engine, record.run_id)]}


@app.get("/v1/workflows/{workflow_name}", response_model=None)
def read_workflow(workflow_name: str, _: Caller) -> dict[str, Any]:
    definition = registry.workflow(workflow_name)
    return {
        "workflow": {
            **_workflow_basic(definition),
            "type": "code",
            "customer_id": LOCAL_TENANT,
            "workspace_id": LOCAL_TENANT,
            "active": True,
        }
    }


def _validate_input(definition: WorkflowDefinition, value: Any) -> Any:
    """The input encoded as stored; a 422 naming the field for anything else."""
    try:
        encoded = encode(value, "input")
    except InvalidPayload as exc:
        raise RequestValidationError(
            [{"loc": ("body", "input"), "msg": exc.detail, "type": "value_error", "input": None}]
        ) from None
    try:
        bind_input(definition.entrypoint, encoded)
    except ValidationError as exc:
        raise RequestValidationError(
            [
                {**error, "loc": ("body", "input", *error["loc"])}
                for error in exc.errors(include_url=False, include_context=False)
            ]
        ) from None
    return encoded


@app.post("/v1/workflows/{workflow_name}/execute", response_model=None)
def execute_workflow(
    workflow_name: str, body: WorkflowExecutionRequest, caller: Caller
) -> dict[str, Any]:
    definition = registry.workflow(workflow_name)
    input_value = _validate_input(definition, body.input)
    engine = get_engine()
    record, first_task = start_execution(
        engine,
        definition,
        execution_id=body.execution_id or new_execution_id(),
        input_value=input_value,
        user_id=caller,
    )
    started = [FollowUp("started", dispatches=(first_task,))]
    if not body.wait_for_result:
        get_dispatcher().send(started)
        return execution_json(record)
    # Listening before the work goes out: its closing cannot come first.
    with closed_listener().watching(record.execution_id) as closing:
        get_dispatcher().send(started)
        closing.wait(
            body.timeout_seconds or DEFAULT_WAIT_SECONDS,
            lambda: not get_execution(engine, record.execution_id).is_open,
        )
    return _execution_result(get_execution(engine, record.execution_id))


def _execution_result(record: ExecutionRecord) -> dict[str, Any]:
    """wait_for_result's answer: the short form once completed, else the record."""
    if record.status.value == "COMPLETED":
        return {
            "workflow_name": record.workflow_name,
            "execution_id": record.execution_id,
            "result": record.result,
        }
    return execution_json(record)

"""/v1/workflows: the registered workflows, and starting executions of them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from app.api.access import bearer, caller
from app.api.deployment import registry
from app.api.inputs import validated_input
from app.api.responses import errors
from app.api.schemas import (
    LOCAL_TENANT,
    Execution,
    ExecutionResult,
    WorkflowExecutionRequest,
    WorkflowGet,
    WorkflowList,
    execution_json,
)
from app.api.waiting import Waiters, waiters
from app.engine.dispatch import FollowUp
from app.engine.executions import get_execution, new_execution_id, start_execution
from app.errors import StillRunning, TooManyWaiting
from app.messaging.dispatcher import get_dispatcher
from app.storage.db import get_engine
from app.storage.executions import ExecutionRecord
from app.workflows.registry import WorkflowDefinition

# How long wait_for_result waits when the caller does not say.
DEFAULT_WAIT_SECONDS = 60.0

router = APIRouter(dependencies=[Depends(bearer)])
# The routes under /v1/workflows/{workflow_name}: included last, after every literal path
# (executions, runs...) that the parameter would otherwise catch.
named_router = APIRouter(dependencies=[Depends(bearer)])

# The workflows of this deployment, as examples of the path parameter (clients and
# test generators start from them).
WorkflowName = Annotated[
    str,
    Path(
        description="A workflow registered here (GET /v1/workflows lists them)",
        openapi_examples={name: {"value": name} for name in sorted(registry.workflows)},
    ),
]


def _basic(definition: WorkflowDefinition) -> dict[str, Any]:
    return {
        "id": definition.name,
        "name": definition.name,
        "display_name": definition.display_name or definition.name,
        "description": definition.description,
        "archived": False,
    }


# response_model=None: the routes answer plain dicts, which FastAPI would otherwise
# validate against their models, in its thread pool for plain functions; `responses`
# documents the models all the same.
@router.get(
    "/v1/workflows", response_model=None, responses={200: {"model": WorkflowList}, **errors(422)}
)
def list_workflows(
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: str | None = None,
    order: str = "asc",
) -> dict[str, Any]:
    names = sorted(registry.workflows, reverse=order == "desc")
    if cursor:
        names = [n for n in names if (n < cursor if order == "desc" else n > cursor)]
    page = names[:limit]
    next_cursor = page[-1] if len(names) > limit else None
    return {"workflows": [_basic(registry.workflows[n]) for n in page], "next_cursor": next_cursor}


@named_router.get(
    "/v1/workflows/{workflow_name}",
    response_model=None,
    # 501: a name that is one of the words of the SDK's own routes is answered by that
    # route (GET /v1/workflows/runs is not a workflow named "runs").
    responses={200: {"model": WorkflowGet}, **errors(404, 501)},
)
def read_workflow(workflow_name: WorkflowName) -> dict[str, Any]:
    definition = registry.workflow(workflow_name)
    return {
        "workflow": {
            **_basic(definition),
            "type": "code",
            "customer_id": LOCAL_TENANT,
            "workspace_id": LOCAL_TENANT,
            "active": True,
        }
    }


@named_router.post(
    "/v1/workflows/{workflow_name}/execute",
    response_model=None,
    responses={
        200: {
            "model": ExecutionResult | Execution,
            "description": "The execution started (RUNNING); with wait_for_result, its"
            " result once COMPLETED, or its record once it ended otherwise",
        },
        **errors(404, 408, 409, 413, 422, 501),
    },
)
async def execute_workflow(
    workflow_name: WorkflowName,
    body: WorkflowExecutionRequest,
    request: Request,
    user: Annotated[str | None, Depends(caller)],
) -> dict[str, Any]:
    definition = registry.workflow(workflow_name)
    input_value = validated_input(definition.entrypoint, body.input)
    waiting = waiters()
    # Refused before anything starts, so that trying again later is safe.
    if body.wait_for_result and not waiting.reserve():
        raise TooManyWaiting()
    try:
        return await _start(definition, body, input_value, user, request, waiting)
    finally:
        if body.wait_for_result:
            waiting.release()


async def _start(
    definition: WorkflowDefinition,
    body: WorkflowExecutionRequest,
    input_value: Any,
    user: str | None,
    request: Request,
    waiting: Waiters,
) -> dict[str, Any]:
    engine = get_engine()
    execution_id = body.execution_id or new_execution_id()

    def start_and_send() -> ExecutionRecord:
        # One trip to the thread pool: record the execution, then publish its first task.
        record, first_task = start_execution(
            engine, definition, execution_id=execution_id, input_value=input_value, user_id=user
        )
        get_dispatcher().send([FollowUp("started", dispatches=(first_task,))])
        return record

    if not body.wait_for_result:
        return execution_json(await run_in_threadpool(start_and_send))

    async def is_closed() -> bool:
        current = await run_in_threadpool(get_execution, engine, execution_id)
        return not current.is_open

    timeout = body.timeout_seconds or DEFAULT_WAIT_SECONDS
    # Subscribed before the work goes out: its closing cannot come first.
    async with waiting.subscribed(execution_id) as closing:
        record = await run_in_threadpool(start_and_send)
        waited = await closing.wait(
            timeout, is_closed=is_closed, client_gone=request.is_disconnected
        )
    final = await run_in_threadpool(get_execution, engine, record.execution_id)
    if final.is_open:
        raise StillRunning(
            f"Execution {record.execution_id!r} is still {final.status.value} after"
            f" {timeout:g}s ({waited.value}); it goes on: GET"
            f" /v1/workflows/executions/{record.execution_id} tells when it ends"
        )
    return _execution_result(final)


def _execution_result(record: ExecutionRecord) -> dict[str, Any]:
    """wait_for_result's answer: the short form once completed, else the record."""
    if record.status.value == "COMPLETED":
        return {
            "workflow_name": record.workflow_name,
            "execution_id": record.execution_id,
            "result": record.result,
        }
    return execution_json(record)

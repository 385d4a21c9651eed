"""/v1/workflows/executions: one execution, its history, and talking to it while it
runs (signals, queries, updates, cancel, terminate), one by one or in batches."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Response
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from app.api.access import bearer
from app.api.deployment import registry
from app.api.inputs import validated_input
from app.api.responses import errors
from app.api.schemas import (
    EXECUTION_ID_PATTERN,
    BatchExecutionBody,
    BatchExecutionResponse,
    Execution,
    HandlerInvocation,
    History,
    QueryResult,
    ResetInvocationBody,
    SignalAccepted,
    UpdateResult,
    event_json,
    execution_json,
)
from app.api.waiting import waiters
from app.engine import interactions, resets
from app.engine.dispatch import FollowUp
from app.engine.executions import get_execution, get_history
from app.errors import (
    ChainlineError,
    ExecutionClosed,
    InvalidResetPoint,
    StillRunning,
    TooManyWaiting,
    UpdateRejected,
)
from app.messaging.dispatcher import get_dispatcher
from app.model import events as ev
from app.settings import get_settings
from app.storage.db import get_engine

router = APIRouter(dependencies=[Depends(bearer)])

# Ids are URL-safe: anything else (a NUL, a slash) names no execution, and is refused.
ExecutionId = Annotated[str, Path(pattern=EXECUTION_ID_PATTERN)]
EXECUTION = "/v1/workflows/executions/{execution_id}"
# The longest pause between two looks at whether an update has been handled.
UPDATE_POLL_MAX_SECONDS = 0.05


@router.get(
    EXECUTION, response_model=None, responses={200: {"model": Execution}, **errors(404, 422)}
)
def read_execution(execution_id: ExecutionId, include_search_keys: bool = False) -> dict[str, Any]:
    record = get_execution(get_engine(), execution_id)
    if include_search_keys:
        return {**execution_json(record), "search_keys": record.search_keys or {}}
    return execution_json(record)


@router.get(
    EXECUTION + "/history",
    response_model=None,
    responses={200: {"model": History}, **errors(404, 422)},
)
def read_history(execution_id: ExecutionId) -> dict[str, Any]:
    engine = get_engine()
    record = get_execution(engine, execution_id)
    return {"events": [event_json(e, record) for e in get_history(engine, record.run_id)]}


def _send(follow_up: FollowUp) -> None:
    get_dispatcher().send([follow_up])


@router.post(
    EXECUTION + "/signals",
    status_code=202,
    response_model=None,
    responses={202: {"model": SignalAccepted}, **errors(404, 409, 413, 422)},
)
def signal_execution(execution_id: ExecutionId, body: HandlerInvocation) -> dict[str, Any]:
    record = get_execution(get_engine(), execution_id)
    interactions.refuse_if_continued(record, "signals")
    handler = interactions.find_handler(registry, record.workflow_name, "signal", body.name)
    input_value = validated_input(handler.fn, body.input)
    _send(interactions.signal(get_engine(), execution_id, body.name, input_value))
    return {"message": "Signal accepted"}


@router.post(
    EXECUTION + "/queries",
    response_model=None,
    responses={200: {"model": QueryResult}, **errors(400, 404, 413, 422)},
)
def query_execution(execution_id: ExecutionId, body: HandlerInvocation) -> dict[str, Any]:
    engine = get_engine()
    record = get_execution(engine, execution_id)
    handler = interactions.find_handler(registry, record.workflow_name, "query", body.name)
    input_value = validated_input(handler.fn, body.input)
    result = interactions.query(engine, registry, record, body.name, input_value)
    return {"query_name": body.name, "result": result}


@router.post(
    EXECUTION + "/updates",
    response_model=None,
    responses={200: {"model": UpdateResult}, **errors(400, 404, 408, 409, 413, 422)},
)
async def update_execution(execution_id: ExecutionId, body: HandlerInvocation) -> dict[str, Any]:
    engine = get_engine()
    waiting = waiters()
    # Its caller waits as wait_for_result's does, under the same cap; refused before
    # anything is recorded, so that trying again later is safe.
    if not waiting.reserve():
        raise TooManyWaiting()
    try:
        return await _update(engine, execution_id, body)
    finally:
        waiting.release()


async def _update(engine: Engine, execution_id: str, body: HandlerInvocation) -> dict[str, Any]:
    def accept() -> interactions.AcceptedUpdate:
        record = get_execution(engine, execution_id)
        interactions.refuse_if_continued(record, "updates")
        handler = interactions.find_handler(registry, record.workflow_name, "update", body.name)
        input_value = validated_input(handler.fn, body.input)
        accepted = interactions.accept_update(engine, execution_id, body.name, input_value)
        _send(accepted.follow_up)
        return accepted

    accepted = await run_in_threadpool(accept)
    result = await _handled(execution_id, accepted, get_settings().update_wait_seconds)
    return {"update_name": body.name, "result": result}


async def _handled(execution_id: str, accepted: interactions.AcceptedUpdate, timeout: float) -> Any:
    """The update's result once the workflow has handled it; UpdateRejected if its
    handler refused it, ExecutionClosed if the run ended first, StillRunning past
    `timeout` (it stays recorded, and is handled when the workflow gets to it)."""
    engine = get_engine()
    deadline = time.monotonic() + timeout
    pause = 0.002
    while True:
        found = await run_in_threadpool(
            interactions.update_outcome, engine, accepted.run_id, accepted.update_id
        )
        if found.event_type == ev.WORKFLOW_EXECUTION_UPDATE_COMPLETED:
            assert found.attributes is not None
            return found.attributes["result"]["value"]
        if found.event_type == ev.WORKFLOW_EXECUTION_UPDATE_REJECTED:
            assert found.attributes is not None
            failure = found.attributes["failure"]
            raise UpdateRejected(
                f"Update {accepted.update_id} was rejected: {failure['type']}: {failure['message']}"
            )
        if found.status.value not in ("RUNNING", "RETRYING_AFTER_ERROR"):
            raise ExecutionClosed(
                f"Execution {execution_id!r} ended {found.status.value} before it handled"
                f" update {accepted.update_id}"
            )
        if time.monotonic() >= deadline:
            raise StillRunning(
                f"Update {accepted.update_id} of execution {execution_id!r} was not handled"
                f" within {timeout:g}s; it stays recorded and is handled when the workflow"
                " runs again"
            )
        await asyncio.sleep(pause)
        pause = min(pause * 2, UPDATE_POLL_MAX_SECONDS)


@router.post(EXECUTION + "/cancel", status_code=204, responses=errors(404, 409, 422))
def cancel_execution(execution_id: ExecutionId) -> Response:
    _send(interactions.cancel(get_engine(), execution_id))
    return Response(status_code=204)


@router.post(EXECUTION + "/terminate", status_code=204, responses=errors(404, 409, 422))
def terminate_execution(execution_id: ExecutionId) -> Response:
    _send(interactions.terminate(get_engine(), execution_id))
    return Response(status_code=204)


@router.post(EXECUTION + "/reset", status_code=204, responses=errors(404, 422))
def reset_execution(execution_id: ExecutionId, body: ResetInvocationBody) -> Response:
    try:
        _, follow_up = resets.reset(
            get_engine(),
            execution_id,
            body.event_id,
            reason=body.reason,
            exclude_signals=body.exclude_signals,
            exclude_updates=body.exclude_updates,
        )
    except InvalidResetPoint as invalid:
        # FastAPI's validation shape, which the SDK parses (as HTTPValidationError),
        # with Chainline's code and the valid points.
        problem = {
            "loc": ["body", "event_id"],
            "msg": invalid.detail,
            "type": "invalid_reset_point",
            "input": invalid.event_id,
            "ctx": {"valid_event_ids": invalid.valid_event_ids},
        }
        return JSONResponse({"detail": [problem], "code": invalid.code}, status_code=422)
    _send(follow_up)
    return Response(status_code=204)


def _batch(execution_ids: list[str], act: Any) -> dict[str, Any]:
    results: dict[str, Any] = {}
    follow_ups = []
    for execution_id in dict.fromkeys(execution_ids):
        try:
            follow_ups.append(act(get_engine(), execution_id))
        except ChainlineError as exc:
            results[execution_id] = {"status": "failure", "error": exc.detail}
        else:
            results[execution_id] = {"status": "success", "error": None}
    get_dispatcher().send(follow_ups)
    return {"results": results}


@router.post(
    "/v1/workflows/executions/cancel",
    response_model=None,
    responses={200: {"model": BatchExecutionResponse}, **errors(422)},
)
def cancel_executions(body: BatchExecutionBody) -> dict[str, Any]:
    return _batch(body.execution_ids, interactions.cancel)


@router.post(
    "/v1/workflows/executions/terminate",
    response_model=None,
    responses={200: {"model": BatchExecutionResponse}, **errors(422)},
)
def terminate_executions(body: BatchExecutionBody) -> dict[str, Any]:
    return _batch(body.execution_ids, interactions.terminate)

"""/v1/workflows/executions/{execution_id}: one execution, and its history."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path

from app.api.access import bearer
from app.api.responses import errors
from app.api.schemas import EXECUTION_ID_PATTERN, Execution, History, event_json, execution_json
from app.engine.executions import get_execution, get_history
from app.storage.db import get_engine

router = APIRouter(dependencies=[Depends(bearer)])

# Ids are URL-safe: anything else (a NUL, a slash) names no execution, and is refused.
ExecutionId = Annotated[str, Path(pattern=EXECUTION_ID_PATTERN)]


@router.get(
    "/v1/workflows/executions/{execution_id}",
    response_model=None,
    responses={200: {"model": Execution}, **errors(404, 422)},
)
def read_execution(execution_id: ExecutionId) -> dict[str, Any]:
    return execution_json(get_execution(get_engine(), execution_id))


@router.get(
    "/v1/workflows/executions/{execution_id}/history",
    response_model=None,
    responses={200: {"model": History}, **errors(404, 422)},
)
def read_history(execution_id: ExecutionId) -> dict[str, Any]:
    engine = get_engine()
    record = get_execution(engine, execution_id)
    return {"events": [event_json(e, record) for e in get_history(engine, record.run_id)]}

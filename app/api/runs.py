"""/v1/workflows/runs: every run of every execution (a reset adds a run under the same
execution id), listed with the `mistralai` SDK's filters, and one run with its history."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query

from app.api.access import bearer, caller
from app.api.inputs import invalid_parameter, refuse_nul
from app.api.responses import errors
from app.api.schemas import Execution, History, RunList, event_json, execution_json, run_json
from app.engine.executions import get_history
from app.model.search_keys import SearchKeyFilter, parse_filter
from app.model.statuses import ExecutionStatus
from app.storage.db import get_engine
from app.storage.executions import read_run
from app.storage.listing import Cursor, RunFilter, SortBy, list_runs

router = APIRouter(dependencies=[Depends(bearer)])

RUNS = "/v1/workflows/runs"
MOST_PER_PAGE = 1000


@router.get(RUNS, response_model=None, responses={200: {"model": RunList}, **errors(422)})
def list_runs_route(
    user: Annotated[str | None, Depends(caller)],
    workflow_identifier: str | None = None,
    root_execution_id: str | None = None,
    search: str | None = None,
    status: Annotated[list[ExecutionStatus] | None, Query()] = None,
    deployment_name: str | None = None,
    sort_by: SortBy | None = None,
    order: Literal["asc", "desc"] = "desc",
    start_time_after: datetime | None = None,
    start_time_before: datetime | None = None,
    end_time_after: datetime | None = None,
    end_time_before: datetime | None = None,
    user_id: str | None = None,
    workflow_tags: Annotated[list[str] | None, Query()] = None,
    include_internal: bool = True,
    page_size: Annotated[int, Query(ge=1, le=MOST_PER_PAGE)] = 50,
    next_page_token: Annotated[str | None, Query(max_length=500)] = None,
    search_key: Annotated[list[str] | None, Query(max_length=3)] = None,
) -> dict[str, Any]:
    refuse_nul(
        workflow_identifier=workflow_identifier,
        root_execution_id=root_execution_id,
        search=search,
        deployment_name=deployment_name,
        user_id=user_id,
        workflow_tags=workflow_tags,
        search_key=search_key,
    )
    wanted_keys = _search_key_filters(search_key or [])
    sorting: SortBy = sort_by or "start_time"
    # Chainline records neither deployments nor workflow tags on executions: no run
    # belongs to a named deployment or carries a tag. Every workflow is listed alike,
    # internal or not.
    if deployment_name is not None or workflow_tags:
        return {"executions": [], "next_page_token": None}
    where = RunFilter(
        workflow_name=workflow_identifier,
        root_execution_id=root_execution_id,
        search=search or None,
        statuses=tuple(status or ()),
        start_time_after=_utc(start_time_after),
        start_time_before=_utc(start_time_before),
        end_time_after=_utc(end_time_after),
        end_time_before=_utc(end_time_before),
        user_id=user if user_id == "current" else user_id,
        search_keys=wanted_keys,
    )
    after = None if next_page_token is None else _cursor(next_page_token, sorting, order)
    page = list_runs(
        get_engine(),
        where,
        sort_by=sorting,
        descending=order == "desc",
        limit=page_size,
        after=after,
    )
    token = None if page.next_cursor is None else _token(page.next_cursor, sorting, order)
    return {"executions": [run_json(r) for r in page.runs], "next_page_token": token}


@router.get(
    RUNS + "/{run_id}",
    response_model=None,
    responses={200: {"model": Execution}, **errors(404, 422)},
)
def read_run_route(run_id: uuid.UUID) -> dict[str, Any]:
    return execution_json(read_run(get_engine(), run_id))


@router.get(
    RUNS + "/{run_id}/history",
    response_model=None,
    responses={200: {"model": History}, **errors(404, 422)},
)
def read_run_history(run_id: uuid.UUID, decode_payloads: bool = True) -> dict[str, Any]:
    # Payloads are stored as JSON, never encoded: decoding them changes nothing.
    engine = get_engine()
    record = read_run(engine, run_id)
    return {"events": [event_json(e, record) for e in get_history(engine, run_id)]}


def _search_key_filters(given: list[str]) -> tuple[SearchKeyFilter, ...]:
    try:
        return tuple(parse_filter(text) for text in given)
    except ValueError as exc:
        raise invalid_parameter("search_key", str(exc), given) from None


def _utc(moment: datetime | None) -> datetime | None:
    """A time sent without an offset is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _token(cursor: Cursor, sort_by: SortBy, order: str) -> str:
    value = None if cursor.sort_value is None else cursor.sort_value.isoformat()
    data = json.dumps([sort_by, order, value, str(cursor.run_id)], separators=(",", ":"))
    return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")


def _cursor(token: str, sort_by: SortBy, order: str) -> Cursor:
    """The cursor a token holds; 422 for a token this listing did not hand out (or one
    handed out for another order)."""
    try:
        padded = token + "=" * (-len(token) % 4)
        given_sort, given_order, value, run_id = json.loads(base64.urlsafe_b64decode(padded))
        if (given_sort, given_order) != (sort_by, order):
            raise ValueError("the token belongs to another order of runs")
        sort_value = None if value is None else datetime.fromisoformat(value)
        return Cursor(sort_value, uuid.UUID(run_id))
    except (ValueError, TypeError, binascii.Error) as exc:
        message = f"not a page token of this listing: {exc}"
        raise invalid_parameter("next_page_token", message, token) from None

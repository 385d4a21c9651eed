"""/v1/workflows/schedules: scheduled executions (app/engine/schedules.py), as the
`mistralai` SDK's `workflows.schedules` calls them."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app.api.access import bearer, caller
from app.api.deployment import registry
from app.api.inputs import validated_input
from app.api.responses import errors
from app.api.schemas import (
    SCHEDULE_ID_PATTERN,
    ScheduleDefinitionOutput,
    WorkflowScheduleListResponse,
    WorkflowSchedulePauseRequest,
    WorkflowScheduleRequest,
    WorkflowScheduleResponse,
    WorkflowScheduleTriggerRequest,
    WorkflowScheduleUpdateRequest,
    schedule_json,
)
from app.engine import schedules
from app.messaging.dispatcher import get_dispatcher
from app.model.schedule_spec import SchedulePolicy, ScheduleSpec
from app.storage.db import get_engine

router = APIRouter(dependencies=[Depends(bearer)])

SCHEDULES = "/v1/workflows/schedules"
SCHEDULE = SCHEDULES + "/{schedule_id}"
ScheduleId = Annotated[str, Path(pattern=SCHEDULE_ID_PATTERN)]
# The most schedules one page holds (and a list without page_size, which the SDK
# documents as "all of them").
MOST_PER_PAGE = 10_000
SPEC_FIELDS = tuple(ScheduleSpec.model_fields)


@router.post(
    SCHEDULES,
    status_code=201,
    response_model=None,
    responses={201: {"model": WorkflowScheduleResponse}, **errors(404, 409, 413, 422)},
)
def create_schedule(
    body: WorkflowScheduleRequest, user: Annotated[str | None, Depends(caller)]
) -> dict[str, Any]:
    workflow = body.workflow_identifier or body.workflow_registration_id
    if workflow is None:
        raise RequestValidationError(
            [
                {
                    "loc": ("body", "workflow_identifier"),
                    "msg": "name the workflow to schedule (workflow_identifier)",
                    "type": "missing",
                }
            ]
        )
    definition = registry.workflow(workflow)
    given = body.schedule
    input_value = validated_input(
        definition.entrypoint, given.input, at=("body", "schedule", "input")
    )
    schedule_id = body.schedule_id or given.schedule_id or uuid.uuid4().hex
    spec = ScheduleSpec.model_validate({name: getattr(given, name) for name in SPEC_FIELDS})
    schedules.create_schedule(
        get_engine(),
        schedules.NewSchedule(
            schedule_id=schedule_id,
            workflow_name=definition.name,
            input_value=input_value,
            spec=spec,
            policy=given.policy or SchedulePolicy(),
            max_executions=given.max_executions,
            deployment_name=body.deployment_name,
            user_id=user,
        ),
    )
    return {"schedule_id": schedule_id}


@router.get(
    SCHEDULES,
    response_model=None,
    responses={200: {"model": WorkflowScheduleListResponse}, **errors(422)},
)
def list_schedules(
    user: Annotated[str | None, Depends(caller)],
    workflow_name: str | None = None,
    user_id: str | None = None,
    status: Literal["active", "paused"] | None = None,
    search: str | None = None,
    page_size: Annotated[int | None, Query(ge=1, le=MOST_PER_PAGE)] = None,
    next_page_token: Annotated[str | None, Query(pattern=SCHEDULE_ID_PATTERN)] = None,
) -> dict[str, Any]:
    limit = page_size or MOST_PER_PAGE
    rows = schedules.list_page(
        get_engine(),
        workflow_name=workflow_name,
        user_id=user if user_id == "current" else user_id,
        paused=None if status is None else status == "paused",
        search=search,
        after_id=next_page_token,
        limit=limit,
    )
    more = page_size is not None and len(rows) == limit
    # A page shows each schedule's next time alone (GET one shows ten, and the
    # executions it started): a page of thousands stays one indexed read.
    return {
        "schedules": [
            schedule_json(row, [row.next_fire_at] if row.next_fire_at else [], []) for row in rows
        ],
        "next_page_token": rows[-1].schedule_id if more else None,
    }


@router.get(
    SCHEDULE,
    response_model=None,
    responses={200: {"model": ScheduleDefinitionOutput}, **errors(404, 422)},
)
def read_schedule(schedule_id: ScheduleId) -> dict[str, Any]:
    view = schedules.describe(get_engine(), schedule_id)
    return schedule_json(view.row, view.future, view.recent)


@router.patch(
    SCHEDULE,
    response_model=None,
    responses={200: {"model": WorkflowScheduleResponse}, **errors(404, 413, 422)},
)
def update_schedule(schedule_id: ScheduleId, body: WorkflowScheduleUpdateRequest) -> dict[str, Any]:
    engine = get_engine()
    given = body.schedule
    sent = given.model_fields_set
    input_value = None
    if "input" in sent:
        workflow_name = schedules.describe(engine, schedule_id).row.workflow_name
        definition = registry.workflow(workflow_name)
        input_value = validated_input(
            definition.entrypoint, given.input, at=("body", "schedule", "input")
        )
    spec_fields = given.model_dump(mode="json", include=set(SPEC_FIELDS) & sent)
    change = schedules.ScheduleChange(
        input_value=input_value,
        input_given="input" in sent,
        spec_fields=spec_fields,
        policy=given.policy if "policy" in sent else None,
        max_executions=given.max_executions,
        max_executions_given="max_executions" in sent,
    )
    try:
        schedules.change_schedule(engine, schedule_id, change)
    except ValidationError as exc:
        raise RequestValidationError(
            [
                {**error, "loc": ("body", "schedule", *error["loc"])}
                for error in exc.errors(include_url=False, include_context=False)
            ]
        ) from None
    return {"schedule_id": schedule_id}


@router.delete(SCHEDULE, status_code=204, responses=errors(404, 422))
def delete_schedule(schedule_id: ScheduleId) -> Response:
    schedules.remove_schedule(get_engine(), schedule_id)
    return Response(status_code=204)


@router.post(SCHEDULE + "/pause", status_code=204, responses=errors(404, 422))
def pause_schedule(
    schedule_id: ScheduleId, body: WorkflowSchedulePauseRequest | None = None
) -> Response:
    schedules.set_paused(get_engine(), schedule_id, True, body.note if body else None)
    return Response(status_code=204)


@router.post(SCHEDULE + "/resume", status_code=204, responses=errors(404, 422))
def resume_schedule(
    schedule_id: ScheduleId, body: WorkflowSchedulePauseRequest | None = None
) -> Response:
    schedules.set_paused(get_engine(), schedule_id, False, body.note if body else None)
    return Response(status_code=204)


@router.post(SCHEDULE + "/trigger", status_code=204, responses=errors(404, 422))
def trigger_schedule(
    schedule_id: ScheduleId, body: WorkflowScheduleTriggerRequest | None = None
) -> Response:
    overlap = body.overlap if body else None
    follow_up = schedules.trigger(get_engine(), registry, schedule_id, overlap)
    get_dispatcher().send([follow_up])
    return Response(status_code=204)

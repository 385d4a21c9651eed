"""Server-Sent Events and the events API: an execution's stream, the global stream with
its filters, and pages of events, as the `mistralai` SDK reads them.

Every frame is `id: <position>`, `event: workflow.event` and the StreamEventSsePayload
as `data`; `position` (the broker_sequence) is the event's place in the stream, given
by the sequencer in the order events became visible (app/storage/streams.py), so a
client that resumes after an id gets exactly the events after it. A stream reads what
it missed from Postgres, then follows this process's feed (app/storage/stream_feed.py);
`: keep-alive` comments go out while nothing happens.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.api.access import bearer
from app.api.inputs import invalid_parameter, refuse_nul
from app.api.responses import errors
from app.api.schemas import EXECUTION_ID_PATTERN, iso
from app.engine.executions import get_execution
from app.model import events as ev
from app.settings import get_settings, libpq_url
from app.storage.db import get_engine
from app.storage.stream_feed import StreamFeed
from app.storage.streams import StreamedEvent, StreamFilter, number_new_events, read_stream
from app.storage.transactions import autocommit, transaction

router = APIRouter(dependencies=[Depends(bearer)])

ExecutionId = Annotated[str, Path(pattern=EXECUTION_ID_PATTERN)]
# Well inside the SDK's read timeout, and any proxy's idle one.
KEEPALIVE_SECONDS = 10.0
KEEPALIVE = b": keep-alive\n\n"
CATCH_UP_BATCH = 500
# Events a stream holds for its client before it is dropped as too slow.
MOST_QUEUED = 10_000
CLOSING_TYPES = frozenset(
    {
        ev.WORKFLOW_EXECUTION_COMPLETED,
        ev.WORKFLOW_EXECUTION_FAILED,
        ev.WORKFLOW_EXECUTION_CANCELED,
        ev.WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
        *ev.STREAMED_AS,
    }
)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@lru_cache(maxsize=1)
def stream_feed() -> StreamFeed:
    """This API process's feed of new events (started with its first stream)."""
    return StreamFeed(get_engine(), libpq_url(get_settings().database_url))


def event_json(event: StreamedEvent) -> dict[str, Any]:
    """The event as one of the SDK's 17 event objects (ends it has no type for are
    shown as the nearest it has, saying what happened)."""
    event_type = ev.STREAMED_AS.get(event.event_type, event.event_type)
    attributes = event.attributes
    if event.event_type in ev.STREAMED_AS:
        attributes = {
            "task_id": ev.workflow_task_id(event.run_id, event.event_id),
            **attributes,
            "status": "TERMINATED"
            if event.event_type == ev.WORKFLOW_EXECUTION_TERMINATED
            else "TIMED_OUT",
        }
    return {
        "event_id": str(event.event_id),
        "event_timestamp": event.event_timestamp,
        "root_workflow_exec_id": event.root_execution_id,
        "parent_workflow_exec_id": event.parent_execution_id,
        "workflow_exec_id": event.execution_id,
        "workflow_run_id": str(event.run_id),
        "workflow_name": event.workflow_name,
        "continued_run_id": _text(event.continued_from_run_id),
        "first_execution_run_id": _text(event.first_execution_run_id),
        "schedule_id": event.schedule_id,
        "event_type": event_type,
        "attributes": attributes,
    }


def _text(value: object | None) -> str | None:
    return None if value is None else str(value)


def sse_frame(event: StreamedEvent) -> bytes:
    """The event's frame, made and encoded once however many streams send it (a
    stream's events come from the feed as shared objects)."""
    frame = _frames.get(event.position)
    if frame is None:
        frame = _make_frame(event)
        _frames[event.position] = frame
        if len(_frames) > FRAME_CACHE_SIZE:
            _frames.popitem(last=False)
    return frame


# The frames made last, by position: the event loop's own (never touched by threads).
_frames: OrderedDict[int, bytes] = OrderedDict()
FRAME_CACHE_SIZE = 20_000


def _make_frame(event: StreamedEvent) -> bytes:
    payload = {
        "stream": "workflows",
        "data": event_json(event),
        "workflow_context": {
            "namespace": "default",
            "workflow_name": event.workflow_name,
            "workflow_exec_id": event.execution_id,
            "parent_workflow_exec_id": event.parent_execution_id,
            "root_workflow_exec_id": event.root_execution_id,
        },
        "broker_sequence": event.position,
        "timestamp": iso(datetime.fromtimestamp(event.event_timestamp / 1e9, tz=UTC)),
    }
    return (
        f"id: {event.position}\nevent: workflow.event\n"
        f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"
    ).encode()


class _Sent:
    """Where a stream is: the last position it passed, and whether it has ended."""

    def __init__(
        self,
        after: int,
        keep: Callable[[StreamedEvent], bool],
        ends: Callable[[StreamedEvent], bool],
    ) -> None:
        self.position = after
        self.ended = False
        self._keep = keep
        self._ends = ends

    def frames(self, batch: list[StreamedEvent]) -> list[bytes]:
        """The frames of the batch's events after the position (up to an ending)."""
        frames = []
        for event in batch:
            if self.ended or event.position <= self.position:
                continue
            self.position = event.position
            if self._keep(event):
                frames.append(sse_frame(event))
                self.ended = self._ends(event)
        return frames


class _Fanout:
    """This event loop's share of the feed: one subscription, whose batches it hands
    to every stream's queue on the loop itself (one wake-up per batch, however many
    streams)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queues: set[asyncio.Queue[list[StreamedEvent]]] = set()
        self._joining = asyncio.Lock()
        self._subscribed = False
        # The last position handed out, on the loop.
        self._position = 0

    async def join(self, queue: asyncio.Queue[list[StreamedEvent]]) -> int:
        """Hand `queue` every batch after the position returned."""
        async with self._joining:
            if not self._subscribed:
                _, self._position = await run_in_threadpool(
                    stream_feed().subscribe, self._from_feed
                )
                self._subscribed = True
            self._queues.add(queue)
            return self._position

    def leave(self, queue: asyncio.Queue[list[StreamedEvent]]) -> None:
        self._queues.discard(queue)

    def _from_feed(self, batch: list[StreamedEvent]) -> None:  # the feed's thread
        self._loop.call_soon_threadsafe(self._hand_out, batch)

    def _hand_out(self, batch: list[StreamedEvent]) -> None:
        self._position = batch[-1].position
        for queue in self._queues:
            queue.put_nowait(batch)


_fanouts: dict[asyncio.AbstractEventLoop, _Fanout] = {}


def _fanout() -> _Fanout:
    loop = asyncio.get_running_loop()
    found = _fanouts.get(loop)
    if found is None:
        found = _fanouts[loop] = _Fanout(loop)
    return found


async def _stream(
    where: StreamFilter,
    after: int,
    keep: Callable[[StreamedEvent], bool],
    *,
    stored: bool = True,
    live: bool = True,
    ends: Callable[[StreamedEvent], bool] = lambda _: False,
) -> AsyncIterator[bytes]:
    """The frames of the events after `after` that match: stored ones first, then live
    ones, until `ends` says an event was the last (or the client goes away)."""
    queue: asyncio.Queue[list[StreamedEvent]] = asyncio.Queue()
    fanout = _fanout()
    fed_from = await fanout.join(queue) if live else None
    sent = _Sent(after, keep, ends)
    try:
        yield KEEPALIVE
        if stored:
            async for frame in _stored(where, sent, fed_from):
                yield frame
        if live and not sent.ended:
            async for frame in _live(queue, sent):
                yield frame
    finally:
        fanout.leave(queue)


async def _stored(where: StreamFilter, sent: _Sent, until: int | None) -> AsyncIterator[bytes]:
    """What Postgres holds after the stream's position, up to `until` (where the feed
    takes over) when given; with no feed to follow, every event committed so far."""
    if until is None:
        await run_in_threadpool(_number_ready)
    while not sent.ended:
        batch = await run_in_threadpool(_read, where, sent.position)
        within = [e for e in batch if until is None or e.position <= until]
        frames = sent.frames(within)
        if frames:
            yield b"".join(frames)
        if len(within) < CATCH_UP_BATCH:
            return


async def _live(queue: asyncio.Queue[list[StreamedEvent]], sent: _Sent) -> AsyncIterator[bytes]:
    while not sent.ended:
        try:
            # A timeout scope, not wait_for: no task made per wake-up.
            async with asyncio.timeout(KEEPALIVE_SECONDS):
                batch = await queue.get()
        except TimeoutError:
            yield KEEPALIVE
            continue
        if queue.qsize() > MOST_QUEUED:
            yield _error_frame("the client reads too slowly; resume from the last id")
            return
        # What has queued up meanwhile goes in the same write: the busier the process,
        # the fewer (and bigger) its sends.
        while not queue.empty():
            batch = batch + queue.get_nowait()
        frames = sent.frames(batch)
        if frames:
            yield b"".join(frames)


def _number_ready() -> None:
    with transaction(get_engine()) as tx:
        number_new_events(tx)


def _read(where: StreamFilter, after: int) -> list[StreamedEvent]:
    with autocommit(get_engine()) as tx:
        return read_stream(tx, after, CATCH_UP_BATCH, where)


def _error_frame(message: str) -> bytes:
    data = json.dumps({"error": message, "reason": "stream_error"})
    return f"event: error\ndata: {data}\n\n".encode()


def _position(value: str | None, name: str, where: Literal["query", "header"]) -> int | None:
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise invalid_parameter(name, "an event id this stream gave (a whole number)", value, where)
    return int(value)


def _sse(frames: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(frames, media_type="text/event-stream", headers=SSE_HEADERS)


EventSource = Literal["DATABASE", "LIVE", "HYBRID"]


@router.get(
    "/v1/workflows/executions/{execution_id}/stream",
    response_class=StreamingResponse,
    tags=["streams"],
    responses={200: {"content": {"text/event-stream": {}}}, **errors(404, 422)},
)
def stream_execution(
    execution_id: ExecutionId,
    event_source: EventSource | None = None,
    last_event_id: str | None = None,
) -> StreamingResponse:
    """The execution's events (every run's), from after `last_event_id`: stored then
    live (HYBRID, the default), stored only (DATABASE) or live only (LIVE). Ends after
    the execution's closing event."""
    record = get_execution(get_engine(), execution_id)
    after = _position(last_event_id, "last_event_id", "query") or 0
    source = event_source or "HYBRID"
    frames = _stream(
        StreamFilter(execution_id=record.execution_id),
        after,
        lambda e: e.execution_id == record.execution_id,
        stored=source != "LIVE",
        live=source != "DATABASE",
        ends=lambda e: e.event_type in CLOSING_TYPES and e.run_id == _current_run(e),
    )
    return _sse(frames)


def _current_run(event: StreamedEvent) -> Any:
    """The run the execution's stream ends with: the one whose closing is the last word.
    A run a reset ended is followed by its successor, so only the current one counts."""
    return get_execution(get_engine(), event.execution_id).run_id


Scope = Literal["activity", "workflow", "*"]


@router.get(
    "/v1/workflows/events/stream",
    response_class=StreamingResponse,
    tags=["streams"],
    responses={200: {"content": {"text/event-stream": {}}}, **errors(422)},
)
def stream_events(
    scope: Scope = "*",
    activity_name: str = "*",
    activity_id: str = "*",
    workflow_name: str = "*",
    workflow_exec_id: str = "*",
    root_workflow_exec_id: str = "*",
    parent_workflow_exec_id: str = "*",
    stream: str = "*",
    start_seq: Annotated[int, Query(ge=0)] = 0,
    workflow_event_types: Annotated[list[str] | None, Query()] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Every event, or those the filters keep (`*`: any), from `start_seq` on (or after
    the Last-Event-ID header's); it goes on until the client leaves."""
    refuse_nul(
        workflow_name=workflow_name,
        workflow_exec_id=workflow_exec_id,
        root_workflow_exec_id=root_workflow_exec_id,
        parent_workflow_exec_id=parent_workflow_exec_id,
    )
    unknown = sorted(set(workflow_event_types or ()) - ev.SDK_EVENT_TYPES)
    if unknown:
        message = f"not event types of the SDK: {unknown}"
        raise invalid_parameter("workflow_event_types", message, workflow_event_types)
    after = max(start_seq - 1, _position(last_event_id, "last-event-id", "header") or 0, 0)

    def given(value: str) -> str | None:
        return None if value == "*" else value

    where = StreamFilter(
        execution_id=given(workflow_exec_id),
        root_execution_id=given(root_workflow_exec_id),
        parent_execution_id=given(parent_workflow_exec_id),
        workflow_name=given(workflow_name),
    )
    wanted_types = frozenset(workflow_event_types or ())

    def keep(event: StreamedEvent) -> bool:
        shown = ev.STREAMED_AS.get(event.event_type, event.event_type)
        attributes = event.attributes
        return (
            (where.execution_id is None or event.execution_id == where.execution_id)
            and (
                where.root_execution_id is None
                or event.root_execution_id == where.root_execution_id
            )
            and (
                where.parent_execution_id is None
                or event.parent_execution_id == where.parent_execution_id
            )
            and (where.workflow_name is None or event.workflow_name == where.workflow_name)
            and (not wanted_types or shown in wanted_types)
            and (scope == "*" or shown.startswith("ACTIVITY_") == (scope == "activity"))
            and (activity_name == "*" or attributes.get("activity_name") == activity_name)
            and (activity_id == "*" or attributes.get("task_id") == activity_id)
            and (stream in ("*", "workflows"))
        )

    return _sse(_stream(where, after, keep))


@router.get("/v1/workflows/events/list", response_model=None, responses=errors(422))
def list_events(
    root_workflow_exec_id: str | None = None,
    workflow_exec_id: str | None = None,
    workflow_run_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> dict[str, Any]:
    """A page of events in stream order, after `cursor` (the last page's last position)."""
    after = _position(cursor, "cursor", "query") or 0
    run_id = None
    if workflow_run_id is not None:
        try:
            run_id = uuid.UUID(workflow_run_id)
        except ValueError:
            message = "not a run id (a UUID)"
            raise invalid_parameter("workflow_run_id", message, workflow_run_id) from None
    refuse_nul(root_workflow_exec_id=root_workflow_exec_id, workflow_exec_id=workflow_exec_id)
    where = StreamFilter(
        execution_id=workflow_exec_id, root_execution_id=root_workflow_exec_id, run_id=run_id
    )
    # Number what is ready first, so that the page holds every event committed so far.
    _number_ready()
    with autocommit(get_engine()) as tx:
        page = read_stream(tx, after, limit + 1, where)
    more = len(page) > limit
    page = page[:limit]
    return {
        "events": [event_json(e) for e in page],
        "next_cursor": str(page[-1].position) if more else None,
    }

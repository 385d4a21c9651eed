"""Running an attempt: the user's function, within the attempt's deadline.

The function runs with no transaction open. Its result is encoded (payloads.encode) here,
so that a value Postgres cannot store fails the attempt for good, once, instead of
failing every write of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.engine.activities.claim import Attempt
from app.engine.binding import bind_input
from app.engine.time_limits import Limit, StartToCloseTimeout
from app.errors import InvalidPayload, PayloadTooLarge
from app.model import events as ev
from app.model.payloads import encode, storable_text
from app.workflows.context import (
    current_activity_execution_id,
    current_heartbeat,
    current_search_keys,
    current_task_events,
)
from app.workflows.errors import WorkflowError


@dataclass(frozen=True)
class Succeeded:
    result: Any  # encoded: JSON Postgres stores


@dataclass(frozen=True)
class Failed:
    failure: dict[str, Any]  # ev.failure(type, message), storable
    retryable: bool = True


Outcome = Succeeded | Failed


def failed(error_type: str, message: str, *, retryable: bool = True) -> Failed:
    return Failed(ev.failure(error_type, storable_text(message)), retryable)


def run_attempt(
    attempt: Attempt,
    heartbeat: Callable[[tuple[Any, ...]], None] | None = None,
    search_keys: Callable[[dict[str, str | None], list[str]], None] | None = None,
    task_events: Callable[[str, dict[str, Any]], None] | None = None,
) -> Outcome:
    """Call the activity's function (its heartbeats go to `heartbeat`, its search keys
    to `search_keys`, its custom tasks' events to `task_events`); what came of it."""
    definition = attempt.definition
    limit = Limit(attempt.seconds_left)
    token = current_activity_execution_id.set(attempt.execution_id)
    heartbeat_token = current_heartbeat.set(heartbeat)
    search_keys_token = current_search_keys.set(search_keys)
    task_events_token = current_task_events.set(task_events)
    try:
        with limit.enforced(StartToCloseTimeout):
            value = _call(attempt)
    except StartToCloseTimeout:
        pass
    except asyncio.CancelledError as exc:
        # Told so by a heartbeat: the attempt is no longer current; nothing is recorded.
        return failed("ActivityCancelled", str(exc), retryable=False)
    except WorkflowError as exc:
        return failed(exc.type, exc.message, retryable=not exc.non_retryable)
    except Exception as exc:
        if not limit.expired:
            return failed(type(exc).__name__, str(exc))
    finally:
        current_task_events.reset(task_events_token)
        current_search_keys.reset(search_keys_token)
        current_heartbeat.reset(heartbeat_token)
        current_activity_execution_id.reset(token)
    if limit.expired:
        return failed(
            "StartToCloseTimeout",
            f"attempt {attempt.attempt} ran longer than its start_to_close_timeout "
            f"({definition.start_to_close_timeout.total_seconds():g}s)",
        )
    try:
        return Succeeded(encode(value, f"the result of activity {definition.name!r}"))
    except (InvalidPayload, PayloadTooLarge) as exc:
        return failed(type(exc).__name__, exc.detail, retryable=False)


def _call(attempt: Attempt) -> Any:
    fn = attempt.definition.fn
    kwargs = bind_input(fn, attempt.input)
    if attempt.definition.is_async:
        return asyncio.run(fn(**kwargs))
    return fn(**kwargs)

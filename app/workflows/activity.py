"""The `@workflows.activity(...)` decorator."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from app.model.retry import RetryPolicy
from app.workflows.compat import no_effect
from app.workflows.context import current_runtime
from app.workflows.registry import DEFAULT_START_TO_CLOSE_TIMEOUT, ActivityDefinition, registry

P = ParamSpec("P")
R = TypeVar("R")


class ActivityDecorator(Protocol):
    """Keeps an async activity's type; a sync one becomes awaitable in workflow code."""

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, Any]: ...


def activity(
    start_to_close_timeout: timedelta = DEFAULT_START_TO_CLOSE_TIMEOUT,
    retry_policy_max_attempts: int | None = None,
    retry_policy_backoff_coefficient: float | None = None,
    name: str | None = None,
    sticky_to_worker: bool = False,
    rate_limit: object | None = None,
    heartbeat_timeout: timedelta | None = None,
    *,
    retry_policy_initial_interval: timedelta | None = None,
    retry_policy_maximum_interval: timedelta | None = None,
    non_retryable_error_types: tuple[str, ...] = (),
) -> ActivityDecorator:
    """Declare a function (sync or async) as an activity.

    Awaited inside workflow code, the call is scheduled as its own Celery task and its
    outcome recorded; called anywhere else, it is the plain function. The positional
    keywords are Mistral's, in Mistral's order; the keyword-only ones are Chainline's.
    """
    if not isinstance(start_to_close_timeout, timedelta):
        raise TypeError("use @workflows.activity(...) with parentheses")
    if sticky_to_worker:
        no_effect("sticky_to_worker", "every worker may run every attempt")
    if rate_limit is not None:
        no_effect("rate_limit", "activities are not rate-limited yet")
    if heartbeat_timeout is not None and not heartbeat_timeout.total_seconds() > 0:
        raise ValueError(f"heartbeat_timeout must be positive, not {heartbeat_timeout!r}")
    default = RetryPolicy()
    policy = RetryPolicy(
        max_attempts=retry_policy_max_attempts or default.max_attempts,
        initial_interval=(
            retry_policy_initial_interval.total_seconds()
            if retry_policy_initial_interval is not None
            else default.initial_interval
        ),
        backoff_coefficient=retry_policy_backoff_coefficient or default.backoff_coefficient,
        maximum_interval=(
            retry_policy_maximum_interval.total_seconds()
            if retry_policy_maximum_interval is not None
            else None
        ),
        non_retryable_error_types=tuple(non_retryable_error_types),
    )

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.isfunction(fn):
            raise TypeError(f"@workflows.activity only decorates functions, not {fn!r}")
        definition = ActivityDefinition(
            name=name or fn.__name__,
            fn=fn,
            start_to_close_timeout=start_to_close_timeout,
            retry_policy=policy,
            heartbeat_timeout=heartbeat_timeout,
        )
        registry.add_activity(definition)

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def call_async(*args: Any, **kwargs: Any) -> Any:
                runtime = current_runtime.get()
                if runtime is None:
                    return await fn(*args, **kwargs)
                return await runtime.schedule_activity(definition, args, kwargs)

            wrapper: Callable[..., Any] = call_async
        else:

            @functools.wraps(fn)
            def call_sync(*args: Any, **kwargs: Any) -> Any:
                runtime = current_runtime.get()
                if runtime is None:
                    return fn(*args, **kwargs)
                return runtime.schedule_activity(definition, args, kwargs)

            wrapper = call_sync
        wrapper.__chainline_activity__ = definition  # type: ignore[attr-defined]
        return wrapper

    return decorate

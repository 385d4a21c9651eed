"""Example workflows: a hello-world, one with retries, one with parallel activities."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pydantic import BaseModel

from app import workflows


class Greeting(BaseModel):
    name: str


@workflows.activity(start_to_close_timeout=timedelta(seconds=10))
def make_greeting(greeting: Greeting) -> str:
    return f"Hello, {greeting.name}!"


@workflows.workflow.define(name="hello-world", execution_timeout=timedelta(minutes=5))
class HelloWorld:
    @workflows.workflow.entrypoint
    async def run(self, greeting: Greeting) -> dict[str, str]:
        return {"message": await make_greeting(greeting)}


@workflows.activity(
    start_to_close_timeout=timedelta(seconds=10),
    retry_policy_max_attempts=5,
    retry_policy_initial_interval=timedelta(milliseconds=200),
)
def flaky_fetch(attempts_before_success: int, attempt_marker: str) -> str:
    """Fails until it has been called `attempts_before_success` times for this marker."""
    _calls[attempt_marker] = _calls.get(attempt_marker, 0) + 1
    if _calls[attempt_marker] <= attempts_before_success:
        raise ConnectionError(f"upstream unavailable (call {_calls[attempt_marker]})")
    return "fetched"


_calls: dict[str, int] = {}


@workflows.workflow.define(name="retry-demo", execution_timeout=timedelta(minutes=5))
class RetryDemo:
    @workflows.workflow.entrypoint
    async def run(self, failures: int = 1) -> str:
        marker = str(workflows.workflow.uuid4())
        fetched: str = await flaky_fetch(failures, marker)
        return fetched


@workflows.activity(start_to_close_timeout=timedelta(seconds=10))
async def square(value: int) -> int:
    await asyncio.sleep(0)
    return value * value


@workflows.workflow.define(name="parallel-squares", execution_timeout=timedelta(minutes=5))
class ParallelSquares:
    @workflows.workflow.entrypoint
    async def run(self, values: list[int]) -> dict[str, int]:
        squares = await asyncio.gather(*(square(v) for v in values))
        return {"sum_of_squares": sum(squares)}

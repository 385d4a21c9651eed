"""Example workflows: a hello-world, one with retries, one with parallel activities, and
one that is talked to while it runs (a signal, a query, an update, a durable timer)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

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


class ApprovalRequest(BaseModel):
    item: str
    wait_seconds: float = 3600


@workflows.workflow.define(name="approval", execution_timeout=timedelta(days=1))
class Approval:
    """Waits up to `wait_seconds` for a decision (the signal `decide`); `status` tells
    where it stands, and the update `comment` adds a comment and returns how many."""

    def __init__(self) -> None:
        self.decision: str | None = None
        self.comments: list[str] = []

    @workflows.workflow.entrypoint
    async def run(self, request: ApprovalRequest) -> dict[str, Any]:
        try:
            await workflows.workflow.wait_condition(
                lambda: self.decision is not None, timeout=request.wait_seconds
            )
        except TimeoutError:
            self.decision = "timed out"
        return {"item": request.item, "decision": self.decision, "comments": self.comments}

    @workflows.workflow.signal(name="decide", description="approve or reject")
    async def decide(self, decision: str) -> None:
        self.decision = decision

    @workflows.workflow.query(name="status")
    def status(self) -> dict[str, Any]:
        return {"decision": self.decision, "comments": self.comments}

    @workflows.workflow.update(name="comment")
    async def comment(self, text: str) -> int:
        self.comments.append(text)
        return len(self.comments)

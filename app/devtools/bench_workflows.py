"""The workflows `chainline bench` measures: no-op activities in sequence, in parallel, alone."""

from __future__ import annotations

import asyncio

from app import workflows


@workflows.activity(name="bench-noop")
def noop(step: int) -> int:
    return step


@workflows.workflow.define(name="bench-sequential")
class BenchSequential:
    @workflows.workflow.entrypoint
    async def run(self, steps: int) -> int:
        for step in range(steps):
            await noop(step)
        return steps


@workflows.workflow.define(name="bench-fan-out")
class BenchFanOut:
    @workflows.workflow.entrypoint
    async def run(self, steps: int) -> int:
        done = await asyncio.gather(*(noop(step) for step in range(steps)))
        return len(done)


@workflows.workflow.define(name="bench-one")
class BenchOne:
    @workflows.workflow.entrypoint
    async def run(self) -> int:
        result: int = await noop(0)
        return result

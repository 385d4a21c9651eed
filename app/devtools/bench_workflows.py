"""The workflows `chainline bench` measures: no-op activities in sequence, in parallel, alone."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

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


@workflows.workflow.define(name="bench-interactive")
class BenchInteractive:
    """Runs one no-op activity per `go` signal, until `stop`; answers `state`, takes `bump`."""

    def __init__(self) -> None:
        self.pending = 0
        self.done = 0
        self.bumps = 0
        self.stopped = False

    @workflows.workflow.entrypoint
    async def run(self) -> int:
        while True:
            await workflows.workflow.wait_condition(lambda: self.pending > 0 or self.stopped)
            if self.pending == 0:
                return self.done
            self.pending -= 1
            await noop(self.done)
            self.done += 1

    @workflows.workflow.signal(name="go")
    async def go(self) -> None:
        self.pending += 1

    @workflows.workflow.signal(name="stop")
    async def stop(self) -> None:
        self.stopped = True

    @workflows.workflow.query(name="state")
    def state(self) -> dict[str, int]:
        return {"done": self.done, "bumps": self.bumps}

    @workflows.workflow.update(name="bump")
    async def bump(self, by: int) -> int:
        self.bumps += by
        return self.bumps


@workflows.workflow.define(name="bench-sleep")
class BenchSleep:
    """Sleeps until `until` (seconds since the epoch), then returns it."""

    @workflows.workflow.entrypoint
    async def run(self, until: float) -> float:
        await workflows.workflow.sleep(max(0.0, until - workflows.workflow.now().timestamp()))
        return until


@workflows.activity(name="bench-block", start_to_close_timeout=timedelta(minutes=5))
def block(seconds: float) -> float:
    """Keeps a pool process busy (the busy-worker figures)."""
    time.sleep(seconds)
    return seconds


@workflows.workflow.define(name="bench-busy")
class BenchBusy:
    @workflows.workflow.entrypoint
    async def run(self, seconds: float) -> float:
        result: float = await block(seconds)
        return result

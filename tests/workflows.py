"""Workflows the integration and acceptance tests run (CHAINLINE_WORKFLOWS=tests.workflows).

Activities that must wait for the test coordinate through files in a folder the test
passes in, so that no test depends on timing.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from app import workflows

FAST_RETRY = timedelta(milliseconds=100)


class Order(BaseModel):
    order_id: str
    amount: int


class Receipt(BaseModel):
    order_id: str
    charged: int
    approved_by: str


@workflows.activity(start_to_close_timeout=timedelta(seconds=10))
def add(total: int, value: int) -> int:
    return total + value


@workflows.activity(start_to_close_timeout=timedelta(seconds=10))
async def square(value: int) -> int:
    await asyncio.sleep(0.01)
    return value * value


@workflows.activity(start_to_close_timeout=timedelta(seconds=10))
def approve(order: Order, approver: str) -> Receipt:
    return Receipt(order_id=order.order_id, charged=order.amount, approved_by=approver)


@workflows.workflow.define(name="sequential-sum")
class SequentialSum:
    @workflows.workflow.entrypoint
    async def run(self, values: list[int]) -> dict[str, int]:
        total = 0
        for value in values:
            total = await add(total, value)
        return {"total": total}


@workflows.workflow.define(name="fan-out-squares")
class FanOutSquares:
    @workflows.workflow.entrypoint
    async def run(self, values: list[int]) -> dict[str, Any]:
        squares = await asyncio.gather(*(square(v) for v in values))
        return {"squares": list(squares), "sum": sum(squares)}


@workflows.workflow.define(name="order-approval")
class OrderApproval:
    @workflows.workflow.entrypoint
    async def run(self, order: Order) -> dict[str, Any]:
        approver = "manager" if order.amount > 100 else "auto"
        receipt: Receipt = await approve(order, approver)
        rounds = 0
        total = receipt.charged
        while total < 1000:
            total = await add(total, total)
            rounds += 1
        return {"receipt": receipt.model_dump(), "doubling_rounds": rounds, "total": total}


def _count_call(folder: str, name: str = "calls") -> int:
    calls = Path(folder) / name
    with calls.open("a") as f:
        f.write(f"{os.getpid()}\n")
    return len(calls.read_text().splitlines())


def calls(folder: Path, name: str = "calls") -> int:
    """How many times the activities that count into `name` ran."""
    path = folder / name
    return len(path.read_text().splitlines()) if path.exists() else 0


@workflows.activity(
    start_to_close_timeout=timedelta(seconds=10),
    retry_policy_max_attempts=4,
    retry_policy_initial_interval=FAST_RETRY,
    retry_policy_backoff_coefficient=2.0,
)
def flaky(folder: str, failures: int) -> str:
    call = _count_call(folder)
    if call <= failures:
        raise ConnectionError(f"upstream down on call {call}")
    return f"succeeded on call {call}"


@workflows.workflow.define(name="flaky")
class Flaky:
    @workflows.workflow.entrypoint
    async def run(self, folder: str, failures: int) -> str:
        result: str = await flaky(folder, failures)
        return result


@workflows.workflow.define(name="caught-failure")
class CaughtFailure:
    @workflows.workflow.entrypoint
    async def run(self, folder: str) -> dict[str, Any]:
        try:
            await flaky(folder, 99)
        except workflows.ActivityError as error:
            return {"caught": error.cause.type, "message": error.cause.message}
        return {"caught": None, "message": ""}


@workflows.activity(
    start_to_close_timeout=timedelta(seconds=10),
    retry_policy_max_attempts=5,
    retry_policy_initial_interval=FAST_RETRY,
    non_retryable_error_types=("PermissionError",),
)
def refuses(how: str) -> None:
    """Fails in a way no retry can fix: said by the error, or by the error's type."""
    if how == "non_retryable":
        raise workflows.WorkflowError("card declined", type="CardDeclined", non_retryable=True)
    raise PermissionError("not allowed")


@workflows.workflow.define(name="refused")
class Refused:
    @workflows.workflow.entrypoint
    async def run(self, how: str) -> dict[str, Any]:
        try:
            await refuses(how)
        except workflows.ActivityError as error:
            return {"type": error.cause.type, "attempts": error.attempt}
        return {"type": None, "attempts": 0}


@workflows.workflow.define(name="raises")
class Raises:
    @workflows.workflow.entrypoint
    async def run(self, reason: str) -> None:
        raise ValueError(reason)


def _wait_for(path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.02)
    return False


@workflows.activity(start_to_close_timeout=timedelta(seconds=60), retry_policy_max_attempts=1)
def wait_for_release(folder: str) -> str:
    """Says it started, then waits (up to 30 s) for the test to release it."""
    (Path(folder) / "started").write_text(str(os.getpid()))
    released = _wait_for(Path(folder) / "release", 30)
    (Path(folder) / "finished").write_text("released" if released else "gave up")
    return "released" if released else "gave up"


@workflows.workflow.define(name="held", execution_timeout=timedelta(minutes=5))
class Held:
    @workflows.workflow.entrypoint
    async def run(self, folder: str) -> str:
        result: str = await wait_for_release(folder)
        return result


@workflows.workflow.define(name="short-deadline", execution_timeout=timedelta(seconds=2))
class ShortDeadline:
    @workflows.workflow.entrypoint
    async def run(self, folder: str) -> str:
        result: str = await wait_for_release(folder)
        return result


@workflows.activity(
    start_to_close_timeout=timedelta(seconds=60),
    retry_policy_max_attempts=3,
    retry_policy_initial_interval=FAST_RETRY,
)
def killable(folder: str) -> dict[str, int]:
    """The first attempt records its pid and blocks until killed; later ones return."""
    pid_file = Path(folder) / "victim-pid"
    call = _count_call(folder)
    if not pid_file.exists():
        pid_file.write_text(str(os.getpid()))
        _wait_for(Path(folder) / "never", 50)
    return {"call": call}


@workflows.workflow.define(name="killable")
class Killable:
    @workflows.workflow.entrypoint
    async def run(self, folder: str) -> dict[str, int]:
        result: dict[str, int] = await killable(folder)
        return result


@workflows.activity(start_to_close_timeout=timedelta(seconds=10))
def echo(value: Any) -> Any:
    return value


@workflows.workflow.define(name="replay-safe")
class ReplaySafe:
    @workflows.workflow.entrypoint
    async def run(self) -> dict[str, Any]:
        first = {
            "now": workflows.workflow.now().isoformat(),
            "uuid": str(workflows.workflow.uuid4()),
            "random": workflows.workflow.random().random(),
            "execution_id": workflows.get_execution_id(),
        }
        recorded = await echo(first)
        return {"first": first, "recorded": recorded}


@workflows.activity(start_to_close_timeout=timedelta(seconds=10))
def make_text(size: int) -> str:
    return "x" * size


@workflows.workflow.define(name="big-result")
class BigResult:
    @workflows.workflow.entrypoint
    async def run(self, where: str, size: int) -> str:
        if where == "activity":
            text: str = await make_text(size)
            return text[:10]
        return "y" * size


@workflows.workflow.define(name="fan-out-with-retry")
class FanOutWithRetry:
    @workflows.workflow.entrypoint
    async def run(self, folder: str) -> list[Any]:
        return list(await asyncio.gather(flaky(folder, 1), square(3), square(4)))


@workflows.activity(
    start_to_close_timeout=timedelta(seconds=3),
    retry_policy_max_attempts=3,
    retry_policy_initial_interval=FAST_RETRY,
)
def outlives_its_worker(folder: str) -> dict[str, int]:
    """The first attempt records its pid and waits; the test kills its whole worker."""
    pid_file = Path(folder) / "victim-pid"
    call = _count_call(folder)
    if not pid_file.exists():
        pid_file.write_text(str(os.getpid()))
        _wait_for(Path(folder) / "never", 2.5)
    return {"call": call}


@workflows.workflow.define(name="worker-dies")
class WorkerDies:
    @workflows.workflow.entrypoint
    async def run(self, folder: str) -> dict[str, int]:
        result: dict[str, int] = await outlives_its_worker(folder)
        return result


@workflows.workflow.define(name="fire-and-forget")
class FireAndForget:
    @workflows.workflow.entrypoint
    async def run(self) -> str:
        add(1, 2)  # started, never awaited: the workflow ends first
        return "done"


class Unbuildable:
    def __init__(self) -> None:
        raise RuntimeError("cannot build the workflow")


@workflows.workflow.define(name="unbuildable")
class UnbuildableWorkflow(Unbuildable):
    @workflows.workflow.entrypoint
    async def run(self) -> None:
        return None


# What the guarantee tests run: activities that count their calls, each into a file of
# its own, so that a test can tell which ran again.


@workflows.activity(
    start_to_close_timeout=timedelta(seconds=60),
    retry_policy_max_attempts=3,
    retry_policy_initial_interval=FAST_RETRY,
)
def counted(folder: str, label: str) -> str:
    _count_call(folder, f"calls-{label}")
    return label


@workflows.activity(
    start_to_close_timeout=timedelta(seconds=60),
    retry_policy_max_attempts=3,
    retry_policy_initial_interval=FAST_RETRY,
)
def counted_and_held(folder: str) -> str:
    """Counts its call, says it started, then waits (up to 50 s) for the test's release."""
    _count_call(folder, "calls-held")
    (Path(folder) / "started").write_text(str(os.getpid()))
    released = _wait_for(Path(folder) / "release", 50)
    return "released" if released else "gave up"


@workflows.workflow.define(name="counted-then-held", execution_timeout=timedelta(minutes=5))
class CountedThenHeld:
    @workflows.workflow.entrypoint
    async def run(self, folder: str) -> list[str]:
        first: str = await counted(folder, "first")
        held: str = await counted_and_held(folder)
        last: str = await counted(folder, "last")
        return [first, held, last]


@workflows.activity(start_to_close_timeout=timedelta(seconds=60), retry_policy_max_attempts=1)
def sleep_for(folder: str, seconds: float) -> str:
    """Writes its pid, sleeps, then says it finished."""
    (Path(folder) / "sleeper-pid").write_text(str(os.getpid()))
    time.sleep(seconds)
    (Path(folder) / "finished").write_text("finished")
    return "slept"


@workflows.workflow.define(name="overdue-sleeper", execution_timeout=timedelta(seconds=3))
class OverdueSleeper:
    @workflows.workflow.entrypoint
    async def run(self, folder: str, seconds: float) -> str:
        result: str = await sleep_for(folder, seconds)
        return result


@workflows.activity(start_to_close_timeout=timedelta(seconds=10))
def unstorable(folder: str, kind: str) -> Any:
    """Returns a value JSON cannot hold (NaN, Infinity) or Postgres will not (a NUL)."""
    _count_call(folder)
    return {"nan": float("nan"), "infinity": float("inf"), "nul": "a\u0000b"}[kind]


@workflows.workflow.define(name="unstorable-result")
class UnstorableResult:
    @workflows.workflow.entrypoint
    async def run(self, folder: str, kind: str) -> Any:
        return await unstorable(folder, kind)


# Workflows that are talked to while they run: signals, queries, updates, timers, cancel.


@workflows.activity(start_to_close_timeout=timedelta(seconds=10))
def reserve(folder: str, item: str) -> str:
    _count_call(folder, "calls-reserve")
    return f"reservation-{item}"


@workflows.activity(start_to_close_timeout=timedelta(seconds=10))
def release_reservation(folder: str, reservation: str) -> str:
    _count_call(folder, "calls-release")
    return f"released {reservation}"


@workflows.workflow.define(name="approval-saga", execution_timeout=timedelta(minutes=5))
class ApprovalSaga:
    """Reserves, then waits for a decision (a signal) with a timeout; releases the
    reservation (its compensation) unless approved."""

    def __init__(self) -> None:
        self.decision: str | None = None
        self.notes: list[str] = []
        self.limit = 100

    @workflows.workflow.entrypoint
    async def run(self, folder: str, item: str, wait_seconds: float = 60) -> dict[str, Any]:
        reservation: str = await reserve(folder, item)
        try:
            await workflows.workflow.wait_condition(
                lambda: self.decision is not None, timeout=timedelta(seconds=wait_seconds)
            )
        except TimeoutError:
            self.decision = "timed out"
        if self.decision != "approve":
            released: str = await release_reservation(folder, reservation)
            return {"outcome": released, "decision": self.decision, "notes": self.notes}
        return {"outcome": "approved", "notes": self.notes, "limit": self.limit}

    @workflows.workflow.signal(name="decide", description="approve or reject")
    async def decide(self, decision: str) -> None:
        self.decision = decision

    @workflows.workflow.signal(name="note")
    async def note(self, text: str) -> None:
        self.notes.append(text)

    @workflows.workflow.query(name="status")
    def status(self) -> dict[str, Any]:
        return {"decision": self.decision, "notes": self.notes, "limit": self.limit}

    @workflows.workflow.update(name="set-limit")
    async def set_limit(self, limit: int) -> dict[str, int]:
        if limit <= 0:
            raise workflows.WorkflowError("the limit must be positive", type="BadLimit")
        old, self.limit = self.limit, limit
        return {"old": old, "new": limit}


@workflows.workflow.define(name="sleeper", execution_timeout=timedelta(minutes=5))
class Sleeper:
    """Sleeps on a durable timer; cancelled, it runs a clean-up activity, then lets the
    cancellation end it (or, `catch`, ends as it says)."""

    @workflows.workflow.entrypoint
    async def run(self, folder: str, seconds: float, catch: bool = False) -> dict[str, Any]:
        try:
            await workflows.workflow.sleep(timedelta(seconds=seconds))
        except asyncio.CancelledError:
            cleaned: str = await counted(folder, "cleanup")
            if catch:
                return {"cancelled": True, "cleaned": cleaned}
            raise
        return {"slept": seconds, "woke_at": workflows.workflow.now().isoformat()}


@workflows.workflow.define(name="held-for-cancel", execution_timeout=timedelta(minutes=5))
class HeldForCancel:
    """Waits on an activity the test holds; cancelled, it compensates and says so."""

    @workflows.workflow.entrypoint
    async def run(self, folder: str) -> dict[str, Any]:
        try:
            held: str = await counted_and_held(folder)
        except asyncio.CancelledError:
            cleaned: str = await counted(folder, "cleanup")
            return {"cancelled": True, "cleaned": cleaned}
        return {"cancelled": False, "held": held}


@workflows.workflow.define(name="signal-counter", execution_timeout=timedelta(minutes=5))
class SignalCounter:
    """Collects `expected` signals, each with its number, then returns them in order."""

    def __init__(self) -> None:
        self.received: list[int] = []

    @workflows.workflow.entrypoint
    async def run(self, expected: int) -> list[int]:
        await workflows.workflow.wait_condition(lambda: len(self.received) >= expected)
        return self.received

    @workflows.workflow.signal(name="add")
    async def add_one(self, number: int) -> None:
        self.received.append(number)

    @workflows.workflow.query(name="received")
    def so_far(self) -> list[int]:
        return self.received

    @workflows.workflow.update(name="add-and-double")
    async def add_and_double(self, number: int) -> int:
        doubled: int = await add(number, number)
        self.received.append(number)
        return doubled


@workflows.workflow.define(name="query-misuse")
class QueryMisuse:
    @workflows.workflow.entrypoint
    async def run(self) -> None:
        await workflows.workflow.wait_condition(lambda: False)

    @workflows.workflow.query(name="sneaky")
    def sneaky(self) -> str:
        add(1, 2)  # a query may not schedule anything
        return "should not get here"


# Heartbeats.


@workflows.activity(
    start_to_close_timeout=timedelta(seconds=60),
    heartbeat_timeout=timedelta(seconds=2),
    retry_policy_max_attempts=3,
    retry_policy_initial_interval=FAST_RETRY,
)
def beating(folder: str, beats: int) -> str:
    """Heartbeats `beats` times with its progress, then returns; the first attempt, once
    past its beats, goes silent (hangs) until the test's "release" file appears. Whether
    cancelled or not, says in "cleaned-<call>" that its finally block ran."""
    call = _count_call(folder, "calls-beating")
    try:
        (Path(folder) / "started").write_text(str(os.getpid()))
        for done in range(beats):
            workflows.activity_heartbeat({"done": done + 1})
            time.sleep(0.05)
        if call == 1:
            _wait_for(Path(folder) / "release", 50)
        return f"call {call} beat {beats} times"
    finally:
        (Path(folder) / f"cleaned-{call}").write_text("cleaned")


@workflows.activity(
    start_to_close_timeout=timedelta(seconds=60),
    heartbeat_timeout=timedelta(seconds=5),
    retry_policy_max_attempts=1,
)
def beating_until_cancelled(folder: str) -> str:
    """Heartbeats until told to stop (the heartbeat raises), then cleans up."""
    try:
        (Path(folder) / "started").write_text(str(os.getpid()))
        for _ in range(1000):
            workflows.activity_heartbeat("working")
            time.sleep(0.05)
        return "never cancelled"
    finally:
        (Path(folder) / "cleaned").write_text("cleaned")


@workflows.workflow.define(name="heartbeats", execution_timeout=timedelta(minutes=5))
class Heartbeating:
    @workflows.workflow.entrypoint
    async def run(self, folder: str, beats: int) -> str:
        result: str = await beating(folder, beats)
        return result


@workflows.workflow.define(name="heartbeat-cancel", execution_timeout=timedelta(minutes=5))
class HeartbeatCancel:
    @workflows.workflow.entrypoint
    async def run(self, folder: str) -> str:
        result: str = await beating_until_cancelled(folder)
        return result


@workflows.workflow.define(
    name="keyed-order", search_keys=["customer.tier", "region", "coupon", "customer.missing"]
)
class KeyedOrder:
    """Searchable by its customer's tier, its region and its coupon (a null one too)."""

    @workflows.workflow.entrypoint
    async def run(self, customer: dict[str, Any], region: str, coupon: str | None = None) -> str:
        return region


class CounterState(BaseModel):
    count: int
    target: int


@workflows.workflow.define(name="counter")
class Counter:
    """Counts to `target`, one execution per step: each continues as new with the next."""

    @workflows.workflow.entrypoint
    async def run(self, count: int, target: int) -> dict[str, int]:
        count = await add(count, 1)
        if count < target:
            workflows.workflow.continue_as_new(CounterState(count=count, target=target))
        return {"count": count}


@workflows.workflow.define(name="until-suggested")
class UntilSuggested:
    """Adds one at a time, continuing as new each time the engine suggests it."""

    @workflows.workflow.entrypoint
    async def run(self, done: int, total: int) -> dict[str, int]:
        while done < total:
            done = await add(done, 1)
            if workflows.workflow.should_continue_as_new():
                workflows.workflow.continue_as_new({"done": done, "total": total})
        return {"done": done}


@workflows.workflow.define(name="never-continues")
class NeverContinues:
    """Ignores should_continue_as_new(): the history cap ends it."""

    @workflows.workflow.entrypoint
    async def run(self, total: int) -> int:
        done = 0
        while done < total:
            done = await add(done, 1)
        return done


@workflows.workflow.define(name="square-child")
class SquareChild:
    @workflows.workflow.entrypoint
    async def run(self, value: int) -> int:
        result: int = await square(value)
        return result


@workflows.workflow.define(name="child-gatherer")
class ChildGatherer:
    """Starts one child per value, all at once, and gathers their results."""

    @workflows.workflow.entrypoint
    async def run(self, values: list[int]) -> dict[str, Any]:
        squares = await asyncio.gather(
            *(workflows.workflow.execute_workflow(SquareChild, {"value": v}) for v in values)
        )
        return {"squares": list(squares)}


@workflows.workflow.define(name="failing-child")
class FailingChild:
    @workflows.workflow.entrypoint
    async def run(self, reason: str) -> int:
        raise workflows.WorkflowError(reason, type="ChildRefused")


@workflows.workflow.define(name="child-failure-catcher")
class ChildFailureCatcher:
    """Catches its child's failure, and a child whose id is taken."""

    @workflows.workflow.entrypoint
    async def run(self, taken_id: str | None = None) -> dict[str, Any]:
        caught: dict[str, Any] = {}
        try:
            await workflows.workflow.execute_workflow(FailingChild, {"reason": "nope"})
        except workflows.ChildWorkflowError as error:
            caught["failed"] = [error.status, error.type, error.message]
        if taken_id is not None:
            try:
                await workflows.workflow.execute_workflow(
                    SquareChild, {"value": 2}, execution_id=taken_id
                )
            except workflows.ChildWorkflowError as error:
                caught["taken"] = [error.status, error.type]
        return caught


@workflows.workflow.define(name="child-starter")
class ChildStarter:
    """Starts a `held` child without waiting for it, and ends at once."""

    @workflows.workflow.entrypoint
    async def run(self, folder: str, policy: str) -> str:
        handle = await workflows.workflow.execute_workflow(
            Held,
            {"folder": folder},
            wait=False,
            parent_close_policy=workflows.ParentClosePolicy[policy],
        )
        child_id: str = handle.execution_id
        return child_id


@workflows.activity(start_to_close_timeout=timedelta(seconds=10))
async def tag_customer(tier: str) -> str:
    await workflows.workflow.add_search_keys({"customer.tier": tier, "stage": "activity"})
    return tier


@workflows.workflow.define(name="self-tagging")
class SelfTagging:
    """Changes its own search keys as it goes: from its code and from an activity."""

    @workflows.workflow.entrypoint
    async def run(self, tier: str) -> str:
        await workflows.workflow.add_search_keys({"stage": "started", "scratch": "x"})
        await tag_customer(tier)
        await workflows.workflow.delete_search_keys(["scratch", "never-set"])
        await workflows.workflow.add_search_keys({"stage": "done", "coupon": None})
        return tier


@workflows.activity(start_to_close_timeout=timedelta(seconds=10))
async def export_rows(rows: int) -> int:
    async with workflows.task("export", state={"done": 0}) as progress:
        for done in range(1, rows + 1):
            await progress.update_state({"done": done})
    return rows


@workflows.workflow.define(name="reporting-progress")
class ReportingProgress:
    """Reports its progress as custom tasks, from its code and from an activity."""

    @workflows.workflow.entrypoint
    async def run(self, rows: int) -> int:
        async with workflows.task("plan", state={"step": "start"}) as plan:
            await plan.update_state({"step": "exporting"})
            done: int = await export_rows(rows)
            await plan.set_state({"step": "done", "rows": done})
        try:
            async with workflows.task("doomed"):
                raise workflows.WorkflowError("not this time")
        except workflows.WorkflowError:
            pass
        return done

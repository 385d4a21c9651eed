"""Attempt leases in Redis: claiming an activity attempt without a Postgres transaction.

An attempt is claimed before it runs, so that a second delivery of its message can tell
a live attempt (leave it alone) from a lost one (record it as failed, retry by the
policy). Most attempts finish within milliseconds, so the claim is a Redis `SET NX`
and Postgres hears of the attempt once, in the transaction that records its outcome,
together with its real start time. An attempt still running after
`record_started_after_seconds` is written to Postgres as started by the worker running
it, so history shows long attempts while they run (see activity_tasks.py).

A new activity's first attempt skips Postgres altogether: its message carries a *claim
ticket* (the run's execution id, the activity's name and input, its lease time, and
perhaps a run snapshot; see activity_tasks.py), and the claim is the lease's `SET NX`
alone. A ticket is honoured for TICKET_SECONDS after it was issued; a message taken
later (behind a backlog, say) reads Postgres as any other. Within those seconds an
activity can start though its run closed meanwhile, as a Temporal activity task already
handed to a worker does; its outcome is then discarded.

Keys are per attempt and outlive their lease, so a lost attempt stays recognisable
until a redelivered message or the sweeper finds it. A key is set to expire
KEY_RETENTION_SECONDS after its lease does, so whether the lease has run out is read
off the key's remaining time: Redis's clock decides, not those of the workers.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, replace
from functools import lru_cache

import redis

from app.settings import get_settings

# How long a lease key stays after its lease ends: room for the sweeper to find a
# lost attempt. A finished attempt keeps its key briefly, so that a duplicate message
# read the activity before the outcome committed still sees the attempt as taken.
KEY_RETENTION_SECONDS = 3600
FINISHED_KEY_SECONDS = 60
SOCKET_TIMEOUT_SECONDS = 5.0

# A claim ticket is honoured this long after it was issued; a later claim reads Postgres.
# It bounds how long after its run closed an activity can still start (the outcome of
# such an attempt is discarded). A message within it whose attempt was ever claimed
# finds that attempt's key, which lives FINISHED_KEY_SECONDS past its end at least:
# so tickets stay safe while the workers' clocks agree to within the difference.
TICKET_SECONDS = 10
# Inputs larger than this (as JSON) stay in Postgres only.
TICKET_MAX_INPUT_BYTES = 4096
# A run snapshot travels with its ticket while its history is at most this large (as
# JSON); longer runs record outcomes after reading the run under its lock.
TICKET_MAX_HISTORY_BYTES = 16384


@dataclass(frozen=True)
class Lease:
    attempt: int
    owner: str  # host:pid of the worker process running the attempt
    started_ns: int  # by the owner's clock: when the attempt began, for its history
    lease_seconds: float
    token: str

    def to_json(self) -> str:
        # Spelled out: dataclasses.asdict copies deeply, a cost paid on every claim.
        return json.dumps(
            {
                "attempt": self.attempt,
                "owner": self.owner,
                "started_ns": self.started_ns,
                "lease_seconds": self.lease_seconds,
                "token": self.token,
            }
        )


@dataclass(frozen=True)
class Taken:
    """The attempt is leased already; `holder` is whoever took it."""

    holder: Lease
    expired: bool


class LeaseStore:
    def __init__(self, client: redis.Redis, prefix: str = "") -> None:
        self.client = client
        self.prefix = prefix
        # Keys of finished attempts, shortened with this process's next acquire: that
        # saves each attempt a round trip of its own.
        self._finished: list[str] = []

    @classmethod
    def from_url(cls, url: str, prefix: str = "") -> LeaseStore:
        # A Redis that stops answering fails the claim (a transient error, retried)
        # instead of hanging the worker process.
        client = redis.Redis.from_url(
            url,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
        )
        return cls(client, prefix)

    def key(self, run_id: uuid.UUID, seq: int, attempt: int) -> str:
        return f"{self.prefix}chainline:lease:{run_id}:{seq}:{attempt}"

    def acquire(
        self, run_id: uuid.UUID, seq: int, attempt: int, *, owner: str, lease_seconds: float
    ) -> Lease | Taken:
        """Take the attempt for `owner` in one round trip, or say who holds it in two."""
        lease = Lease(
            attempt=attempt,
            owner=owner,
            started_ns=time.time_ns(),
            lease_seconds=lease_seconds,
            token=uuid.uuid4().hex,
        )
        key = self.key(run_id, seq, attempt)
        retention_ms = int((lease_seconds + KEY_RETENTION_SECONDS) * 1000)
        for _ in range(3):
            pipeline = self._pipeline_finishing()
            pipeline.set(key, lease.to_json(), nx=True, px=retention_ms)
            *_, acquired = pipeline.execute()
            if acquired:
                return lease
            # Taken: whose, and for how long (rare enough to pay a second round trip).
            reading = self.client.pipeline(transaction=False)
            reading.get(key)
            reading.pttl(key)
            current, remaining_ms = reading.execute()
            if current is not None:
                # A key without a time to live (-1) was not set here: never expired.
                # One gone since the GET (-2) outlived its lease long ago.
                expired = remaining_ms == -2 or 0 <= remaining_ms <= KEY_RETENTION_SECONDS * 1000
                return Taken(Lease(**json.loads(current)), expired)
            # The key expired between the commands: try again.
        raise RuntimeError(f"could not read the lease of {key}")

    def release(self, run_id: uuid.UUID, seq: int, lease: Lease) -> None:
        """Give the attempt up: the lease names no owner, so it counts as lost."""
        released = replace(lease, owner="").to_json()
        self.client.set(self.key(run_id, seq, lease.attempt), released, xx=True, keepttl=True)

    def finish(self, run_id: uuid.UUID, seq: int, attempt: int) -> None:
        """The attempt's fate is in Postgres: its key only has to outlast stale reads
        (which find its lease run out, then the outcome in Postgres). Applied with
        this process's next acquire, or by `flush`."""
        self._finished.append(self.key(run_id, seq, attempt))

    def flush(self) -> None:
        """Shorten the keys of finished attempts now."""
        self._pipeline_finishing().execute()

    def _pipeline_finishing(self) -> redis.client.Pipeline:
        finished, self._finished = self._finished, []
        pipeline = self.client.pipeline(transaction=False)
        for key in finished:
            pipeline.pexpire(key, FINISHED_KEY_SECONDS * 1000)
        return pipeline


@lru_cache(maxsize=1)
def get_lease_store() -> LeaseStore | None:
    """The process's lease store; None when no Redis is configured (claims go to Postgres)."""
    settings = get_settings()
    url = settings.lease_store_url
    return None if url is None else LeaseStore.from_url(url, settings.broker_key_prefix)

"""What waits in the broker's queues: how many messages, and how long the oldest has.

Every message Chainline publishes carries the time it was sent (broker.SENT_AT_HEADER).
The depth comes from the broker itself
(a passive queue declaration, which every kombu transport answers). The oldest
message's age is read only from Redis, where the next message to deliver can be
looked at without taking it (the far end of the queue's list, where kombu pops);
RabbitMQ shows nothing without delivering it, so there the age is unknown. The age is
measured against this host's clock, so hosts whose clocks disagree skew it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from celery import Celery

from app.messaging.broker import SENT_AT_HEADER
from app.settings import REDIS_BROKER_SCHEMES


@dataclass(frozen=True)
class QueueState:
    name: str
    depth: int
    oldest_age_seconds: float | None


def read_queues(celery_app: Celery, names: list[str], key_prefix: str = "") -> list[QueueState]:
    """Each queue's depth and (Redis only) its oldest message's age; raises what the
    broker raises when it cannot be reached."""
    on_redis = str(celery_app.conf.broker_url).startswith(REDIS_BROKER_SCHEMES)
    states = []
    with celery_app.connection_for_read() as connection:
        connection.ensure_connection(max_retries=1)
        for name in names:
            # A channel each: RabbitMQ closes the channel of a declaration it refuses.
            with connection.channel() as channel:
                depth = _depth(channel, name, on_redis=on_redis)
                age = _oldest_age(channel, key_prefix + name) if on_redis and depth else None
            states.append(QueueState(name, depth, age))
    return states


def _depth(channel: Any, name: str, *, on_redis: bool) -> int:
    # Redis keeps no queue objects: a declaration there creates nothing and answers the
    # list's length (a passive one would look for the key without the broker's key
    # prefix). RabbitMQ's must be passive, lest its arguments differ from Celery's.
    try:
        _, depth, _ = channel.queue_declare(queue=name, passive=not on_redis)
    except Exception as exc:  # kombu raises its transport's own "not found"
        if "NOT_FOUND" in str(exc) or "404" in str(exc):
            return 0  # no worker declared it yet
        raise
    return int(depth)


def _oldest_age(channel: Any, key: str) -> float | None:
    # kombu pushes on the left and pops from the right. LINDEX is not among the
    # commands kombu's client prefixes, so the key carries the prefix itself.
    raw = channel.client.lindex(key, -1)
    if raw is None:
        return None
    try:
        sent_at = json.loads(raw)["headers"][SENT_AT_HEADER]
    except (ValueError, KeyError, TypeError):
        return None  # sent by something else, or before the header existed
    return max(0.0, time.time() - float(sent_at))

"""kombu's Redis transport and Celery's Redis result backend, trimmed for Chainline.

Every activity is a Celery message, so what kombu spends per message is spent per
activity: here, one cost goes (a new redis-py client for every command kombu sends to
Redis, `ClientKeepingTransport`) and one leak (the Redis subscriptions a chord's
publisher is left with, `PublishingRedisBackend`). The worker's own trim, batched task
events, is in workers/consumer.py.
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend
from kombu.transport import redis as kombu_redis

from app.settings import REDIS_BROKER_SCHEMES


class ClientKeepingChannel(kombu_redis.Channel):
    """A Redis channel that keeps one redis-py client for the commands it sends.

    kombu builds a new client for each command it sends outside the receiving loop:
    each message published, its task-sent event, each acknowledgement. Building one
    costs about 0.15 ms of CPU, a third of what a publish costs. A client holds no
    connection of its own (it borrows from the channel's pool per command), so one
    can serve them all. Receiving keeps kombu's own asynchronous client.
    """

    _kept_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            # kombu's stubs leave out this private method, the one to override.
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        if self._kept_client is None:
            self._kept_client = super()._create_client()  # type: ignore[misc]
        return self._kept_client


class ClientKeepingTransport(kombu_redis.Transport):
    Channel = ClientKeepingChannel


class PublishingRedisBackend(RedisBackend):
    """The Redis result backend of an app that publishes work and never waits for it.

    Publishing a chord registers each member's result as pending, for a caller that
    may wait on the group, and on Redis that subscribes the publisher to the member's
    result channel. Chainline's dispatcher never waits (the chord's callback is the
    workflow task), and Celery drops those subscriptions only when the results are
    garbage collected, which the chord's reference cycles put off indefinitely: an API
    or worker process gathered one subscription per fan-out activity it published,
    and with it every result published to them, unread. Nothing is registered here.
    Chord bookkeeping (`apply_chord`) and storing results are the stock backend's.
    """

    def add_pending_result(
        self, result: Any, weak: bool = False, start_drainer: bool = True
    ) -> Any:
        return result

    def add_pending_results(self, results: Any, weak: bool = False) -> Any:
        return results


PUBLISHING_REDIS_BACKEND = f"{__name__}:{PublishingRedisBackend.__name__}"


def broker_transport(broker_url: str) -> type[Any] | None:
    """The kombu transport for this broker: ours on Redis, the URL's own otherwise."""
    return ClientKeepingTransport if broker_url.startswith(REDIS_BROKER_SCHEMES) else None

"""What the dispatcher publishes, read back from a real Redis broker."""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from kombu.exceptions import BatchPublishError
from kombu.transport import redis as kombu_redis

from app.engine.dispatch import ActivityDispatch, Dispatch, FollowUp
from app.messaging.broker import (
    SENT_AT_HEADER,
    TIME_LIMIT_MARGIN_SECONDS,
    WORKFLOW_TASK,
    create_celery_app,
)
from app.messaging.dispatcher import CeleryDispatcher
from app.messaging.queues import QueueState, read_queues
from app.messaging.transports import ClientKeepingTransport, broker_transport
from app.settings import Settings
from tests.support import BROKER_URL, delete_broker_keys, wait_until

QUEUE = "dispatch-test"
WORKFLOW_QUEUE = f"{QUEUE}.workflow-tasks"


@pytest.fixture
def prefix() -> Iterator[str]:
    prefix = f"chainline-dispatch-test-{uuid.uuid4().hex[:8]}:"
    yield prefix
    delete_broker_keys(prefix)


@pytest.fixture
def dispatcher(prefix: str) -> Iterator[CeleryDispatcher]:
    settings = Settings(broker_url=BROKER_URL, broker_key_prefix=prefix, queue=QUEUE)
    dispatcher = CeleryDispatcher(create_celery_app(settings, publish_only=True))
    yield dispatcher
    dispatcher.publisher.close()


def send(dispatcher: CeleryDispatcher, *dispatches: Dispatch) -> None:
    dispatcher.send([FollowUp("test", dispatches=dispatches)])


def published(prefix: str, queue: str = QUEUE) -> list[dict[str, Any]]:
    """The queue's messages, oldest first: headers, and the body decoded."""
    with redis.Redis.from_url(BROKER_URL) as client:
        queued = client.lrange(f"{prefix}{queue}", 0, -1)
    messages = []
    for raw in reversed(queued):
        message = json.loads(raw)
        message["body"] = json.loads(base64.b64decode(message["body"]))
        messages.append(message)
    return messages


def test_an_activity_goes_out_as_a_chain_ending_in_the_workflow_task(
    dispatcher: CeleryDispatcher, prefix: str
) -> None:
    run_id = uuid.uuid4()
    activity = ActivityDispatch(run_id, 3, "greet", start_to_close_seconds=30.0)
    send(dispatcher, Dispatch(run_id, (activity,)))

    (message,) = published(prefix)
    headers, (args, kwargs, embed) = message["headers"], message["body"]
    assert headers["task"] == "activity.greet"
    assert args == [str(run_id), 3] and kwargs == {}
    assert headers["argsrepr"] == repr([str(run_id), 3])
    # Only the kill: the attempt's own deadline is enforced around the user's code.
    assert headers["timelimit"] == [30.0 + TIME_LIMIT_MARGIN_SECONDS, None]
    assert headers["eta"] is None
    assert headers["ignore_result"] is True
    (callback,) = embed["chain"]
    assert callback["task"] == WORKFLOW_TASK
    assert callback["args"] == [str(run_id)] and callback["immutable"] is True


def test_a_workflow_task_alone_goes_out_as_one_message(
    dispatcher: CeleryDispatcher, prefix: str
) -> None:
    run_id = uuid.uuid4()
    send(dispatcher, Dispatch(run_id))

    # On the workflow tasks' own queue, which the workflow lane takes while every pool
    # process runs an activity.
    assert published(prefix) == []
    (message,) = published(prefix, WORKFLOW_QUEUE)
    assert message["headers"]["task"] == WORKFLOW_TASK
    assert message["body"][0] == [str(run_id)]


def test_publishing_keeps_one_redis_client(dispatcher: CeleryDispatcher, prefix: str) -> None:
    run_id = uuid.uuid4()
    clients = set()
    for seq in range(1, 4):
        send(dispatcher, Dispatch(run_id, (ActivityDispatch(run_id, seq, "greet", 30.0),)))
        with dispatcher.publisher.producer() as producer:
            clients.add(id(producer.channel._kept_client))
    assert len(clients) == 1
    assert [m["body"][0][1] for m in published(prefix)] == [1, 2, 3]


def test_a_forked_process_publishes_on_connections_of_its_own(
    dispatcher: CeleryDispatcher, prefix: str
) -> None:
    run_id = uuid.uuid4()
    send(dispatcher, Dispatch(run_id))  # the parent's pool exists before the fork
    with dispatcher.publisher.producer() as producer:
        parent_connection = producer.connection

    child = os.fork()
    if child == 0:  # pragma: no cover (runs in the child)
        code = 1
        try:
            with dispatcher.publisher.producer() as producer:
                fresh = producer.connection is not parent_connection
            send(dispatcher, Dispatch(run_id))
            code = 0 if fresh else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    wait_until(
        lambda: len(published(prefix, WORKFLOW_QUEUE)) == 2, timeout=10, what="the child's message"
    )


def test_only_a_redis_broker_gets_the_client_keeping_transport() -> None:
    assert broker_transport("redis://127.0.0.1:6379/0") is ClientKeepingTransport
    assert broker_transport("rediss://cache.example:6380/0") is ClientKeepingTransport
    assert broker_transport("amqp://guest:guest@127.0.0.1:5672//") is None


def test_publishing_goes_on_after_redis_drops_the_kept_client_s_connection(
    dispatcher: CeleryDispatcher, prefix: str
) -> None:
    run_id = uuid.uuid4()
    send(dispatcher, Dispatch(run_id))
    with dispatcher.publisher.producer() as producer:
        connection_id = producer.channel._kept_client.client_id()
    # What a Redis restart or a proxy's idle timeout does to it.
    with redis.Redis.from_url(BROKER_URL) as killer:
        assert killer.client_kill_filter(_id=connection_id) == 1

    send(dispatcher, Dispatch(run_id))
    assert len(published(prefix, WORKFLOW_QUEUE)) == 2


def test_a_retry_goes_out_with_its_countdown(dispatcher: CeleryDispatcher, prefix: str) -> None:
    run_id = uuid.uuid4()
    before = datetime.now(UTC)
    send(dispatcher, Dispatch(run_id, (ActivityDispatch(run_id, 1, "greet", 30.0),), countdown=5))
    send(dispatcher, Dispatch(run_id, countdown=8))

    (activity,) = published(prefix)
    (workflow_task,) = published(prefix, WORKFLOW_QUEUE)
    for message, countdown in ((activity, 5), (workflow_task, 8)):
        eta = datetime.fromisoformat(message["headers"]["eta"])
        assert before.timestamp() + countdown <= eta.timestamp() <= time.time() + countdown


def test_publishing_a_chord_leaves_no_subscription_to_its_results(
    dispatcher: CeleryDispatcher, prefix: str
) -> None:
    run_id = uuid.uuid4()
    members = tuple(ActivityDispatch(run_id, seq, "greet", 30.0) for seq in (1, 2, 3))

    send(dispatcher, Dispatch(run_id, members))

    ids = [message["headers"]["id"] for message in published(prefix)]
    assert len(ids) == 3
    # Where the publisher would hear each member's result, had it subscribed.
    channels = [dispatcher.app.backend.get_key_for_task(task_id) for task_id in ids]
    with redis.Redis.from_url(BROKER_URL) as client:
        subscribers = dict(client.pubsub_numsub(*channels))
    assert subscribers == {channel: 0 for channel in channels}


def test_a_batch_that_fails_is_published_again_one_message_at_a_time(
    dispatcher: CeleryDispatcher, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fault kombu reports without retrying: the batch's reply was lost.
    def lost_reply(batch: Any) -> None:
        batch.discard()
        raise BatchPublishError("Redis publish batch failed; delivery is uncertain")

    monkeypatch.setattr(kombu_redis.PublishBatch, "flush", lost_reply)
    run_id = uuid.uuid4()
    activity = ActivityDispatch(run_id, 3, "greet", start_to_close_seconds=30.0)

    send(dispatcher, Dispatch(run_id, (activity,)))

    (message,) = published(prefix)
    assert message["headers"]["task"] == "activity.greet"
    assert message["body"][0] == [str(run_id), 3]


def test_a_message_s_task_sent_event_goes_out_with_it(
    dispatcher: CeleryDispatcher, prefix: str
) -> None:
    subscriber = redis.Redis.from_url(BROKER_URL).pubsub(ignore_subscribe_messages=True)
    subscriber.psubscribe(f"{prefix}*celeryev/task.sent")
    run_id = uuid.uuid4()
    activity = ActivityDispatch(run_id, 3, "greet", start_to_close_seconds=30.0)

    send(dispatcher, Dispatch(run_id, (activity,)))

    (message,) = published(prefix)
    event = wait_until(lambda: subscriber.get_message(timeout=0.1), what="the task-sent event")
    sent = json.loads(base64.b64decode(json.loads(event["data"])["body"]))
    assert (sent["type"], sent["uuid"], sent["name"]) == (
        "task-sent",
        message["headers"]["id"],
        "activity.greet",
    )
    subscriber.close()


def test_queue_depth_and_the_oldest_message_s_age_are_read_from_the_broker(
    dispatcher: CeleryDispatcher, prefix: str
) -> None:
    run_id = uuid.uuid4()
    sent_before = time.time()
    send(dispatcher, Dispatch(run_id, (ActivityDispatch(run_id, 1, "add", 10.0),)))
    send(dispatcher, Dispatch(uuid.uuid4()))
    send(dispatcher, Dispatch(uuid.uuid4()))
    # Every message says when it was sent.
    assert all(
        sent_before <= m["headers"][SENT_AT_HEADER] <= time.time()
        for queue in (QUEUE, WORKFLOW_QUEUE)
        for m in published(prefix, queue)
    )
    time.sleep(0.3)  # so that the oldest message has waited that long, at least

    states = read_queues(dispatcher.app, [QUEUE, WORKFLOW_QUEUE, "never-used"], prefix)

    by_name = {state.name: state for state in states}
    assert by_name[QUEUE].depth == 1
    assert by_name[WORKFLOW_QUEUE].depth == 2
    for name in (QUEUE, WORKFLOW_QUEUE):
        age = by_name[name].oldest_age_seconds
        assert age is not None and 0.3 <= age < 0.3 + (time.time() - sent_before)
    assert by_name["never-used"] == QueueState("never-used", 0, None)

"""The reliability rules of DESIGN.md, as Celery configuration (no broker needed)."""

from __future__ import annotations

from app.messaging.broker import create_celery_app
from app.messaging.transports import ClientKeepingTransport, PublishingRedisBackend
from app.settings import Settings


def test_celery_follows_the_reliability_rules() -> None:
    conf = create_celery_app(Settings(broker_url="redis://127.0.0.1:6379/0")).conf
    assert conf.task_serializer == "json"
    assert conf.result_serializer == "json"
    assert conf.accept_content == ["json"]
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is True
    assert conf.broker_transport_options["visibility_timeout"] >= 3600


def test_workers_batch_their_events_and_beat_sweeps_in_process() -> None:
    from workers.celery_app import app

    assert app.conf.worker_consumer == "workers.consumer:EventBatchingConsumer"
    assert app.conf.chainline_event_flush_seconds == 0.1
    # No housekeeping task that could wait behind activities in the queue.
    assert app.conf.beat_scheduler == "workers.beat:ChainlineScheduler"
    assert not app.conf.beat_schedule
    assert app.conf.include == ["workers.tasks"]


def test_a_redis_broker_gets_the_client_keeping_transport() -> None:
    app = create_celery_app(Settings(broker_url="redis://127.0.0.1:6379/0"))
    # Named, so that the worker's settings stay JSON (`inspect stats`, Flower).
    assert app.conf.broker_transport == "app.messaging.transports:ClientKeepingTransport"
    assert type(app.connection_for_write().transport) is ClientKeepingTransport
    amqp = create_celery_app(Settings(broker_url="amqp://guest:guest@127.0.0.1:5672//")).conf
    assert amqp.broker_transport is None  # the URL's own


def test_a_key_prefix_isolates_broker_and_results() -> None:
    conf = create_celery_app(
        Settings(broker_url="redis://127.0.0.1:6379/0", broker_key_prefix="team-a:")
    ).conf
    assert conf.broker_transport_options["global_keyprefix"] == "team-a:"
    assert conf.result_backend_transport_options["global_keyprefix"] == "team-a:"


def test_a_non_redis_broker_keeps_chord_state_in_postgres() -> None:
    settings = Settings(
        broker_url="amqp://guest:guest@127.0.0.1:5672//",
        database_url="postgresql://postgres@127.0.0.1/chainline",
    )
    assert settings.database_url == "postgresql+psycopg://postgres@127.0.0.1/chainline"
    assert settings.celery_result_backend == "db+postgresql+psycopg://postgres@127.0.0.1/chainline"
    assert "global_keyprefix" not in create_celery_app(settings).conf.broker_transport_options


def test_the_dispatcher_s_app_never_subscribes_to_results_and_is_not_current() -> None:
    import celery

    worker_app = create_celery_app(Settings(broker_url="redis://127.0.0.1:6379/0"))
    publishing = create_celery_app(
        Settings(broker_url="redis://127.0.0.1:6379/0"), publish_only=True
    )

    assert isinstance(publishing.backend, PublishingRedisBackend)
    assert not isinstance(worker_app.backend, PublishingRedisBackend)
    # The app with the tasks stays current.
    assert celery.current_app._get_current_object() is worker_app
    # Postgres result backends (no Redis) subscribe to nothing anyway: left as they are.
    amqp = Settings(
        broker_url="amqp://guest:guest@127.0.0.1:5672//",
        database_url="postgresql://postgres@127.0.0.1/chainline",
    )
    assert create_celery_app(amqp, publish_only=True).conf.result_backend.startswith("db+")

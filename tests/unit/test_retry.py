from __future__ import annotations

import pytest

from app.model.retry import RetryPolicy


def test_defaults_follow_mistral_three_attempts_doubling_from_one_second() -> None:
    policy = RetryPolicy()
    assert [policy.next_delay(attempt, "ValueError") for attempt in (1, 2, 3)] == [1.0, 2.0, None]


def test_backoff_grows_by_the_coefficient_and_is_capped() -> None:
    policy = RetryPolicy(
        max_attempts=6, initial_interval=0.5, backoff_coefficient=3.0, maximum_interval=5.0
    )
    assert [policy.next_delay(a, "E") for a in range(1, 7)] == [0.5, 1.5, 4.5, 5.0, 5.0, None]


def test_non_retryable_error_types_give_up_at_once() -> None:
    policy = RetryPolicy(max_attempts=10, non_retryable_error_types=("PermissionError",))
    assert policy.next_delay(1, "PermissionError") is None
    assert policy.next_delay(1, "TimeoutError") == 1.0


def test_one_attempt_means_no_retry() -> None:
    assert RetryPolicy(max_attempts=1).next_delay(1, "E") is None


def test_json_round_trip() -> None:
    policy = RetryPolicy(
        max_attempts=4,
        initial_interval=0.1,
        backoff_coefficient=1.5,
        non_retryable_error_types=("X",),
    )
    assert RetryPolicy.from_json(policy.to_json()) == policy


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"initial_interval": -1.0}, {"backoff_coefficient": 0.5}],
)
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]

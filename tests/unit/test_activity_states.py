"""The activity state table: its shape, and the guards derived from it."""

from __future__ import annotations

from app.model.activity_states import (
    ACTIVITY_TRANSITIONS,
    FINAL_STATES,
    IN_FLIGHT_STATES,
    ActivityState,
    activity_sources_of,
)

A = ActivityState


def test_every_state_has_a_row_in_the_table() -> None:
    assert set(ACTIVITY_TRANSITIONS) == set(ActivityState)


def test_an_activity_is_in_flight_until_it_completes_fails_or_is_abandoned() -> None:
    assert IN_FLIGHT_STATES == {A.SCHEDULED, A.STARTED, A.BACKING_OFF}
    assert FINAL_STATES == {A.COMPLETED, A.FAILED, A.ABANDONED}
    for state in FINAL_STATES:
        assert ACTIVITY_TRANSITIONS[state] == frozenset()


def test_only_a_started_attempt_has_an_outcome() -> None:
    assert activity_sources_of(A.COMPLETED) == {A.STARTED}
    assert activity_sources_of(A.FAILED) == {A.STARTED}
    assert activity_sources_of(A.BACKING_OFF) == {A.STARTED}


def test_an_attempt_starts_from_scheduled_or_from_a_backoff() -> None:
    assert activity_sources_of(A.STARTED) == {A.SCHEDULED, A.BACKING_OFF}


def test_anything_in_flight_can_be_abandoned() -> None:
    assert activity_sources_of(A.ABANDONED) == IN_FLIGHT_STATES

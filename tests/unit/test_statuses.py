from __future__ import annotations

import pytest

from app.model.statuses import (
    OPEN_STATUSES,
    TERMINAL_STATUSES,
    TRANSITIONS,
    ExecutionStatus,
    can_transition,
    sources_of,
)

S = ExecutionStatus


def test_every_status_has_a_row_in_the_table() -> None:
    assert set(TRANSITIONS) == set(ExecutionStatus)


def test_open_statuses_are_running_and_retrying() -> None:
    assert OPEN_STATUSES == {S.RUNNING, S.RETRYING_AFTER_ERROR}


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATUSES))
def test_terminal_statuses_never_change(terminal: ExecutionStatus) -> None:
    assert not any(can_transition(terminal, target) for target in ExecutionStatus)


def test_retrying_goes_back_to_running_or_ends_but_never_completes_directly() -> None:
    assert can_transition(S.RETRYING_AFTER_ERROR, S.RUNNING)
    assert can_transition(S.RETRYING_AFTER_ERROR, S.FAILED)
    assert can_transition(S.RETRYING_AFTER_ERROR, S.TIMED_OUT)
    assert not can_transition(S.RETRYING_AFTER_ERROR, S.COMPLETED)
    assert not can_transition(S.RETRYING_AFTER_ERROR, S.CONTINUED_AS_NEW)


def test_running_reaches_every_other_status() -> None:
    assert TRANSITIONS[S.RUNNING] == set(ExecutionStatus) - {S.RUNNING}


def test_sources_of_is_the_inverse_of_the_table() -> None:
    for target in ExecutionStatus:
        assert sources_of(target) == {s for s in ExecutionStatus if can_transition(s, target)}
    assert sources_of(S.COMPLETED) == {S.RUNNING}

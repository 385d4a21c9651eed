"""Time limits on user code: raised into it, and known to have fired even if swallowed."""

from __future__ import annotations

import threading
import time

import pytest

from app.engine.time_limits import Limit, StartToCloseTimeout


def test_code_that_runs_too_long_is_interrupted() -> None:
    limit = Limit(0.05)
    started = time.monotonic()
    with pytest.raises(StartToCloseTimeout), limit.enforced(StartToCloseTimeout):
        time.sleep(5)
    assert time.monotonic() - started < 2
    assert limit.expired


def test_code_that_swallows_the_interruption_is_still_known_to_have_run_over() -> None:
    limit = Limit(0.05)
    with limit.enforced(StartToCloseTimeout):
        try:
            time.sleep(5)
        except BaseException:
            pass
    assert limit.expired


def test_a_broad_except_exception_does_not_swallow_it() -> None:
    limit = Limit(0.05)
    with pytest.raises(StartToCloseTimeout), limit.enforced(StartToCloseTimeout):
        try:
            time.sleep(5)
        except Exception:  # user code's habit
            pass


def test_code_that_finishes_in_time_is_left_alone_and_the_timer_disarmed() -> None:
    limit = Limit(0.2)
    with limit.enforced(StartToCloseTimeout):
        pass
    time.sleep(0.3)
    assert not limit.expired


def test_outside_the_main_thread_no_signal_can_reach_it() -> None:
    results: list[bool] = []

    def run() -> None:
        limit = Limit(0.01)
        with limit.enforced(StartToCloseTimeout):
            time.sleep(0.1)
        results.append(limit.expired)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(5)
    assert results == [False]

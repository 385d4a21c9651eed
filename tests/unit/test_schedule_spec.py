"""Schedule specs: the times each kind of spec gives, time zones, skips, bounds and the
specs refused. Pure logic, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from app.model.schedule_spec import ScheduleSpec, parse_duration


def spec(**fields: Any) -> ScheduleSpec:
    return ScheduleSpec.model_validate(fields)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("PT1H", 3600), ("P1D", 86400), (90, 90), ("90", 90), ("1h30m", 5400), ("45s", 45)],
)
def test_durations_are_read_as_temporal_s_clients_write_them(written: Any, seconds: int) -> None:
    assert parse_duration(written) == timedelta(seconds=seconds)


def test_intervals_count_from_the_epoch_shifted_by_their_offset() -> None:
    hourly = spec(intervals=[{"every": "PT1H", "offset": "PT15M"}])
    assert hourly.next_after(utc(2026, 5, 1, 10, 20)) == utc(2026, 5, 1, 11, 15)
    assert hourly.next_after(utc(2026, 5, 1, 11, 15)) == utc(2026, 5, 1, 12, 15)
    every_90s = spec(intervals=[{"every": 90}])
    assert every_90s.times_after(utc(2026, 1, 1), 3) == [
        utc(2026, 1, 1, 0, 1, 30),
        utc(2026, 1, 1, 0, 3),
        utc(2026, 1, 1, 0, 4, 30),
    ]


def test_cron_expressions_run_in_their_time_zone_across_dst() -> None:
    daily = spec(cron_expressions=["0 9 * * *"], time_zone_name="America/New_York")
    # 09:00 in New York is 14:00 UTC in winter and 13:00 UTC in summer.
    assert daily.times_after(utc(2026, 3, 7, 15), 2) == [
        utc(2026, 3, 8, 13),  # clocks went forward that night
        utc(2026, 3, 9, 13),
    ]
    # 01:30 happens twice when clocks go back: a daily job fires once.
    early = spec(cron_expressions=["30 1 * * *"], time_zone_name="America/New_York")
    assert early.times_after(utc(2026, 10, 31, 12), 2) == [
        utc(2026, 11, 1, 5, 30),
        utc(2026, 11, 2, 6, 30),
    ]
    # A job that runs every half hour runs through the repeated hour, both times.
    often = spec(cron_expressions=["*/30 * * * *"], time_zone_name="America/New_York")
    assert often.times_after(utc(2026, 11, 1, 4, 50), 4) == [
        utc(2026, 11, 1, 5),
        utc(2026, 11, 1, 5, 30),
        utc(2026, 11, 1, 6),
        utc(2026, 11, 1, 6, 30),
    ]


def test_calendars_match_every_field_with_temporal_s_defaults() -> None:
    weekdays_at_nine = spec(
        calendars=[{"hour": [{"start": 9}], "day_of_week": [{"start": 1, "end": 5}]}]
    )
    friday_ten = utc(2026, 12, 4, 10)  # a Friday
    assert weekdays_at_nine.next_after(friday_ten) == utc(2026, 12, 7, 9)  # Monday 09:00:00
    quarterly = spec(
        calendars=[{"month": [{"start": 1, "end": 12, "step": 3}], "day_of_month": [{"start": 1}]}]
    )
    assert quarterly.times_after(utc(2026, 2, 1), 2) == [utc(2026, 4, 1), utc(2026, 7, 1)]


def test_the_union_of_its_times_less_the_skipped_within_its_bounds() -> None:
    hourly = spec(
        cron_expressions=["0 * * * *"],
        intervals=[{"every": "PT2H"}],  # the same instants: each given once
        skip=[{"hour": [{"start": 12}]}],
        start_at="2026-06-01T10:30:00Z",
        end_at="2026-06-01T14:00:00Z",
    )
    assert hourly.times_after(utc(2026, 1, 1), 10) == [
        utc(2026, 6, 1, 11),
        utc(2026, 6, 1, 13),  # 12:00 skipped
        utc(2026, 6, 1, 14),  # end_at is inclusive
    ]


def test_jitter_is_the_same_for_a_tick_and_never_past_the_next() -> None:
    jittered = spec(intervals=[{"every": "PT1M"}], jitter="PT10M")
    tick = utc(2026, 1, 1, 0, 5)
    delay = jittered.jitter_for("sched-1", tick)
    assert delay == jittered.jitter_for("sched-1", tick)
    assert timedelta(0) <= delay < timedelta(minutes=1)
    assert spec(intervals=[{"every": 60}]).jitter_for("sched-1", tick) == timedelta(0)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({}, "needs times"),
        ({"cron_expressions": ["61 * * * *"]}, "cron expression"),
        ({"cron_expressions": ["* * * * * *"]}, "5-field"),
        ({"intervals": [{"every": "PT0S"}]}, "longer than zero"),
        ({"intervals": [{"every": 60, "offset": 60}]}, "offset"),
        ({"intervals": [{"every": "often"}]}, "not a duration"),
        ({"calendars": [{"hour": [{"start": 24}]}]}, "outside 0..23"),
        ({"cron_expressions": ["0 * * * *"], "time_zone_name": "Mars/Olympus"}, "time zone"),
        (
            {
                "cron_expressions": ["0 * * * *"],
                "start_at": "2026-02-01T00:00:00Z",
                "end_at": "2026-01-01T00:00:00Z",
            },
            "before start_at",
        ),
    ],
)
def test_specs_that_give_no_sensible_times_are_refused(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        spec(**fields)


def test_a_spec_whose_times_have_all_passed_has_no_next() -> None:
    ended = spec(cron_expressions=["0 * * * *"], end_at="2020-01-01T00:00:00Z")
    assert ended.next_after(utc(2026, 1, 1)) is None
    assert ended.times_after(utc(2026, 1, 1), 10) == []

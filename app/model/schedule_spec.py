"""Schedule specs: the times a schedule fires, as Temporal's schedule spec (which the
`mistralai` SDK's models mirror) defines them.

The times are the union of `cron_expressions` (standard 5-field cron, by croniter),
`intervals` (every `every` since the Unix epoch, shifted by `offset`) and `calendars`
(ranges of second, minute, hour, day of month, month, year and day of week), minus any
time a `skip` calendar matches, within `start_at` and `end_at`. Cron expressions and
calendars are read in `time_zone_name` (IANA, UTC by default), so a daily 09:00 stays
09:00 across DST changes: a wall time that happens twice when clocks go back fires once
(cron expressions that run every hour fire in both); when they go forward, a cron
expression's time in the gap fires just after it (croniter's rule) and a calendar's
does not fire. A calendar field left out means 0 for second, minute
and hour, and any value for the rest, as in Temporal.

Durations (`every`, `offset`, `jitter`) are ISO 8601 (`PT1H`, `P1D`), seconds (`90`,
`"90"`) or Go-style (`1h30m`, `45s`), as Temporal's clients write them.
"""

from __future__ import annotations

import calendar as month_calendar
import hashlib
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from enum import IntEnum
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import BaseModel, BeforeValidator, ConfigDict, TypeAdapter, model_validator

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# How far ahead a calendar is searched for its next time, and how many skipped times
# are passed over, before a schedule is taken to have no more times.
CALENDAR_HORIZON_YEARS = 100
MOST_SKIPPED = 100_000
DEFAULT_CATCHUP_WINDOW_SECONDS = 365 * 24 * 3600


class OverlapPolicy(IntEnum):
    """What a tick does while the schedule's previous execution still runs (Temporal's
    numbering, which the SDK sends)."""

    SKIP = 1
    BUFFER_ONE = 2
    BUFFER_ALL = 3
    CANCEL_OTHER = 4
    TERMINATE_OTHER = 5
    ALLOW_ALL = 6


_GO_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns))+$")
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_ISO_DURATION: TypeAdapter[timedelta] = TypeAdapter(timedelta)


def parse_duration(value: Any) -> timedelta:
    """A duration as Temporal's clients write it; ValueError for anything else."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{value!r} is not a duration")
    text = value.strip()
    try:
        return timedelta(seconds=float(text))
    except ValueError:
        pass
    if _GO_DURATION.match(text):
        return timedelta(
            seconds=sum(float(n) * _GO_UNITS[unit] for n, unit in _GO_PART.findall(text))
        )
    try:
        return _ISO_DURATION.validate_python(text)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a duration: use ISO 8601 (PT1H), seconds (3600) or 1h30m"
        ) from None


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class ScheduleRange(BaseModel):
    """`start` to `end` (inclusive; 0 or less than start: just `start`) by `step` (0: 1)."""

    model_config = ConfigDict(extra="forbid")

    start: int
    end: int = 0
    step: int = 0

    def values(self, field: str, low: int, high: int) -> range:
        end = max(self.start, self.end)
        if self.step < 0:
            raise ValueError(f"{field}: step must not be negative")
        if not low <= self.start <= high or end > high:
            raise ValueError(f"{field}: {self.start}..{end} is outside {low}..{high}")
        return range(self.start, end + 1, self.step or 1)


# field: (lowest, highest, default when left out: None for any value)
_CALENDAR_FIELDS: dict[str, tuple[int, int, int | None]] = {
    "second": (0, 59, 0),
    "minute": (0, 59, 0),
    "hour": (0, 23, 0),
    "day_of_month": (1, 31, None),
    "month": (1, 12, None),
    "year": (1970, 9999, None),
    "day_of_week": (0, 6, None),  # 0 is Sunday, as in cron and Temporal
}


class ScheduleCalendar(BaseModel):
    model_config = ConfigDict(extra="forbid")

    second: list[ScheduleRange] | None = None
    minute: list[ScheduleRange] | None = None
    hour: list[ScheduleRange] | None = None
    day_of_month: list[ScheduleRange] | None = None
    month: list[ScheduleRange] | None = None
    year: list[ScheduleRange] | None = None
    day_of_week: list[ScheduleRange] | None = None
    comment: str | None = None

    def allowed(self, field: str) -> frozenset[int] | None:
        """The values `field` matches; None for any."""
        low, high, default = _CALENDAR_FIELDS[field]
        ranges: list[ScheduleRange] | None = getattr(self, field)
        if not ranges:
            return None if default is None else frozenset({default})
        return frozenset(v for r in ranges for v in r.values(field, low, high))

    @model_validator(mode="after")
    def _ranges_in_bounds(self) -> ScheduleCalendar:
        for field in _CALENDAR_FIELDS:
            self.allowed(field)
        return self

    def matches(self, local: datetime) -> bool:
        """Whether the wall time `local` is one of this calendar's times."""
        found = {
            "second": local.second,
            "minute": local.minute,
            "hour": local.hour,
            "day_of_month": local.day,
            "month": local.month,
            "year": local.year,
            "day_of_week": _day_of_week(local.date()),
        }
        for field, value in found.items():
            allowed = self.allowed(field)
            if allowed is not None and value not in allowed:
                return False
        return True

    def next_after(self, after: datetime, zone: ZoneInfo) -> datetime | None:
        """The first of its times strictly after `after`, in `zone`'s wall time."""
        local = after.astimezone(zone)
        for moment in self._wall_times_from(local.replace(tzinfo=None, microsecond=0)):
            aware = moment.replace(tzinfo=zone)
            if aware > after and _exists(aware, zone):
                return aware
        return None

    def _wall_times_from(self, start: datetime) -> Iterator[datetime]:
        """Its wall times after `start`, in order."""
        hours = sorted(self.allowed("hour") or range(24))
        minutes = sorted(self.allowed("minute") or range(60))
        seconds = sorted(self.allowed("second") or range(60))
        for day in self._days_from(start.date()):
            for hour in hours:
                for minute in minutes:
                    for second in seconds:
                        moment = datetime(day.year, day.month, day.day, hour, minute, second)
                        if moment > start:
                            yield moment

    def _days_from(self, first: date) -> Iterator[date]:
        """Its days from `first` on, in order, within the search horizon."""
        years = self.allowed("year")
        months = sorted(self.allowed("month") or range(1, 13))
        days = self.allowed("day_of_month")
        weekdays = self.allowed("day_of_week")
        for year in range(first.year, first.year + CALENDAR_HORIZON_YEARS + 1):
            if years is not None and year not in years:
                continue
            for month in months:
                for day in range(1, month_calendar.monthrange(year, month)[1] + 1):
                    today = date(year, month, day)
                    if today < first or (days is not None and day not in days):
                        continue
                    if weekdays is None or _day_of_week(today) in weekdays:
                        yield today


class ScheduleInterval(BaseModel):
    model_config = ConfigDict(extra="forbid")

    every: Duration
    offset: Duration | None = None

    @model_validator(mode="after")
    def _positive(self) -> ScheduleInterval:
        if self.every <= timedelta(0):
            raise ValueError("an interval's every must be longer than zero")
        if self.offset is not None and not timedelta(0) <= self.offset < self.every:
            raise ValueError("an interval's offset must be at least zero and less than every")
        return self

    def next_after(self, after: datetime) -> datetime:
        """Strictly after `after`: the epoch, plus offset, plus a whole number of every."""
        every = _microseconds(self.every)
        base = _microseconds(after - EPOCH) - _microseconds(self.offset or timedelta(0))
        steps = base // every + 1
        return EPOCH + (self.offset or timedelta(0)) + timedelta(microseconds=steps * every)


class SchedulePolicy(BaseModel):
    model_config = ConfigDict(extra="ignore")

    catchup_window_seconds: int = DEFAULT_CATCHUP_WINDOW_SECONDS
    overlap: OverlapPolicy | None = None
    pause_on_failure: bool = False


class ScheduleTimes(BaseModel):
    """The timing fields of the SDK's schedule models, each checked on its own."""

    model_config = ConfigDict(extra="ignore")

    calendars: list[ScheduleCalendar] | None = None
    intervals: list[ScheduleInterval] | None = None
    cron_expressions: list[str] | None = None
    skip: list[ScheduleCalendar] | None = None
    start_at: datetime | None = None
    end_at: datetime | None = None
    jitter: Duration | None = None
    time_zone_name: str | None = None


class ScheduleSpec(ScheduleTimes):
    """When a schedule fires (the timing part of the SDK's ScheduleDefinition), checked
    whole."""

    @model_validator(mode="after")
    def _valid(self) -> ScheduleSpec:
        if not (self.calendars or self.intervals or self.cron_expressions):
            raise ValueError("a schedule needs times: cron_expressions, intervals or calendars")
        self.zone  # noqa: B018 (raises for an unknown time zone)
        for expression in self.cron_expressions or []:
            if len(expression.split()) != 5 or not croniter.is_valid(expression):
                raise ValueError(f"{expression!r} is not a 5-field cron expression")
        for moment in (self.start_at, self.end_at):
            if moment is not None and moment.tzinfo is None:
                raise ValueError("start_at and end_at need a time zone (say Z for UTC)")
        if self.start_at and self.end_at and self.end_at < self.start_at:
            raise ValueError("end_at is before start_at")
        if self.jitter is not None and self.jitter < timedelta(0):
            raise ValueError("jitter must not be negative")
        return self

    @property
    def zone(self) -> ZoneInfo:
        try:
            return ZoneInfo(self.time_zone_name or "UTC")
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{self.time_zone_name!r} is not an IANA time zone") from None

    def next_after(self, after: datetime) -> datetime | None:
        """Its first time strictly after `after` (aware), or None when it has no more."""
        lower = after
        if self.start_at is not None and self.start_at > lower:
            lower = self.start_at - timedelta(microseconds=1)
        for _ in range(MOST_SKIPPED):
            candidates = [c for c in self._candidates(lower) if c is not None]
            if not candidates:
                return None
            found = min(candidates)
            if self.end_at is not None and found > self.end_at:
                return None
            local = found.astimezone(self.zone)
            if not any(skip.matches(local) for skip in self.skip or []):
                return found.astimezone(UTC)
            lower = found
        return None

    def times_after(self, after: datetime, count: int) -> list[datetime]:
        """Its next `count` times (fewer if it has no more), earliest first."""
        times: list[datetime] = []
        moment: datetime | None = after
        while len(times) < count and moment is not None:
            moment = self.next_after(moment)
            if moment is not None:
                times.append(moment)
        return times

    def jitter_for(self, schedule_id: str, tick: datetime) -> timedelta:
        """How long after `tick` it starts: a fraction of `jitter` drawn from the schedule
        and the tick (the same every time it is asked), never past the next tick."""
        if not self.jitter:
            return timedelta(0)
        following = self.next_after(tick)
        most = self.jitter if following is None else min(self.jitter, following - tick)
        seed = hashlib.sha256(f"{schedule_id}:{tick.isoformat()}".encode()).digest()
        fraction = int.from_bytes(seed[:8], "big") / 2**64
        return timedelta(microseconds=int(_microseconds(most) * fraction))

    def _candidates(self, lower: datetime) -> Iterator[datetime | None]:
        zone = self.zone
        for expression in self.cron_expressions or []:
            yield _cron_next(expression, lower, zone)
        for interval in self.intervals or []:
            yield interval.next_after(lower)
        for calendar in self.calendars or []:
            yield calendar.next_after(lower, zone)


def _cron_next(expression: str, after: datetime, zone: ZoneInfo) -> datetime:
    every_hour = expression.split()[1] == "*"
    moment = after.astimezone(zone)
    times = croniter(expression, moment)
    while True:
        moment = times.get_next(datetime)
        # A wall time the clocks pass twice fires once, unless the job runs every hour.
        if every_hour or not _is_second_pass(moment, zone):
            return moment


def _is_second_pass(moment: datetime, zone: ZoneInfo) -> bool:
    wall = moment.replace(tzinfo=None)
    first = wall.replace(tzinfo=zone, fold=0).utcoffset()
    second = wall.replace(tzinfo=zone, fold=1).utcoffset()
    return first != second and moment.utcoffset() == second


def _exists(moment: datetime, zone: ZoneInfo) -> bool:
    """Whether a wall time exists (not in the hour skipped when clocks go forward)."""
    return moment.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == moment.replace(
        tzinfo=None
    )


def _day_of_week(day: date) -> int:
    return (day.weekday() + 1) % 7


def _microseconds(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds

"""When the batch role runs: an interval, a cron expression, or a ring of its doorbell.

A schedule answers one question, ``next_after(t)``: the first fire time
strictly after ``t`` (Unix seconds). Cron expressions are the classic five
fields, read in the device's local time::

    minute hour day-of-month month day-of-week
    */5    *    *            *     *            every five minutes
    0      3    *            *     1-5          03:00 on weekdays

Each field is ``*``, a number, a range ``a-b``, a step ``*/n``, ``a-b/n`` or
``a/n``, or a comma list of those; months and days may be named (``jan``,
``mon-fri``); day-of-week 0 and 7 are both Sunday. As in Vixie cron, when
both day fields are restricted a day matching either one fires. ``@hourly``,
``@daily`` (``@midnight``), ``@weekly``, ``@monthly`` and ``@yearly``
(``@annually``) are accepted.

Between fire times the role sleeps on its doorbell (the same mechanism the
async workers use, ``workers/doorbell.py``, in a directory of its own), so
``POST /batch/run`` on the gateway wakes it at once.
"""

from __future__ import annotations

import bisect
import calendar
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from edge_agent.config import BatchConfig
from edge_agent.errors import ConfigError
from edge_agent.workers.doorbell import Doorbell

BELL_DIR = "batch"
SEARCH_YEARS = 8  # every calendar pattern (leap days on a weekday included) repeats within this


class ScheduleError(ConfigError):
    """An invalid schedule; the message names the expression and what is wrong with it."""

    code = "schedule_invalid"

    def __init__(self, expression: str, reason: str) -> None:
        super().__init__([f"batch.cron {expression!r}: {reason}"])
        self.expression = expression
        self.reason = reason


class Schedule(Protocol):
    def next_after(self, t: float) -> float:
        """The first fire time strictly after ``t`` (Unix seconds); ``inf`` for never."""
        ...


@dataclass(frozen=True, slots=True)
class IntervalSchedule:
    interval_s: float

    def next_after(self, t: float) -> float:
        return t + self.interval_s

    def __str__(self) -> str:
        return f"every {self.interval_s:g} s"


@dataclass(frozen=True, slots=True)
class OnDemand:
    """No schedule: the role runs only when its doorbell rings."""

    def next_after(self, t: float) -> float:
        return math.inf

    def __str__(self) -> str:
        return "on demand only"


# -- cron -------------------------------------------------------------------------
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTHS = {m.lower(): i for i, m in enumerate(calendar.month_abbr) if m}
DAYS = {d.lower(): (i + 1) % 7 for i, d in enumerate(calendar.day_abbr)}  # mon=1 ... sun=0
# name, low, high, names
FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, MONTHS),
    ("day-of-week", 0, 7, DAYS),
)


def _value(text: str, field: str, low: int, high: int, names: dict[str, int]) -> int:
    key = text.lower()
    if not key:
        raise ValueError(f"{field} is missing a number")
    if key in names:
        return names[key]
    if not text.isdigit():
        known = f" or a name ({', '.join(names)})" if names else ""
        raise ValueError(f"{field} {text!r} is not a number{known}")
    n = int(text)
    if not low <= n <= high:
        raise ValueError(f"{field} {n} is out of range {low}-{high}")
    return n


def _field(text: str, field: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for term in text.split(","):
        base, _, step_text = term.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"{field} step {step_text!r} must be a whole number of at least 1")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            start, end = _value(a, field, low, high, names), _value(b, field, low, high, names)
            if start > end:
                raise ValueError(f"{field} range {base!r} runs backwards")
        elif base:
            start = _value(base, field, low, high, names)
            end = high if step_text else start
        else:
            raise ValueError(f"{field} has an empty term in {text!r}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True, slots=True)
class CronSchedule:
    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    day_or: bool  # both day fields restricted: either may match (Vixie cron)

    @classmethod
    def parse(cls, expression: str) -> CronSchedule:
        text = " ".join(expression.split())
        if text.startswith("@"):
            if text.lower() not in MACROS:
                raise ScheduleError(expression, f"unknown macro; use one of {', '.join(MACROS)}")
            text = MACROS[text.lower()]
        parts = text.split(" ")
        if len(parts) != len(FIELDS):
            raise ScheduleError(
                expression,
                f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}"
                + (" (seconds and years are not supported)" if len(parts) in (6, 7) else ""),
            )
        try:
            sets = [_field(p, *spec) for p, spec in zip(parts, FIELDS, strict=True)]
        except ValueError as exc:
            raise ScheduleError(expression, str(exc)) from None
        weekdays = frozenset(d % 7 for d in sets[4])
        schedule = cls(
            expression,
            tuple(sorted(sets[0])),
            tuple(sorted(sets[1])),
            sets[2],
            sets[3],
            weekdays,
            day_or=not parts[2].startswith("*") and not parts[4].startswith("*"),
        )
        schedule.next_datetime(datetime(2000, 1, 1))  # raises if it can never fire (say, 30 February)
        return schedule

    def _day_matches(self, dt: datetime) -> bool:
        dom = dt.day in self.days
        dow = (dt.isoweekday() % 7) in self.weekdays
        return (dom or dow) if self.day_or else (dom and dow)

    def next_datetime(self, after: datetime) -> datetime:
        """The first matching minute strictly after ``after`` (wall-clock fields, any tzinfo)."""
        dt = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = after.year + SEARCH_YEARS
        while dt.year <= limit:
            if dt.month not in self.months:
                dt = (dt.replace(day=1) + timedelta(days=32)).replace(day=1, hour=0, minute=0)
            elif not self._day_matches(dt):
                dt = (dt + timedelta(days=1)).replace(hour=0, minute=0)
            elif dt.hour not in self.hours:
                i = bisect.bisect_left(self.hours, dt.hour)
                if i == len(self.hours):
                    dt = (dt + timedelta(days=1)).replace(hour=0, minute=0)
                else:
                    dt = dt.replace(hour=self.hours[i], minute=0)
            elif dt.minute not in self.minutes:
                i = bisect.bisect_left(self.minutes, dt.minute)
                if i == len(self.minutes):
                    dt = dt.replace(minute=0) + timedelta(hours=1)
                else:
                    dt = dt.replace(minute=self.minutes[i])
            else:
                return dt
        raise ScheduleError(self.expression, "never fires (no such date)")

    def next_after(self, t: float) -> float:
        """Local time. In a DST fold the repeated hour may fire twice; a skipped hour fires once, late."""
        nxt = self.next_datetime(datetime.fromtimestamp(t)).timestamp()
        while nxt <= t:  # the repeated hour of a DST change
            nxt = self.next_datetime(datetime.fromtimestamp(nxt)).timestamp()
        return nxt

    def __str__(self) -> str:
        return f"cron {self.expression!r}"


def schedule_from_config(batch: BatchConfig) -> IntervalSchedule | CronSchedule | OnDemand:
    """``cron`` wins over ``interval_s``; neither means on demand (doorbell or ``--now``) only."""
    if batch.cron:
        return CronSchedule.parse(batch.cron)
    if batch.interval_s is not None:
        return IntervalSchedule(batch.interval_s)
    return OnDemand()


# -- doorbell ---------------------------------------------------------------------
def batch_doorbell(data_dir: Path) -> Doorbell:
    """The batch role's own doorbell (``<data_dir>/batch/doorbell/``): ringing the async
    workers' doorbell does not start a batch run, and ringing this one wakes no worker."""
    return Doorbell(Path(data_dir) / BELL_DIR)

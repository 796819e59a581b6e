"""When the batch role runs: an interval, a cron expression, or a ring of its doorbell.

A schedule answers one question, ``next_after(t)``: the first fire time
strictly after ``t`` (Unix seconds). Cron expressions are the classic five
fields, evaluated by cronsim (the maintained, dependency-free parser that
Healthchecks.io runs) in ``batch.timezone`` (an IANA name such as
``Europe/Berlin``) or, when that is unset, the device's local time zone::

    minute hour day-of-month month day-of-week
    */5    *    *            *     *            every five minutes
    0      3    *            *     1-5          03:00 on weekdays

Each field is ``*``, a number, a range ``a-b``, a step ``*/n``, ``a-b/n`` or
``a/n``, or a comma list of those; months and days may be named (``jan``,
``mon-fri``); day-of-week 0 and 7 are both Sunday; cronsim's extensions ``L``
(last day), ``W`` (nearest weekday) and ``#`` (``5#2``: second Friday) work
too. As in Debian cron, when both day fields are restricted a day matching
either one fires. ``@hourly``, ``@daily`` (``@midnight``), ``@weekly``,
``@monthly`` and ``@yearly`` (``@annually``) are accepted.

Daylight saving, as Debian cron does it: a job at a fixed time that falls in
the hour skipped in spring runs when the clocks have jumped (02:30 -> 03:00);
in the hour repeated in autumn it runs once, the first time. A job with ``*``
in its minute or hour field follows real time: every 30 minutes stays every
30 minutes through both changes.

Between fire times the role sleeps on its doorbell (the same mechanism the
async workers use, ``workers/doorbell.py``, in a directory of its own), so
``POST /batch/run`` on the gateway wakes it at once.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from edge_agent.errors import ConfigError
from edge_agent.workers.doorbell import Doorbell

BELL_DIR = "batch"
LOCALTIME = Path("/etc/localtime")


class ScheduleError(ConfigError):
    """An invalid schedule; the message names the expression and what is wrong with it."""

    code = "schedule_invalid"

    def __init__(self, expression: str, reason: str) -> None:
        super().__init__([f"batch.cron {expression!r}: {reason}"])
        self.expression = expression
        self.reason = reason


class BatchTiming(Protocol):
    """What a schedule is made from: the ``[batch]`` section (``edge_agent.config.BatchConfig``)."""

    @property
    def interval_s(self) -> float | None: ...
    @property
    def cron(self) -> str | None: ...
    @property
    def timezone(self) -> str | None: ...


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
FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
ALLOWED = {
    "minute": "0-59",
    "hour": "0-23",
    "day-of-month": "1-31 or L, and a day some chosen month has",
    "month": "1-12 or jan-dec",
    "day-of-week": "0-7 (0 and 7 are Sunday) or sun-sat, n#k for the k-th (1-5)",
}
FORMS = "*, a number, a-b, */n, a-b/n, a/n, or a comma list of those"


def zone(name: str | None) -> tzinfo:
    """The IANA time zone ``name``, or the device's own (``TZ``, else ``/etc/localtime``, else UTC).

    ``ValueError`` with a message a person can act on when ``name`` is unknown."""
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {name!r}: use an IANA name such as 'Europe/Berlin' or 'UTC', "
                "or leave it unset for the device's local time"
            ) from None
    env = os.environ.get("TZ", "").lstrip(":")
    if env:
        try:
            return ZoneInfo(env)
        except (ZoneInfoNotFoundError, ValueError):
            pass  # a POSIX rule string such as 'CET-1CEST': the system file describes the same zone
    try:
        with LOCALTIME.open("rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return UTC


def _reason(text: str, error: CronSimError) -> str:
    """cronsim says 'Bad minute'; say which field, what it holds and what it may hold."""
    parts = text.split(" ")
    for i, name in enumerate(FIELDS):
        if str(error).lower().endswith(name):
            return f"{name} field {parts[i]!r} is not valid: use {FORMS}; values {ALLOWED[name]}"
    return str(error)


@dataclass(frozen=True, slots=True)
class CronSchedule:
    expression: str
    five_fields: str  # the expression with a macro expanded
    tz: tzinfo = field(default=UTC)

    @classmethod
    def parse(cls, expression: str, timezone: str | None = None) -> CronSchedule:
        """``ScheduleError`` naming the expression and the field at fault; an unknown
        ``timezone`` too."""
        text = " ".join(expression.split())
        if text.startswith("@"):
            if text.lower() not in MACROS:
                raise ScheduleError(expression, f"unknown macro; use one of {', '.join(MACROS)}")
            text = MACROS[text.lower()]
        parts = text.split(" ") if text else []
        if len(parts) != len(FIELDS):
            raise ScheduleError(
                expression,
                f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}"
                + (" (seconds and years are not supported)" if len(parts) in (6, 7) else ""),
            )
        try:
            tz = zone(timezone)
        except ValueError as exc:
            raise ScheduleError(expression, str(exc)) from None
        schedule = cls(expression, text, tz)
        try:
            schedule.next_datetime(datetime(2000, 1, 1, tzinfo=tz))
        except CronSimError as exc:
            raise ScheduleError(expression, _reason(text, exc)) from None
        return schedule

    def next_datetime(self, after: datetime) -> datetime:
        """The first fire time strictly after ``after`` (an aware datetime), in the schedule's zone."""
        try:
            return next(CronSim(self.five_fields, after.astimezone(self.tz)))
        except StopIteration:
            raise ScheduleError(self.expression, "never fires (no such date)") from None

    def next_after(self, t: float) -> float:
        return self.next_datetime(datetime.fromtimestamp(t, self.tz)).timestamp()

    def __str__(self) -> str:
        return f"cron {self.expression!r}"


def schedule_from_config(batch: BatchTiming) -> IntervalSchedule | CronSchedule | OnDemand:
    """``cron`` wins over ``interval_s``; neither means on demand (doorbell or ``--now``) only."""
    if batch.cron:
        return CronSchedule.parse(batch.cron, batch.timezone)
    if batch.interval_s is not None:
        return IntervalSchedule(batch.interval_s)
    return OnDemand()


# -- doorbell ---------------------------------------------------------------------
def batch_doorbell(data_dir: Path) -> Doorbell:
    """The batch role's own doorbell (``<data_dir>/batch/doorbell/``): ringing the async
    workers' doorbell does not start a batch run, and ringing this one wakes no worker."""
    return Doorbell(Path(data_dir) / BELL_DIR)

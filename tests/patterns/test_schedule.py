"""Batch schedules: the cron parser and next fire times, intervals, on-demand."""

from __future__ import annotations

import math
from datetime import datetime

import pytest
from pydantic import ValidationError

from edge_agent.config import BatchConfig
from edge_agent.errors import ConfigError
from edge_agent.workers.schedule import (
    CronSchedule,
    IntervalSchedule,
    OnDemand,
    ScheduleError,
    schedule_from_config,
)


def fires(expr: str, after: datetime, n: int = 3) -> list[datetime]:
    cron = CronSchedule.parse(expr)
    out, t = [], after
    for _ in range(n):
        t = cron.next_datetime(t)
        out.append(t)
    return out


def test_every_five_minutes() -> None:
    assert fires("*/5 * * * *", datetime(2026, 3, 1, 10, 2, 30)) == [
        datetime(2026, 3, 1, 10, 5),
        datetime(2026, 3, 1, 10, 10),
        datetime(2026, 3, 1, 10, 15),
    ]


def test_next_is_strictly_after_a_matching_minute() -> None:
    assert fires("*/5 * * * *", datetime(2026, 3, 1, 10, 5, 0), 1) == [datetime(2026, 3, 1, 10, 10)]


def test_weekdays_at_three() -> None:
    # 2026-03-06 is a Friday: the next weekday 03:00 after Friday 04:00 is Monday the 9th
    assert fires("0 3 * * 1-5", datetime(2026, 3, 6, 4, 0), 2) == [
        datetime(2026, 3, 9, 3, 0),
        datetime(2026, 3, 10, 3, 0),
    ]


def test_lists_ranges_and_steps() -> None:
    cron = CronSchedule.parse("0,30 8-18/2 * * *")
    assert cron.minutes == (0, 30)
    assert cron.hours == (8, 10, 12, 14, 16, 18)
    assert CronSchedule.parse("5/20 * * * *").minutes == (5, 25, 45)
    assert CronSchedule.parse("10-20/5,50 * * * *").minutes == (10, 15, 20, 50)


def test_names_and_sunday_as_seven() -> None:
    assert CronSchedule.parse("0 0 * jan,JUL sun").months == frozenset({1, 7})
    assert CronSchedule.parse("0 0 * * 7").weekdays == frozenset({0})
    assert CronSchedule.parse("0 0 * * mon-fri").weekdays == frozenset({1, 2, 3, 4, 5})
    # 2026-03-01 is a Sunday
    assert fires("30 12 * * SUN", datetime(2026, 2, 26), 1) == [datetime(2026, 3, 1, 12, 30)]


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    # Vixie cron: the 13th, or any Friday (2026-03-06 is a Friday, the 13th is one too)
    assert fires("0 0 13 * 5", datetime(2026, 3, 1), 3) == [
        datetime(2026, 3, 6),
        datetime(2026, 3, 13),
        datetime(2026, 3, 20),
    ]
    # a starred day-of-month keeps AND semantics: Fridays only
    assert fires("0 0 */1 * 5", datetime(2026, 3, 1), 1) == [datetime(2026, 3, 6)]


def test_month_and_year_rollover_and_leap_day() -> None:
    assert fires("0 0 1 * *", datetime(2026, 12, 31, 23, 59), 1) == [datetime(2027, 1, 1)]
    assert fires("59 23 31 * *", datetime(2026, 4, 1), 1) == [datetime(2026, 5, 31, 23, 59)]
    assert fires("0 12 29 2 *", datetime(2026, 3, 1), 1) == [datetime(2028, 2, 29, 12, 0)]


def test_macros() -> None:
    assert fires("@hourly", datetime(2026, 3, 1, 10, 0), 1) == [datetime(2026, 3, 1, 11, 0)]
    assert fires("@daily", datetime(2026, 3, 1, 10, 0), 1) == [datetime(2026, 3, 2)]
    assert fires("@weekly", datetime(2026, 3, 2), 1) == [datetime(2026, 3, 8)]
    assert fires("@yearly", datetime(2026, 3, 2), 1) == [datetime(2027, 1, 1)]


def test_extra_whitespace_is_fine() -> None:
    assert CronSchedule.parse("  */15   *  * *  * ").minutes == (0, 15, 30, 45)


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", "expected 5 fields"),
        ("* * * *", "expected 5 fields"),
        ("0 * * * * *", "seconds and years are not supported"),
        ("60 * * * *", "minute 60 is out of range 0-59"),
        ("* 24 * * *", "hour 24 is out of range 0-23"),
        ("* * 0 * *", "day-of-month 0 is out of range 1-31"),
        ("* * * 13 *", "month 13 is out of range 1-12"),
        ("* * * * 8", "day-of-week 8 is out of range 0-7"),
        ("*/0 * * * *", "step '0' must be a whole number"),
        ("*/x * * * *", "step 'x' must be a whole number"),
        ("30-10 * * * *", "runs backwards"),
        ("1,,2 * * * *", "empty term"),
        ("-5 * * * *", "missing a number"),
        ("a * * * *", "minute 'a' is not a number"),
        ("* * * foo *", "month 'foo' is not a number or a name"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4,6 *", "never fires"),
        ("@reboot", "unknown macro"),
    ],
)
def test_invalid_expressions_are_rejected_clearly(expr: str, message: str) -> None:
    with pytest.raises(ScheduleError) as err:
        CronSchedule.parse(expr)
    assert message in err.value.message
    assert repr(expr) in err.value.message  # the operator sees which expression
    assert isinstance(err.value, ConfigError)  # the CLI exits with the config error code


def test_next_after_uses_local_time_and_moves_forward() -> None:
    cron = CronSchedule.parse("*/5 * * * *")
    t = datetime(2026, 3, 1, 10, 2, 30).timestamp()
    assert cron.next_after(t) == datetime(2026, 3, 1, 10, 5).timestamp()
    assert cron.next_after(cron.next_after(t)) == datetime(2026, 3, 1, 10, 10).timestamp()


def test_interval_and_on_demand() -> None:
    assert IntervalSchedule(2.5).next_after(100.0) == 102.5
    assert OnDemand().next_after(100.0) == math.inf


def test_schedule_from_config() -> None:
    assert isinstance(schedule_from_config(BatchConfig(interval_s=5)), IntervalSchedule)
    cron = schedule_from_config(BatchConfig(interval_s=5, cron="0 3 * * *"))
    assert isinstance(cron, CronSchedule)  # cron wins
    assert str(cron) == "cron '0 3 * * *'"
    assert isinstance(schedule_from_config(BatchConfig(interval_s=None)), OnDemand)
    with pytest.raises(ValidationError, match="fields"):  # refused when the config loads
        BatchConfig(cron="0 3 * *")

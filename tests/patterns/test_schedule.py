"""Batch schedules: cron expressions (cronsim) and next fire times, daylight saving and time zones,
intervals, on-demand."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

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

BERLIN = ZoneInfo("Europe/Berlin")  # 2026: clocks jump 02:00 -> 03:00 on 29 March, back on 25 October


def fires(expr: str, after: datetime, n: int = 3, timezone: str = "UTC") -> list[datetime]:
    """Fire times as naive wall-clock datetimes of ``timezone`` (``after`` is read in it too)."""
    cron = CronSchedule.parse(expr, timezone)
    zone = ZoneInfo(timezone)
    out, t = [], after.replace(tzinfo=zone) if after.tzinfo is None else after
    for _ in range(n):
        t = cron.next_datetime(t)
        out.append(t.astimezone(zone).replace(tzinfo=None))
    return out


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


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
    at = datetime(2026, 3, 1, 7, 0)
    assert fires("0,30 8-18/2 * * *", at, 3) == [
        datetime(2026, 3, 1, 8, 0),
        datetime(2026, 3, 1, 8, 30),
        datetime(2026, 3, 1, 10, 0),
    ]
    assert [d.minute for d in fires("5/20 * * * *", at, 3)] == [5, 25, 45]
    assert [d.minute for d in fires("10-20/5,50 * * * *", at, 4)] == [10, 15, 20, 50]


def test_names_and_sunday_as_seven() -> None:
    # 2026-03-01 is a Sunday
    assert fires("0 0 * jan,JUL sun", datetime(2026, 3, 1, 1), 1) == [datetime(2026, 7, 5)]
    assert fires("0 0 * * 7", datetime(2026, 3, 2), 1) == [datetime(2026, 3, 8)]
    assert [d.isoweekday() for d in fires("0 0 * * mon-fri", datetime(2026, 3, 1), 6)] == [1, 2, 3, 4, 5, 1]
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
    assert [d.minute for d in fires("  */15   *  * *  * ", datetime(2026, 3, 1), 4)] == [15, 30, 45, 0]


def test_cronsim_extensions_last_day_and_nth_weekday() -> None:
    assert fires("0 0 L * *", datetime(2026, 2, 1), 2) == [datetime(2026, 2, 28), datetime(2026, 3, 31)]
    assert fires("0 9 * * 5#2", datetime(2026, 3, 1), 1) == [datetime(2026, 3, 13, 9)]  # second Friday


# -- daylight saving (Debian cron's rules) and time zones ---------------------------------
def test_a_fixed_time_in_the_skipped_spring_hour_runs_when_the_clocks_have_jumped() -> None:
    at = datetime(2026, 3, 28, 12, 0, tzinfo=BERLIN)
    assert fires("30 2 * * *", at, 3, "Europe/Berlin") == [
        datetime(2026, 3, 29, 3, 0),  # 02:30 does not exist that night
        datetime(2026, 3, 30, 2, 30),
        datetime(2026, 3, 31, 2, 30),
    ]


def test_a_fixed_time_in_the_repeated_autumn_hour_runs_once() -> None:
    cron = CronSchedule.parse("30 2 * * *", "Europe/Berlin")
    first = cron.next_after(datetime(2026, 10, 24, 12, 0, tzinfo=BERLIN).timestamp())
    assert first == utc(2026, 10, 25, 0, 30).timestamp()  # 02:30 CEST, the first of the two
    second = cron.next_after(first)
    assert second == utc(2026, 10, 26, 1, 30).timestamp()  # not 02:30 CET an hour later
    assert second - first == timedelta(hours=25).total_seconds()


def test_every_30_minutes_stays_every_30_minutes_through_both_changes() -> None:
    cron = CronSchedule.parse("*/30 * * * *", "Europe/Berlin")
    for start in (utc(2026, 3, 28, 23, 10), utc(2026, 10, 24, 22, 10)):  # 00:10 local, before each change
        t = cron.next_after(start.timestamp())
        times = [t]
        for _ in range(8):
            times.append(cron.next_after(times[-1]))
        assert {b - a for a, b in itertools.pairwise(times)} == {1800.0}


def test_the_same_expression_fires_at_the_time_of_its_zone() -> None:
    noon = utc(2026, 7, 1, 12, 0).timestamp()
    at_nine = {
        tz: CronSchedule.parse("0 9 * * *", tz).next_after(noon) for tz in ("Asia/Tokyo", "America/New_York")
    }
    assert at_nine["Asia/Tokyo"] == utc(2026, 7, 2, 0, 0).timestamp()  # 09:00 JST = 00:00 UTC
    assert at_nine["America/New_York"] == utc(2026, 7, 1, 13, 0).timestamp()  # 09:00 EDT = 13:00 UTC


def test_without_a_zone_the_device_local_time_is_used_tz_environment_included() -> None:
    """A fresh interpreter per zone: the local zone is read from TZ when the schedule is parsed."""
    code = (
        "from edge_agent.workers.schedule import CronSchedule;"
        "print(CronSchedule.parse('0 9 * * *').next_after(1782907200.0))"  # 2026-07-01 12:00 UTC
    )
    got = {}
    for tz in ("Asia/Tokyo", "America/New_York", "UTC"):
        env = os.environ | {"TZ": tz}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        got[tz] = float(out.stdout)
    assert got == {
        "Asia/Tokyo": utc(2026, 7, 2, 0, 0).timestamp(),
        "America/New_York": utc(2026, 7, 1, 13, 0).timestamp(),
        "UTC": utc(2026, 7, 2, 9, 0).timestamp(),
    }


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", "expected 5 fields"),
        ("* * * *", "expected 5 fields"),
        ("0 * * * * *", "seconds and years are not supported"),
        ("60 * * * *", "minute field '60' is not valid"),
        ("* 24 * * *", "hour field '24' is not valid"),
        ("* * 0 * *", "day-of-month field '0' is not valid"),
        ("* * * 13 *", "month field '13' is not valid"),
        ("* * * * 8", "day-of-week field '8' is not valid"),
        ("*/0 * * * *", "minute field '*/0' is not valid"),
        ("*/x * * * *", "minute field '*/x' is not valid"),
        ("30-10 * * * *", "minute field '30-10' is not valid"),
        ("1,,2 * * * *", "minute field '1,,2' is not valid"),
        ("a * * * *", "values 0-59"),
        ("* * * foo *", "values 1-12 or jan-dec"),
        ("0 0 30 2 *", "a day some chosen month has"),
        ("0 0 31 4,6 *", "day-of-month field '31' is not valid"),
        ("@reboot", "unknown macro"),
    ],
)
def test_invalid_expressions_are_rejected_clearly(expr: str, message: str) -> None:
    with pytest.raises(ScheduleError) as err:
        CronSchedule.parse(expr)
    assert message in err.value.message
    assert repr(expr) in err.value.message  # the operator sees which expression
    assert isinstance(err.value, ConfigError)  # the CLI exits with the config error code


def test_next_after_moves_forward() -> None:
    cron = CronSchedule.parse("*/5 * * * *")
    t = datetime(2026, 3, 1, 10, 2, 30).timestamp()  # local time, as the schedule without a zone
    assert cron.next_after(t) == datetime(2026, 3, 1, 10, 5).timestamp()
    assert cron.next_after(cron.next_after(t)) == datetime(2026, 3, 1, 10, 10).timestamp()


def test_an_unknown_time_zone_is_refused_at_config_load_with_the_cron_problem_too() -> None:
    with pytest.raises(ValidationError) as err:
        BatchConfig(cron="61 * * * *", timezone="Europe/Berln")
    text = str(err.value)
    assert "minute field '61' is not valid" in text  # every problem listed at once
    assert "unknown time zone 'Europe/Berln': use an IANA name such as 'Europe/Berlin'" in text
    with pytest.raises(ScheduleError, match="unknown time zone"):
        CronSchedule.parse("0 3 * * *", "Nowhere/Atlantis")


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

"""When schedules fire: five-field cron in IANA zones across DST transitions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from common.schedules.cron import ScheduleError, check, next_run


def firings(cron: str, zone: str, start: datetime, count: int) -> list[str]:
    out, at = [], start
    for _ in range(count):
        at = next_run(cron, zone, at)
        out.append(at.strftime("%m-%d %H:%M"))
    return out


def test_fixed_hour_fires_once_in_the_repeated_hour_of_a_fall_back() -> None:
    # Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET, so 02:30 happens twice; it fires once (as CEST).
    assert firings("30 2 * * *", "Europe/Berlin", datetime(2026, 10, 24, 12, tzinfo=UTC), 3) == [
        "10-25 00:30",
        "10-26 01:30",
        "10-27 01:30",
    ]


def test_a_time_skipped_by_spring_forward_fires_right_after_the_gap() -> None:
    # Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST; a 02:00 job runs at 03:00 CEST (01:00 UTC).
    assert firings("0 2 * * *", "Europe/Berlin", datetime(2026, 3, 28, 12, tzinfo=UTC), 3) == [
        "03-29 01:00",
        "03-30 00:00",
        "03-31 00:00",
    ]


def test_wildcard_hours_follow_real_time_through_the_repeated_hour() -> None:
    assert firings("*/30 * * * *", "Europe/Berlin", datetime(2026, 10, 24, 23, 50, tzinfo=UTC), 6) == [
        "10-25 00:00",
        "10-25 00:30",
        "10-25 01:00",
        "10-25 01:30",
        "10-25 02:00",
        "10-25 02:30",
    ]


def test_weekday_mornings_keep_local_time_across_the_change() -> None:
    # New York leaves EDT on 2026-11-01: 09:00 local is 13:00 UTC before, 14:00 UTC after; no weekend runs.
    assert firings("0 9 * * 1-5", "America/New_York", datetime(2026, 10, 30, 12, tzinfo=UTC), 3) == [
        "10-30 13:00",
        "11-02 14:00",
        "11-03 14:00",
    ]


@pytest.mark.parametrize(
    ("cron", "zone"),
    [
        ("0 9 * * 1-5 2026", "UTC"),
        ("61 * * * *", "UTC"),
        ("@daily", "UTC"),
        ("0 9 * * *", "Mars/Olympus"),
        ("0 0 31 2 *", "UTC"),
    ],
)
def test_only_five_fields_and_known_zones(cron: str, zone: str) -> None:
    with pytest.raises(ScheduleError):
        check(cron, zone)

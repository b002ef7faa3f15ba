"""Five-field cron in a time zone (croniter, zoneinfo): when a schedule fires next.

In the repeated hour of a fall-back, a schedule at fixed hours fires once (the first occurrence);
one with `*` in the hour field follows real time. A time skipped by a spring-forward fires at the
first minute after the gap.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter


class ScheduleError(ValueError):
    """A cron line or time zone relaygate does not take; the message is for the client."""


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown time zone {name!r}") from None


def check(cron: str, timezone: str) -> None:
    """Refuse anything but a standard five-field line that fires, and a known IANA zone."""
    if len(cron.split()) != 5 or not croniter.is_valid(cron):
        raise ScheduleError(f"not a five-field cron line: {cron!r}")
    next_run(cron, timezone, datetime.now(UTC))


def _second_occurrence(moment: datetime, tz: ZoneInfo) -> bool:
    """Whether `moment` is the repeat of a local time that a fall-back shows twice."""
    naive = moment.astimezone(tz).replace(tzinfo=None)
    first = naive.replace(fold=0, tzinfo=tz)
    return first.utcoffset() != naive.replace(fold=1, tzinfo=tz).utcoffset() and first.astimezone(
        UTC
    ) != moment.astimezone(UTC)


def next_run(cron: str, timezone: str, after: datetime) -> datetime:
    """The first firing strictly after `after`, in UTC."""
    tz = zone(timezone)
    fixed_hours = "*" not in cron.split()[1]
    ticks = croniter(cron, after.astimezone(tz))
    try:
        for _ in range(10_000):
            moment: datetime = ticks.get_next(datetime)
            if fixed_hours and _second_occurrence(moment, tz):
                continue
            return moment.astimezone(UTC)
    except CroniterBadDateError:
        pass
    raise ScheduleError(f"{cron!r} never fires")

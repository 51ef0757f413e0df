"""An account's limits across all its jobs: daily cap, warm-up after pairing, quiet hours.

Days and hours are the account's own (its ``timezone``); the count of the day is kept in the
store (``sessions/<userId>/count.json``) so a restarted host does not start the day again at zero.
The account's pace between messages is kept there too (``AccountCount``).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

from infra.documents import WARMUP_CAPS, AccountSettings, DailyCount


class AccountCount(DailyCount):
    """The day's count, with the account's pace: when its last message left and when its next may (UTC),
    so that a restarted host, or the one that takes the account over, keeps the gap."""

    lastSentAt: dt.datetime | None = None
    nextAt: dt.datetime | None = None


class Block(tuple[str, dt.datetime]):
    """Why sending waits, and until when (UTC)."""

    @property
    def reason(self) -> str:
        return self[0]

    @property
    def until(self) -> dt.datetime:
        return self[1]


class AccountLimits:
    def __init__(self, settings: AccountSettings, count: AccountCount | None = None) -> None:
        self.settings = settings
        self.zone = zoneinfo.ZoneInfo(settings.timezone)
        self.count = count or AccountCount(day="")

    def blocked(self, now: dt.datetime, paired_at: dt.datetime | None) -> Block | None:
        """Why the account may not send at ``now``, or None when it may."""
        local = now.astimezone(self.zone)
        if (quiet := self._quiet_until(local)) is not None:
            return Block((f"quiet hours until {quiet:%H:%M} {self.settings.timezone}", quiet.astimezone(dt.UTC)))
        cap = self.cap(local.date(), paired_at)
        if cap is not None and self.sent_on(local.date()) >= cap:
            midnight = dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time(), self.zone)
            kind = "warm-up cap" if cap != self.settings.dailyCap else "daily cap"
            return Block(
                (
                    f"{kind} of {cap} messages reached; sending resumes at midnight {self.settings.timezone}",
                    midnight.astimezone(dt.UTC),
                )
            )
        return None

    def cap(self, day: dt.date, paired_at: dt.datetime | None) -> int | None:
        cap = self.settings.dailyCap
        if self.settings.warmup and paired_at is not None:
            age = (day - paired_at.astimezone(self.zone).date()).days
            if 0 <= age < len(WARMUP_CAPS):
                cap = WARMUP_CAPS[age] if cap is None else min(cap, WARMUP_CAPS[age])
        return cap

    def sent_on(self, day: dt.date) -> int:
        return self.count.sent if self.count.day == day.isoformat() else 0

    def record_sent(self, now: dt.datetime, next_at: dt.datetime | None = None, counted: bool = True) -> AccountCount:
        """A message left at ``now``; the next may leave at ``next_at``. ``counted``: it counts towards
        the day's cap (one WhatsApp refused does not)."""
        day = now.astimezone(self.zone).date()
        sent = self.sent_on(day) + (1 if counted else 0)
        self.count = AccountCount(day=day.isoformat(), sent=sent, lastSentAt=now, nextAt=next_at)
        return self.count

    def _quiet_until(self, local: dt.datetime) -> dt.datetime | None:
        quiet = self.settings.quietHours
        if quiet is None:
            return None
        start, end, now = _clock(quiet.start), _clock(quiet.end), local.time().replace(tzinfo=None)
        inside = start <= now < end if start < end else (now >= start or now < end)
        if not inside:
            return None
        end_day = local.date() if now < end else local.date() + dt.timedelta(days=1)
        return dt.datetime.combine(end_day, end, self.zone)


def _clock(text: str) -> dt.time:
    hours, minutes = text.split(":")
    return dt.time(int(hours), int(minutes))

"""An account's own limits: daily cap, quiet hours, warm-up, across its jobs and restarts."""

from __future__ import annotations

import asyncio
import datetime as dt
import zoneinfo
from pathlib import Path

import pytest

from api.service import send_command
from infra import layout
from infra.documents import (
    AccountSettings,
    AntiBanSettings,
    DailyCount,
    QuietHours,
    ReloadSettings,
    decode,
    encode,
    utcnow,
)
from infra.store.s3 import S3Store
from session_host.limits import AccountLimits
from tests.host.harness import HostHarness, until

INSTANT = AntiBanSettings(randomDelayMin=0, randomDelayMax=0, batchSize=1000, batchDelayMs=0)
UTC = dt.UTC


def set_limits(store: S3Store, user_id: str, settings: AccountSettings) -> None:
    """What PUT /sessions/{userId}/settings does."""
    store.put(layout.account_settings(user_id), encode(settings))
    send_command(store, user_id, ReloadSettings(issuedAt=utcnow()))


async def waiting_with(h: HostHarness, job_id: str, words: str) -> object:
    async def probe() -> object:
        state = await h.job(job_id)
        return state if state.status == "waiting" and words in (state.detail or "") else None

    return await until(probe, 10, f"the job to wait for {words!r}")


def test_daily_cap_holds_across_jobs_and_lifts_with_new_settings(s3_store: S3Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            set_limits(s3_store, "u1", AccountSettings(dailyCap=3, timezone="America/Sao_Paulo"))
            await h.connect("u1", "5511977770001")
            first = await h.submit("u1", [("A", "5511900000601"), ("B", "5511900000602")], antiBanSettings=INSTANT)
            await h.final(first)
            second = await h.submit(
                "u1", [(f"C{i}", f"55119000006{i + 10}") for i in range(3)], antiBanSettings=INSTANT
            )
            state = await waiting_with(h, second, "daily cap of 3 messages reached")
            assert state.totals.sent == 1 and len(h.world.delivered("u1")) == 3  # type: ignore[attr-defined]
            count = decode(s3_store.get(layout.daily_count("u1")).data, DailyCount)
            today = utcnow().astimezone(zoneinfo.ZoneInfo("America/Sao_Paulo")).date().isoformat()
            assert (count.day, count.sent) == (today, 3)
            local_midnight = dt.datetime.combine(
                dt.date.fromisoformat(today) + dt.timedelta(days=1), dt.time(), zoneinfo.ZoneInfo("America/Sao_Paulo")
            )
            assert state.estimatedEnd is not None and state.estimatedEnd >= local_midnight  # type: ignore[attr-defined]
            third = await h.submit("u1", [("D", "5511900000621")], antiBanSettings=INSTANT)
            await waiting_with(h, third, "daily cap of 3 messages reached")  # queued behind, and says why
            await asyncio.sleep(0.5)
            assert len(h.world.delivered("u1")) == 3
            set_limits(s3_store, "u1", AccountSettings(dailyCap=10))
            assert (await h.final(second)).totals.sent == 3
            assert (await h.final(third)).totals.sent == 1
            assert len(h.world.delivered("u1")) == 6

    asyncio.run(scenario())


def test_the_count_of_the_day_survives_a_restart(s3_store: S3Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            set_limits(s3_store, "u1", AccountSettings(dailyCap=2))
            await h.connect("u1", "5511977770001")
            await h.final(
                await h.submit("u1", [("A", "5511900000701"), ("B", "5511900000702")], antiBanSettings=INSTANT)
            )
        async with HostHarness(s3_store, tmp_path) as h:
            job_id = await h.submit("u1", [("C", "5511900000703")], antiBanSettings=INSTANT)
            await waiting_with(h, job_id, "daily cap of 2")

    asyncio.run(scenario())


def test_quiet_hours_hold_messages_until_they_end(s3_store: S3Store, tmp_path: Path) -> None:
    zone = "Asia/Tokyo"
    local = utcnow().astimezone(zoneinfo.ZoneInfo(zone))
    start, end = (local - dt.timedelta(hours=1)), (local + dt.timedelta(hours=1))
    quiet = QuietHours(start=f"{start:%H:%M}", end=f"{end:%H:%M}")

    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            set_limits(s3_store, "u1", AccountSettings(quietHours=quiet, timezone=zone))
            await h.connect("u1", "5511977770001")
            job_id = await h.submit("u1", [("A", "5511900000801")], antiBanSettings=INSTANT)
            await waiting_with(h, job_id, f"quiet hours until {end:%H:%M} Asia/Tokyo")
            await asyncio.sleep(0.5)
            assert h.world.delivered("u1") == []
            set_limits(s3_store, "u1", AccountSettings(timezone=zone))
            assert (await h.final(job_id)).totals.sent == 1

    asyncio.run(scenario())


def test_warm_up_limits_a_newly_paired_account(s3_store: S3Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            set_limits(s3_store, "u1", AccountSettings(dailyCap=None, warmup=True))
            await h.connect("u1", "5511977770001")
            assert (await h.status("u1")).pairedAt is not None  # type: ignore[union-attr]
            job_id = await h.submit(
                "u1", [(f"N{i}", f"55119000009{i:02d}") for i in range(22)], antiBanSettings=INSTANT
            )
            state = await waiting_with(h, job_id, "warm-up cap of 20 messages reached")
            assert state.totals.sent == 20 and len(h.world.delivered("u1")) == 20  # type: ignore[attr-defined]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("utc_time", "expected"),
    [
        ("2026-12-03T23:30", None),  # 20:30 in São Paulo: before quiet hours
        ("2026-12-04T00:30", "2026-12-04T11:00"),  # 21:30: quiet until 08:00 local, 11:00 UTC
        ("2026-12-04T10:59", "2026-12-04T11:00"),  # 07:59
        ("2026-12-04T11:00", None),  # 08:00: over
    ],
)
def test_quiet_hours_that_span_midnight(utc_time: str, expected: str | None) -> None:
    limits = AccountLimits(AccountSettings(quietHours=QuietHours(start="21:00", end="08:00")))
    block = limits.blocked(dt.datetime.fromisoformat(utc_time).replace(tzinfo=UTC), None)
    assert (block.until.strftime("%Y-%m-%dT%H:%M") if block else None) == expected


def test_the_daily_count_starts_again_at_local_midnight() -> None:
    limits = AccountLimits(AccountSettings(dailyCap=1, timezone="America/Sao_Paulo"))
    limits.record_sent(dt.datetime(2026, 12, 4, 2, 0, tzinfo=UTC))  # 23:00 on the 3rd in São Paulo
    block = limits.blocked(dt.datetime(2026, 12, 4, 2, 30, tzinfo=UTC), None)
    assert block is not None and block.until == dt.datetime(2026, 12, 4, 3, 0, tzinfo=UTC)
    assert limits.blocked(dt.datetime(2026, 12, 4, 3, 1, tzinfo=UTC), None) is None


def test_warm_up_caps_grow_by_day_and_end() -> None:
    limits = AccountLimits(AccountSettings(dailyCap=100, warmup=True, timezone="UTC"))
    paired = dt.datetime(2026, 12, 1, 12, tzinfo=UTC)
    caps = [limits.cap(dt.date(2026, 12, 1) + dt.timedelta(days=d), paired) for d in range(7)]
    assert caps == [20, 40, 80, 100, 100, 100, 100]

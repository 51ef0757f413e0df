"""Faults in words: WhatsApp unreachable, a temporary ban; the host says what failed and comes back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from infra.store.s3 import S3Store
from session_host import sessions
from tests.host.harness import HostHarness, until


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessions, "RETRY_BACKOFF", (0.3, 0.6, 1.2))


def test_unreachable_whatsapp_is_said_in_words_and_retried_with_backoff(s3_store: S3Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            await h.connect("u1", "5511977770001")
            job_id = await h.submit("u1", [("Ana", "5511900000001"), ("Bia", "5511900000002")])
            await h.final(job_id)
            h.world.unreachable("u1", seconds=1.5)
            h.world.drop("u1", down_for=0.1)  # the link breaks, and reconnecting fails until WhatsApp is back
            status = await until(lambda: _reconnecting_because(h, "cannot be reached"), 10, "a failed reconnect")
            assert "WhatsApp cannot be reached" in (status.detail or "") and "trying again in" in (status.detail or "")
            back = await h.until_state("u1", "connected", timeout=10)
            assert back.paired and back.jid == "5511977770001@s.whatsapp.net"
            second = await h.submit("u1", [("Cid", "5511900000003")])
            assert (await h.final(second)).totals.sent == 1

    asyncio.run(scenario())


def test_a_temporary_ban_pauses_the_account_and_it_comes_back_after_it(s3_store: S3Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            await h.connect("u1", "5511977770001")
            h.world.temporary_ban("u1", seconds=1.5, reason="spam reports")
            status = await h.until_state("u1", "paused")
            assert "temporary ban until" in (status.detail or "") and "spam reports" in (status.detail or "")
            job_id = await h.submit("u1", [("Ana", "5511900000001")])
            await asyncio.sleep(0.5)
            assert (await h.job(job_id)).status == "waiting" and h.world.delivered("u1") == []
            await h.until_state("u1", "connected", timeout=10)
            assert (await h.final(job_id)).totals.sent == 1

    asyncio.run(scenario())


async def _reconnecting_because(h: HostHarness, words: str) -> object:
    status = await h.status("u1")
    return status if status and status.state == "reconnecting" and words in (status.detail or "") else None


def test_a_passing_send_failure_is_retried_with_backoff(
    s3_store: S3Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from session_host import sender

    monkeypatch.setattr(sender, "RETRY_BASE", 0.4)

    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            await h.connect("u1", "5511977770001")
            h.world.fail_next_sends("u1", 2)
            started = asyncio.get_running_loop().time()
            job_id = await h.submit("u1", [("Ana", "5511900000001")])
            state = await h.final(job_id)
            assert state.totals.sent == 1 and state.results[0].attempts == 3
            assert asyncio.get_running_loop().time() - started >= 0.4 + 0.8  # two pauses, doubling
            assert len(h.world.delivered("u1")) == 1

            h.world.fail_next_sends("u1", 9, reason="server error 503")
            job_id = await h.submit("u1", [("Bia", "5511900000002")])
            state = await h.final(job_id, timeout=30)
            assert state.results[0].status == "failed" and state.results[0].attempts == sender.MAX_ATTEMPTS
            assert "server error 503" in (state.results[0].error or "")

    asyncio.run(scenario())

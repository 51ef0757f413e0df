"""The sender keeps its word through cancels, restarts and unexpected errors (local-directory store)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from api.service import send_command
from infra import jobs, layout
from infra.documents import AntiBanSettings, ControlJob, JobState, utcnow
from infra.settings import HostSettings
from infra.store.local import LocalStore
from session_host import sender
from session_host.limits import AccountCount
from session_host.media import MediaError
from session_host.sender import AccountSender
from session_host.storage import Storage
from session_host.whatsapp.simulated import SimulatedClient, SimulatedWorld
from tests.host.harness import FAST, HostHarness, holds, until

THREE = [("A", "5511900000001"), ("B", "5511900000002"), ("C", "5511900000003")]


def slow(ms: int, batch_size: int = 100, batch_ms: int | None = None, typing: bool = False) -> AntiBanSettings:
    return AntiBanSettings(
        randomDelayMin=ms, randomDelayMax=ms, batchSize=batch_size, batchDelayMs=batch_ms or ms, typing=typing
    )


async def control(store: LocalStore, job_id: str, action: str) -> None:
    await asyncio.to_thread(send_command, store, "u1", ControlJob(issuedAt=utcnow(), jobId=job_id, action=action))


async def delivered(h: HostHarness, count: int) -> None:
    async def enough() -> bool:
        return len(h.world.delivered("u1")) >= count

    await until(enough, 10, f"{count} messages")


async def state_where(h: HostHarness, job_id: str, test: Any, what: str, timeout: float = 5) -> JobState:
    async def probe() -> JobState | None:
        state = await h.job(job_id)
        return state if test(state) else None

    return await until(probe, timeout, what)  # type: ignore[no-any-return]


def test_a_cancel_ends_the_pause_between_messages_at_once(local_store: LocalStore, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with HostHarness(local_store, tmp_path) as h:
            await h.connect("u1", "5511977770000")
            job_id = await h.submit("u1", THREE, antiBanSettings=slow(4000))
            await delivered(h, 1)
            await asyncio.sleep(0.3)  # the sender is in its 4 s pause
            await control(local_store, job_id, "cancel")
            state = await state_where(h, job_id, lambda s: s.status == "cancelled", "the cancel", timeout=1.0)
            assert [r.status for r in state.results] == ["sent", "skipped", "skipped"]
            await asyncio.sleep(0.5)
            assert len(h.world.delivered("u1")) == 1

    asyncio.run(scenario())


def test_a_cancel_is_kept_by_a_host_stopped_before_the_job_ended(local_store: LocalStore, tmp_path: Path) -> None:
    SimulatedWorld(tmp_path / "whatsapp").set_message_ids(False)  # as neonize 0.5.2

    async def scenario() -> None:
        async with HostHarness(local_store, tmp_path) as h:
            await h.connect("u1", "5511977770000")
            job_id = await h.submit("u1", THREE)
            await delivered(h, 1)
            h.world.hang_after_next_send("u1")  # B's send leaves and never returns
            await delivered(h, 2)
            await control(local_store, job_id, "cancel")
            state = await state_where(h, job_id, lambda s: s.totals.skipped == 1, "the cancel in the store")
            assert state.status == "running"  # B is still on its way when the host stops
        async with HostHarness(local_store, tmp_path) as h2:
            state = await h2.final(job_id)
            assert state.status == "cancelled"
            assert [r.status for r in state.results] == ["sent", "unknown", "skipped"]
            await asyncio.sleep(0.5)
            assert [m.to.split("@")[0] for m in h2.world.delivered("u1")] == ["5511900000001", "5511900000002"]

    asyncio.run(scenario())


def test_cancelling_a_paused_job_whose_message_may_have_left_reports_it_unknown(
    local_store: LocalStore, tmp_path: Path
) -> None:
    SimulatedWorld(tmp_path / "whatsapp").set_message_ids(False)

    async def scenario() -> None:
        async with HostHarness(local_store, tmp_path) as h:
            await h.connect("u1", "5511977770000")
            job_id = await h.submit("u1", THREE)
            await delivered(h, 1)
            h.world.hang_after_next_send("u1")
            await delivered(h, 2)
            await control(local_store, job_id, "pause")
            await state_where(h, job_id, lambda s: s.status == "paused", "the pause")
        async with HostHarness(local_store, tmp_path) as h2:
            await asyncio.sleep(0.5)
            assert (await h2.job(job_id)).status == "paused"
            await control(local_store, job_id, "cancel")
            state = await h2.final(job_id)
            assert state.status == "cancelled"
            assert [r.status for r in state.results] == ["sent", "unknown", "skipped"]
            assert "may have left" in (state.results[1].error or "")
            assert len(h2.world.delivered("u1")) == 2

    asyncio.run(scenario())


def test_the_pace_and_the_batch_go_on_across_a_restart(local_store: LocalStore, tmp_path: Path) -> None:
    pace = slow(1500, batch_size=2, batch_ms=3000)

    async def scenario() -> None:
        async with HostHarness(local_store, tmp_path) as h:
            await h.connect("u1", "5511977770000")
            job_id = await h.submit("u1", THREE, antiBanSettings=pace)
            await delivered(h, 1)
        assert len(h.world.delivered("u1")) == 1
        async with HostHarness(local_store, tmp_path) as h2:
            assert (await h2.final(job_id)).totals.sent == 3
            at = [m.at for m in h2.world.delivered("u1")]
            assert at[1] - at[0] >= 1.5, "the gap after the message sent before the restart"
            assert at[2] - at[1] >= 3.0, "the batch pause after the job's second message"

    asyncio.run(scenario())


def test_reloading_settings_keeps_the_count_made_meanwhile(local_store: LocalStore) -> None:
    class SlowCountStore(LocalStore):
        def get(self, key: str) -> Any:
            if key == layout.daily_count("u1"):
                time.sleep(0.3)  # the read is slow
            return super().get(key)

    async def scenario() -> None:
        store = SlowCountStore(local_store.root)
        account = AccountSender("u1", {}, Storage(store), HostSettings(), honours_message_ids=True)
        await account.reload()
        assert account.limits is not None
        reload = asyncio.create_task(account.reload())  # a ReloadSettings command
        await asyncio.sleep(0.1)
        account.limits.record_sent(utcnow())  # a message left meanwhile
        await reload
        assert account.limits.sent_on(utcnow().astimezone(account.limits.zone).date()) == 1

    asyncio.run(scenario())


def test_the_pace_is_read_back_from_the_count() -> None:
    now = dt.datetime(2026, 12, 4, 12, tzinfo=dt.UTC)
    pacer = sender.Pacer(clock=lambda: 100.0)
    pacer.restore(AccountCount(day="2026-12-04", sent=3, lastSentAt=now, nextAt=now + dt.timedelta(seconds=7)), now)
    assert pacer.wait_before(slow(3000)) == 7.0


@pytest.mark.parametrize("honoured", [False, True])
def test_an_unexpected_error_after_the_message_left_never_sends_it_twice(
    local_store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, honoured: bool
) -> None:
    """Without our ids the recipient is ``unknown`` at once; with them it is resent with the same id
    (WhatsApp keeps one) until the attempts run out, then ``unknown``: it most likely arrived."""
    SimulatedWorld(tmp_path / "whatsapp").set_message_ids(honoured)
    original = SimulatedClient.send_text

    async def send_text(self: SimulatedClient, jid: str, text: str, message_id: str) -> Any:
        await original(self, jid, text, message_id)
        raise RuntimeError("a bug after the message left")

    monkeypatch.setattr(SimulatedClient, "send_text", send_text)

    async def scenario() -> None:
        async with HostHarness(local_store, tmp_path) as h:
            await h.connect("u1", "5511977770000")
            state = await h.final(await h.submit("u1", [("A", "5511900000001")]))
            assert Counter(m.text for m in h.world.delivered("u1")) == {"Olá A, tudo bem?": 1}
            result = state.results[0]
            assert (state.status, result.status, result.attempts) == ("done", "unknown", 5 if honoured else 1)
            assert "RuntimeError" in (result.error or "") and result.sendingSince is None

    asyncio.run(scenario())


def test_a_lasting_unexpected_error_before_the_send_gives_up_and_the_account_goes_on(
    local_store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sender, "RETRY_BASE", 0.02)
    original = SimulatedClient.lookup

    async def lookup(self: SimulatedClient, numbers: list[str]) -> Any:
        if "5511900000001" in numbers:
            raise KeyError("a bug before the message left")
        return await original(self, numbers)

    monkeypatch.setattr(SimulatedClient, "lookup", lookup)

    async def scenario() -> None:
        async with HostHarness(local_store, tmp_path) as h:
            await h.connect("u1", "5511977770000")
            first = await h.final(await h.submit("u1", [("A", "5511900000001")], kind="single"))
            assert first.status == "failed" and first.results[0].attempts == 5
            assert (first.results[0].error or "").startswith("gave up after 5 attempts: unexpected error: KeyError")
            second = await h.final(await h.submit("u1", [("B", "5511900000002")], antiBanSettings=FAST))
            assert second.totals.sent == 1 and len(h.world.delivered("u1")) == 1

    asyncio.run(scenario())


def test_a_host_killed_before_the_summary_of_a_cancel_finishes_the_job_cancelled(
    local_store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with HostHarness(local_store, tmp_path) as h:
            await h.connect("u1", "5511977770000")
            job_id = await h.submit("u1", THREE, antiBanSettings=slow(3000))
            await delivered(h, 1)
            _kill_before_summaries(monkeypatch)
            await control(local_store, job_id, "cancel")
            await asyncio.sleep(1.0)
            monkeypatch.undo()
            assert (await h.job(job_id)).status == "running"  # the summary the kill did not write
        local_store.put(layout.queue_marker("u1", job_id), b"")  # the kill came before _finish removed it
        async with HostHarness(local_store, tmp_path) as h2:
            state = await h2.final(job_id)
            assert (state.status, state.detail) == ("cancelled", "cancelled through the API")
            assert [r.status for r in state.results] == ["sent", "skipped", "skipped"]
            assert len(h2.world.delivered("u1")) == 1

    asyncio.run(scenario())


def test_a_host_killed_before_the_summary_of_a_failed_image_finishes_the_job_failed(
    local_store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched: list[str] = []

    async def broken_image(url: str, **_: Any) -> tuple[bytes, str]:
        fetched.append(url)
        raise MediaError("the server answered 404")

    async def scenario() -> None:
        async with HostHarness(local_store, tmp_path) as h:
            monkeypatch.setattr(sender, "fetch_image", broken_image)
            _kill_before_summaries(monkeypatch)
            await h.connect("u1", "5511977770000")
            job_id = await h.submit("u1", THREE[:2], imageUrl="https://example.com/a.png")
            await until(lambda: _true(fetched), 10, "the image fetch")
            await asyncio.sleep(0.5)
            monkeypatch.undo()
        local_store.put(layout.queue_marker("u1", job_id), b"")
        assert (await h.job(job_id)).status == "queued"

        async def good_image(url: str, **_: Any) -> tuple[bytes, str]:
            fetched.append(url)
            return b"\x89PNG\r\n\x1a\n", "image/png"

        monkeypatch.setattr(sender, "fetch_image", good_image)  # the server is back: no reason to send now
        async with HostHarness(local_store, tmp_path) as h2:
            state = await h2.final(job_id)
            assert (state.status, state.detail) == ("failed", "image: the server answered 404")
            assert [r.status for r in state.results] == ["skipped", "skipped"]
            assert h2.world.delivered("u1") == [] and len(fetched) == 1

    asyncio.run(scenario())


def _kill_before_summaries(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on the host's checkpoints stop after the result chunks, as a kill -9 between the two."""

    def chunks_only(store: Any, objects: list[tuple[str, bytes]]) -> None:
        jobs.write_objects(store, [(key, data) for key, data in objects if "/results/" in key])

    monkeypatch.setattr(sender, "write_objects", chunks_only)


async def _true(value: object) -> bool:
    return bool(value)


def test_a_failure_to_record_the_pace_leaves_a_sent_message_sent(
    local_store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_safely = Storage.write_safely
    failed: list[str] = []

    async def failing_once(self: Storage, key: str, document: Any) -> None:
        if key == layout.daily_count("u1") and not failed:
            failed.append(key)
            raise RuntimeError("a bug while writing the count")
        await write_safely(self, key, document)

    monkeypatch.setattr(Storage, "write_safely", failing_once)
    SimulatedWorld(tmp_path / "whatsapp").set_message_ids(False)  # as neonize 0.5.2: "unknown" was the risk

    async def scenario() -> None:
        async with HostHarness(local_store, tmp_path) as h:
            await h.connect("u1", "5511977770001")
            state = await h.final(await h.submit("u1", THREE, antiBanSettings=FAST))
            assert failed and [r.status for r in state.results] == ["sent", "sent", "sent"]
            assert Counter(m.to for m in h.world.delivered("u1")) == Counter(  # type: ignore[attr-defined]
                {f"551190000000{i}@s.whatsapp.net": 1 for i in (1, 2, 3)}
            )

    asyncio.run(scenario())


def test_jobs_say_at_once_that_the_session_dropped_during_a_long_pause_and_queue_again_after(
    local_store: LocalStore, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with HostHarness(local_store, tmp_path) as h:
            await h.connect("u1", "5511977770001")
            first = await h.submit("u1", THREE, antiBanSettings=slow(6000))
            await delivered(h, 1)
            second = await h.submit("u1", [("D", "5511900000004")], antiBanSettings=slow(6000))
            await until(lambda: holds(any(r.id == second for r in h.host.senders["u1"].runs)), 5, "second taken")
            h.world.drop("u1", down_for=2.5)
            started = time.monotonic()
            for job_id in (first, second):  # long before the 6 s pause is over
                await until(lambda j=job_id: _waiting(h, j), 3, f"{job_id} to say the session is down")
            assert time.monotonic() - started < 3
            await until(lambda: holds(len(h.world.delivered("u1")) >= 2), 15, "sending to go on")
            assert (await h.job(first)).status == "running"
            state = await h.job(second)
            assert (state.status, state.detail) == ("queued", f"behind job {first} of the same account")

    asyncio.run(scenario())


async def _waiting(h: HostHarness, job_id: str) -> bool:
    state = await h.job(job_id)
    return state.status == "waiting" and "the session is" in (state.detail or "")


def test_a_long_wait_for_the_pace_is_said_in_the_jobs_detail_and_cleared_by_the_send(
    local_store: LocalStore, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with HostHarness(local_store, tmp_path) as h:
            await h.connect("u1", "5511977770001")
            job_id = await h.submit("u1", THREE[:2], antiBanSettings=slow(6000))
            await delivered(h, 1)
            state = await until(lambda: _said(h, job_id, "keeping the account's pace"), 3, "the wait said")
            assert state.status == "running" and "the next message leaves at" in (state.detail or "")
            final = await h.final(job_id, timeout=15)
            assert final.status == "done" and final.detail is None

    asyncio.run(scenario())


async def _said(h: HostHarness, job_id: str, words: str) -> JobState | None:
    state = await h.job(job_id)
    return state if words in (state.detail or "") else None

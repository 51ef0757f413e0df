"""The sending engine on the real S3 server: campaign control, chunked results, estimated end."""

from __future__ import annotations

import asyncio
from pathlib import Path

from api.service import read_job_state, send_command
from infra import layout
from infra.documents import RESULTS_PER_CHUNK, AntiBanSettings, ControlJob, utcnow
from infra.store.s3 import S3Store
from tests.host.harness import HostHarness, until


async def delivered_at_least(h: HostHarness, user_id: str, count: int) -> None:
    async def enough() -> bool:
        return len(h.world.delivered(user_id)) >= count

    await until(enough, 15, f"{count} messages")


def test_pause_resume_and_cancel(s3_store: S3Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            await h.connect("u1", "5511977770001")
            contacts = [(f"C{i}", f"55119000001{i:02d}") for i in range(8)]
            job_id = await h.submit("u1", contacts)
            await delivered_at_least(h, "u1", 2)
            send_command(s3_store, "u1", ControlJob(issuedAt=utcnow(), jobId=job_id, action="pause"))
            await until(lambda: _status(h, job_id, "paused"), 5, "paused")
            await asyncio.sleep(0.5)  # a message already on its way when the pause came still arrives
            count = len(h.world.delivered("u1"))
            await asyncio.sleep(1.0)  # then nothing leaves while paused
            paused = await h.job(job_id)
            assert count == len(h.world.delivered("u1")) == paused.totals.sent and count < 8
            assert paused.status == "paused"
            # A single send still goes out while the campaign is paused.
            single = await h.submit("u1", [("", "5511900000999")], message="avulsa", kind="single")
            assert (await h.final(single)).status == "done"
            send_command(s3_store, "u1", ControlJob(issuedAt=utcnow(), jobId=job_id, action="resume"))
            await delivered_at_least(h, "u1", count + 2)
            send_command(s3_store, "u1", ControlJob(issuedAt=utcnow(), jobId=job_id, action="cancel"))
            state = await h.final(job_id)
            assert state.status == "cancelled"
            sent = state.totals.sent
            assert sent + state.totals.skipped == 8 and state.totals.pending == 0 and sent < 8
            assert all(r.error == "the job was cancelled" for r in state.results if r.status == "skipped")
            await asyncio.sleep(0.6)
            assert len([m for m in h.world.delivered("u1") if m.text != "avulsa"]) == sent
            assert not s3_store.exists(layout.queue_marker("u1", job_id))

    asyncio.run(scenario())


def test_results_are_stored_in_chunks_and_read_back_whole(s3_store: S3Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            await h.connect("u1", "5511977770001")
            total = RESULTS_PER_CHUNK + 20
            instant = AntiBanSettings(randomDelayMin=0, randomDelayMax=0, batchSize=10_000, batchDelayMs=0)
            job_id = await h.submit("u1", [(f"N{i}", f"55119{i:08d}") for i in range(total)], antiBanSettings=instant)
            state = await h.final(job_id, timeout=120)
            assert state.totals.sent == total and [r.index for r in state.results] == list(range(total))
            assert list(s3_store.list(f"jobs/{job_id}/results/")) == [
                layout.job_results(job_id, 0),
                layout.job_results(job_id, 1),
            ]
            page = read_job_state(s3_store, job_id, offset=RESULTS_PER_CHUNK - 5, limit=10)
            assert [r.index for r in page.results] == list(range(RESULTS_PER_CHUNK - 5, RESULTS_PER_CHUNK + 5))
            assert page.resultsOffset == RESULTS_PER_CHUNK - 5 and page.totals.sent == total
            assert len(h.world.delivered("u1")) == total

    asyncio.run(scenario())


def test_the_estimated_end_follows_the_pace(s3_store: S3Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            await h.connect("u1", "5511977770001")
            pace = AntiBanSettings(randomDelayMin=1000, randomDelayMax=1000, batchSize=3, batchDelayMs=5000)
            job_id = await h.submit("u1", [(f"C{i}", f"55119000002{i:02d}") for i in range(7)], antiBanSettings=pace)
            await delivered_at_least(h, "u1", 1)
            state = await until(lambda: _with_estimate(h, job_id), 5, "an estimate")
            assert state.updatedAt is not None and state.estimatedEnd is not None
            # 6 left after the first: 5 gaps of 1 s, one of them a 5 s batch pause, and one more batch pause.
            seconds = (state.estimatedEnd - state.updatedAt).total_seconds()
            assert 9.0 <= seconds <= 16.0, seconds
            send_command(s3_store, "u1", ControlJob(issuedAt=utcnow(), jobId=job_id, action="cancel"))
            assert (await h.final(job_id)).estimatedEnd is None

    asyncio.run(scenario())


async def _status(h: HostHarness, job_id: str, status: str) -> object:
    state = await h.job(job_id)
    return state if state.status == status else None


async def _with_estimate(h: HostHarness, job_id: str) -> object:
    state = await h.job(job_id)
    return state if state.estimatedEnd is not None and state.totals.sent >= 1 else None

"""A session's state across host restarts and commands, when it is not simply connected: a QR
code that was never scanned when the host stopped or died, and disconnects of accounts that are
logged out or not running on this host. The state must say what is true."""

from __future__ import annotations

import asyncio
from pathlib import Path

from api.service import send_command
from infra.documents import UNPAIRED_AT_STOP, Connect, Disconnect, Logout, utcnow
from infra.store.s3 import S3Store
from tests.host.harness import HostHarness


async def command(h: HostHarness, user_id: str, what: object) -> None:
    await asyncio.to_thread(send_command, h.store, user_id, what)


def test_a_qr_code_unscanned_when_the_host_stops_leaves_a_disconnected_session(
    s3_store: S3Store, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            await command(h, "u1", Connect(issuedAt=utcnow()))
            await h.until_state("u1", "qr")
        status = await h.status("u1")
        assert status is not None and (status.state, status.detail) == ("disconnected", UNPAIRED_AT_STOP)
        async with HostHarness(s3_store, tmp_path) as again:  # and the next host starts nothing for it
            await asyncio.sleep(0.5)
            assert (await again.status("u1")).state == "disconnected"  # type: ignore[union-attr]

    asyncio.run(scenario())


def test_a_host_that_dies_while_a_qr_code_shows_leaves_it_disconnected_for_the_next(
    s3_store: S3Store, tmp_path: Path
) -> None:
    async def scenario() -> None:
        first = HostHarness(s3_store, tmp_path, id="host-a", work_dir=str(tmp_path / "a"))
        await first.__aenter__()
        await command(first, "u1", Connect(issuedAt=utcnow()))
        await first.until_state("u1", "qr")
        first.task.cancel()  # dies: no goodbye
        await asyncio.gather(first.task, return_exceptions=True)
        for session in first.host.sessions.values():
            await session.release()
        await asyncio.sleep(2.5)  # four heartbeats: host-a is taken for dead
        status = await first.status("u1")  # as the API shows it
        assert status is not None and (status.state, status.detail, status.qr) == (
            "disconnected",
            UNPAIRED_AT_STOP,
            None,
        )
        assert status.hostAlive is False
        async with HostHarness(s3_store, tmp_path, id="host-b", work_dir=str(tmp_path / "b")) as second:
            await command(second, "u1", Connect(issuedAt=utcnow()))  # opening /connect again starts afresh
            fresh = await second.until_state("u1", "qr", timeout=15)
            assert fresh.host == "host-b" and fresh.qr

    asyncio.run(scenario())


def test_disconnecting_a_logged_out_account_keeps_it_logged_out(s3_store: S3Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            await h.connect("u1", "5511977770001")
            await command(h, "u1", Logout(issuedAt=utcnow()))
            await h.until_state("u1", "logged_out")
            await command(h, "u1", Disconnect(issuedAt=utcnow()))
            await asyncio.sleep(0.5)
            status = await h.status("u1")
            assert status is not None and status.state == "logged_out" and not status.paired

    asyncio.run(scenario())


def test_a_disconnect_on_a_host_new_to_the_account_keeps_what_is_known_of_it(s3_store: S3Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            await h.connect("u1", "5511977770001")
            await command(h, "u1", Disconnect(issuedAt=utcnow()))
            await h.until_state("u1", "disconnected")
        before = await h.status("u1")
        assert before is not None and before.paired and before.jid
        async with HostHarness(s3_store, tmp_path) as fresh:  # knows u1 only from the store
            await command(fresh, "u1", Disconnect(issuedAt=utcnow()))
            await asyncio.sleep(0.5)
            after = await fresh.status("u1")
            assert after is not None and after.state == "disconnected"
            assert (after.paired, after.jid, after.pairedAt) == (True, before.jid, before.pairedAt)

    asyncio.run(scenario())

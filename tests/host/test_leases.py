"""Case 6: two session hosts share the bucket; each account is served by one of them at a time."""

from __future__ import annotations

import asyncio
from pathlib import Path

from api.service import send_command
from infra import layout
from infra.documents import Connect, utcnow
from infra.store.s3 import S3Store
from tests.host.harness import HostHarness, until


def two_hosts(store: S3Store, tmp: Path) -> tuple[HostHarness, HostHarness]:
    return (
        HostHarness(store, tmp, id="host-a", work_dir=str(tmp / "work-a")),
        HostHarness(store, tmp, id="host-b", work_dir=str(tmp / "work-b")),
    )


async def die(h: HostHarness) -> None:
    """The host process dies: no goodbye beat, and its connections go with it."""
    h.task.cancel()
    await asyncio.gather(h.task, return_exceptions=True)
    for session in h.host.sessions.values():
        await session.release()


def test_only_one_host_opens_an_account_and_the_other_takes_over_when_it_dies(
    s3_store: S3Store, tmp_path: Path
) -> None:
    async def scenario() -> None:
        hosts = two_hosts(s3_store, tmp_path)
        for h in hosts:
            await h.__aenter__()
        survivor: HostHarness | None = None
        try:
            a, _ = hosts
            await a.connect("u1", "5511977770001")
            holder = (await a.status("u1")).host  # type: ignore[union-attr]
            owner, other = hosts if holder == "host-a" else hosts[::-1]
            await asyncio.sleep(1.5)  # several polls and lease checks of both hosts
            assert "u1" not in other.host.sessions or not other.host.sessions["u1"].active
            assert (await a.status("u1")).state == "connected"  # type: ignore[union-attr]  # no ping-pong
            connection = owner.host.sessions["u1"].client.connection  # type: ignore[union-attr]
            assert owner.world._read("holders/u1.json") == {"connection": connection}

            job_id = await a.submit("u1", [(f"C{i}", f"55119000007{i:02d}") for i in range(6)])
            await until(lambda: _delivered_at_least(a, 2), 10, "two messages")
            await die(owner)
            survivor = other
            status = await until(lambda: _served_by(other), 15, "the other host to take u1 over")
            assert status.paired and status.state == "connected"
            state = await other.final(job_id, timeout=20)
            texts = [m.text for m in other.world.delivered("u1")]
            assert sorted(texts) == sorted(f"Olá C{i}, tudo bem?" for i in range(6))  # each once
            assert state.totals.sent == 6
        finally:
            for h in [survivor] if survivor else hosts:
                await h.__aexit__(None, None, None)

    asyncio.run(scenario())


def test_a_command_waits_for_the_host_that_serves_the_account(s3_store: S3Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = two_hosts(s3_store, tmp_path)
        async with a:
            await a.connect("u1", "5511977770001")
        # host-a stopped cleanly: its accounts are free at once for host-b.
        async with b:
            await b.until_state("u1", "connected", timeout=10)
            send_command(s3_store, "u2", Connect(issuedAt=utcnow()))
            await b.until_state("u2", "qr")
            assert s3_store.exists(layout.lease("u2", 1))

    asyncio.run(scenario())


async def _delivered_at_least(h: HostHarness, count: int) -> bool:
    return len(h.world.delivered("u1")) >= count


async def _served_by(h: HostHarness) -> object:
    status = await h.status("u1")
    return status if status and status.host == h.host.settings.host.id and status.state == "connected" else None

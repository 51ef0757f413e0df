"""The cases of shared/CASES.md that the session host decides, on the real S3 server."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from api.service import send_command
from infra import layout
from infra.documents import AntiBanSettings, ControlJob, utcnow
from infra.store.s3 import S3Store
from tests.host.harness import HostHarness, until


def test_case1_each_message_goes_to_the_jid_the_lookup_returned(s3_store: S3Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            h.world.set_numbers(
                {
                    "5511900000001": "551100000001@s.whatsapp.net",  # old account without the 9
                    "551100000002": "5511900000002@s.whatsapp.net",  # only with the 9
                    "5511900000003": None,  # in neither form
                }
            )
            await h.connect("user1", "5511977770000")
            job_id = await h.submit(
                "user1", [("Ana", "5511900000001"), ("Bia", "551100000002"), ("Cid", "5511900000003")]
            )
            state = await h.final(job_id)
            assert [(r.number, r.jid, r.status) for r in state.results] == [
                ("5511900000001", "551100000001@s.whatsapp.net", "sent"),
                ("551100000002", "5511900000002@s.whatsapp.net", "sent"),
                ("5511900000003", None, "not_on_whatsapp"),
            ]
            assert [(m.to, m.text) for m in h.world.delivered("user1")] == [
                ("551100000001@s.whatsapp.net", "Olá Ana, tudo bem?"),
                ("5511900000002@s.whatsapp.net", "Olá Bia, tudo bem?"),
            ]

    asyncio.run(scenario())


def test_case3_not_on_whatsapp_gets_nothing_and_costs_no_pause(s3_store: S3Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            h.world.set_numbers({"5511900000099": None})
            await h.connect("user1", "5511977770000")
            slow = AntiBanSettings(randomDelayMin=1500, randomDelayMax=1500, batchSize=1, batchDelayMs=1500)
            job_id = await h.submit("user1", [("Zé", "5511900000099"), ("Ana", "5511900000001")], antiBanSettings=slow)
            state = await h.final(job_id)
            assert (state.status, state.totals.sent, state.totals.not_on_whatsapp) == ("done", 1, 1)
            assert state.results[0].error == "this number has no WhatsApp account"
            assert [m.to for m in h.world.delivered("user1")] == ["5511900000001@s.whatsapp.net"]
            # Ana went out at once: the absent number cost neither the delay nor a batch pause.
            assert state.results[1].sentAt is not None and state.startedAt is not None
            assert (state.results[1].sentAt - state.startedAt).total_seconds() < 1.0

            single = await h.submit("user1", [("", "5511900000099")], message="oi", kind="single")
            state = await h.final(single)
            assert state.status == "failed" and state.totals.not_on_whatsapp == 1
            assert "not on WhatsApp" in (state.detail or "")

    asyncio.run(scenario())


def test_case4_flap_after_a_message_left_sends_no_duplicate(s3_store: S3Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            await h.connect("user1", "5511977770000")
            job_id = await h.submit("user1", [("A", "5511900000001"), ("B", "5511900000002"), ("C", "5511900000003")])
            await until(lambda: _async(len(h.world.delivered("user1")) == 1), 10, "the first message")
            h.world.drop_after_next_send("user1", down_for=3)
            state = await h.final(job_id)
            delivered = h.world.delivered("user1")
            assert [m.text for m in delivered] == ["Olá A, tudo bem?", "Olá B, tudo bem?", "Olá C, tudo bem?"]
            assert (state.totals.sent, state.totals.failed, state.totals.unknown) == (3, 0, 0)
            assert state.results[1].attempts == 2  # the same message id, sent again after the reconnect
            assert delivered[2].at - delivered[1].at >= 3.0  # contact 3 only after the link came back

    asyncio.run(scenario())


def test_case5_logged_out_mid_campaign(s3_store: S3Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            await h.connect("user1", "5511977770000")
            assert s3_store.exists(layout.session_auth("user1"))
            contacts = [(f"C{i}", f"55119000000{i:02d}") for i in range(1, 11)]
            job_id = await h.submit("user1", contacts)
            await until(lambda: _async(len(h.world.delivered("user1")) >= 3), 10, "three messages")
            h.world.unlink("user1")
            status = await h.until_state("user1", "logged_out")
            assert status.paired is False and "removed on the phone" in (status.detail or "")
            assert not s3_store.exists(layout.session_auth("user1"))
            await asyncio.sleep(1.0)  # no reconnect loop: it stays logged out, nothing more leaves
            assert (await h.status("user1")).state == "logged_out"  # type: ignore[union-attr]
            sent = len(h.world.delivered("user1"))
            state = await h.job(job_id)
            assert state.status == "waiting" and state.totals.sent == sent and state.totals.pending == 10 - sent
            assert all(r.status == "pending" for r in state.results[sent:])
            await asyncio.sleep(1.5)  # a waiting job is written once, not again and again
            assert (await h.job(job_id)).updatedAt == state.updatedAt
            # The next connect shows a fresh QR instead of reusing the dead pairing.
            await h.connect("user1", "5511977770000")
            state = await h.final(job_id)
            assert state.totals.sent == 10 and len(h.world.delivered("user1")) == 10

    asyncio.run(scenario())


def test_paired_again_with_another_phone_the_campaign_waits_to_be_resumed(s3_store: S3Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            await h.connect("user1", "5511977770000")
            job_id = await h.submit("user1", [(f"C{i}", f"55119000001{i:02d}") for i in range(6)])
            await until(lambda: _async(len(h.world.delivered("user1")) >= 2), 10, "two messages")
            h.world.unlink("user1")
            await h.until_state("user1", "logged_out")
            await h.connect("user1", "5511966660000")  # another phone
            state = await until(lambda: _paused(h, job_id), 10, "the job to pause")
            assert "5511966660000" in (state.detail or "") and "5511977770000" in (state.detail or "")
            sent_before = len(h.world.delivered("user1"))
            await asyncio.sleep(0.8)
            assert len(h.world.delivered("user1")) == sent_before  # nothing from the new number meanwhile
            await asyncio.to_thread(
                send_command, s3_store, "user1", ControlJob(jobId=job_id, action="resume", issuedAt=utcnow())
            )
            state = await h.final(job_id)
            senders = [m.senderJid.split("@")[0] for m in h.world.delivered("user1")]
            assert state.totals.sent == 6 and senders[sent_before:] == ["5511966660000"] * (6 - sent_before)
            assert state.senderJid == "5511966660000@s.whatsapp.net"

    asyncio.run(scenario())


async def _paused(h: HostHarness, job_id: str) -> object:
    state = await h.job(job_id)
    return state if state.status == "paused" else None


def test_case7_qr_never_scanned_expires_and_others_go_on(s3_store: S3Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            await h.connect("u2", "5511977770002")
            h.world.set_qr_timeouts([0.4, 0.3, 0.3])
            job_id = await h.submit("u2", [(f"C{i}", f"55119000000{i:02d}") for i in range(1, 6)])
            from api.service import send_command
            from infra.documents import Connect, utcnow

            send_command(s3_store, "u1", Connect(issuedAt=utcnow()))
            first = await h.until_state("u1", "qr")
            assert first.qr and first.qrExpiresAt and first.detail == "QR code 1 of 3"
            seen = {first.qr}
            expired = await until(lambda: _collect_until_expired(h, seen), 10, "u1 to expire")
            assert expired.qr is None and "open /connect again" in (expired.detail or "")
            assert len(seen) == 3  # it rotated through every code
            await asyncio.sleep(0.5)
            assert (await h.status("u1")).state == "qr_expired"  # type: ignore[union-attr]  # stopped trying
            state = await h.final(job_id)
            assert state.totals.sent == 5  # u2's job went on untouched
            send_command(s3_store, "u1", Connect(issuedAt=utcnow()))
            again = await h.until_state("u1", "qr")
            assert again.qr not in seen and again.detail == "QR code 1 of 3"

    asyncio.run(scenario())


def test_case10_two_campaigns_for_one_account_keep_its_pace(s3_store: S3Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            await h.connect("user1", "5511977770001")
            await h.connect("user2", "5511977770002")
            pace = AntiBanSettings(randomDelayMin=400, randomDelayMax=500, batchSize=10, batchDelayMs=400)
            first = await h.submit("user1", [(f"A{i}", f"55119000001{i:02d}") for i in range(4)], antiBanSettings=pace)
            await asyncio.sleep(0.1)
            second = await h.submit("user1", [(f"B{i}", f"55119000002{i:02d}") for i in range(4)], antiBanSettings=pace)
            other = await h.submit("user2", [(f"C{i}", f"55119000003{i:02d}") for i in range(4)], antiBanSettings=pace)
            for job_id in (first, second, other):
                assert (await h.final(job_id)).totals.sent == 4
            times = [m.at for m in h.world.delivered("user1")]
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert len(times) == 8 and min(gaps) >= 0.4, gaps
            others = [m.at for m in h.world.delivered("user2")]
            # user2 ran beside user1, not after it.
            assert others[-1] - others[0] < 2.5 and others[0] < times[-1]

    asyncio.run(scenario())


async def _async(value: object) -> object:
    return value


async def _collect_until_expired(h: HostHarness, seen: set[str]) -> object:
    status = await h.status("u1")
    if status is None:
        return None
    if status.qr:
        seen.add(status.qr)
    return status if status.state == "qr_expired" else None


def test_two_spellings_of_one_account_get_one_message(s3_store: S3Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            # The old and the new form of one Brazilian mobile both resolve to the same account.
            h.world.set_numbers(
                {"5511987650021": "551187650021@s.whatsapp.net", "551187650021": "551187650021@s.whatsapp.net"}
            )
            await h.connect("user1", "5511977770000")
            job_id = await h.submit("user1", [("Ana", "5511987650021"), ("Ana", "551187650021")])
            state = await h.final(job_id)
            assert [(r.status, r.jid) for r in state.results] == [
                ("sent", "551187650021@s.whatsapp.net"),
                ("duplicate", "551187650021@s.whatsapp.net"),
            ]
            assert state.results[1].error == "the same WhatsApp account as the contact at position 0"
            assert len(h.world.delivered("user1")) == 1

    asyncio.run(scenario())


def test_a_block_on_new_contacts_pauses_the_account_at_once(s3_store: S3Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            await h.connect("user1", "5511977770000")
            h.world.block_new_contacts("user1", seconds=2)
            job_id = await h.submit("user1", [("A", "5511900000001"), ("B", "5511900000002")])
            status = await h.until_state("user1", "paused")
            assert "blocking messages to new contacts" in (status.detail or "")
            await asyncio.sleep(1.0)
            assert h.world.delivered("user1") == []  # it does not hammer on
            state = await h.final(job_id)
            assert state.totals.sent == 2 and [r.attempts for r in state.results] == [1, 1]
            assert (await h.status("user1")).state == "connected"  # type: ignore[union-attr]

    asyncio.run(scenario())

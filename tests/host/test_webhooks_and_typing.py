"""The completion webhook (signed, retried, kept across a restart) and "typing…" before messages."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from infra.documents import AntiBanSettings
from infra.store.s3 import S3Store
from session_host import webhooks
from tests.host.harness import HostHarness, until


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []
    failures_left: ClassVar[int] = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.received.append({"headers": dict(self.headers), "body": body})
        status = 500 if _Receiver.failures_left > 0 else 204
        _Receiver.failures_left -= 1
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(webhooks, "RETRY_DELAYS", (0.0, 0.2, 0.2, 0.2))
    _Receiver.received.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def test_the_webhook_is_signed_and_retried_until_delivered(s3_store: S3Store, tmp_path: Path, receiver: str) -> None:
    _Receiver.failures_left = 2

    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path, webhook_secret="s3cr3t") as h:
            await h.connect("u1", "5511977770001")
            job_id = await h.submit("u1", [("Ana", "5511900000001")], webhookUrl=receiver)
            await h.final(job_id)
            state = await _until_settled(h, job_id)
            assert state.webhook.deliveredAt is not None and state.webhook.attempts == 3
            assert not s3_store.exists(f"queue/u1/{job_id}")

    asyncio.run(scenario())
    assert len(_Receiver.received) == 3
    last = _Receiver.received[-1]
    event = json.loads(last["body"])
    assert (event["event"], event["status"], event["totals"]["sent"]) == ("job.finished", "done", 1)
    timestamp = last["headers"]["X-Zapgate-Timestamp"]
    expected = hmac.new(b"s3cr3t", timestamp.encode() + b"." + last["body"], hashlib.sha256).hexdigest()
    assert last["headers"]["X-Zapgate-Signature"] == f"sha256={expected}"


def test_a_webhook_that_never_answers_well_is_given_up_and_reported(
    s3_store: S3Store, tmp_path: Path, receiver: str
) -> None:
    _Receiver.failures_left = 99

    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            await h.connect("u1", "5511977770001")
            job_id = await h.submit("u1", [("Ana", "5511900000001")], webhookUrl=receiver)
            seen = await _until_attempts(h, job_id, 2)  # the attempts show while they go on
            assert not seen.webhook.gaveUp and seen.webhook.lastError == "the webhook answered HTTP 500"
            state = await _until_settled(h, job_id)
            assert state.webhook.gaveUp and state.webhook.attempts == 4
            assert state.webhook.lastError == "the webhook answered HTTP 500"
            assert "X-Zapgate-Signature" not in _Receiver.received[0]["headers"]  # no secret configured

    asyncio.run(scenario())


def test_typing_shows_before_each_message_longer_for_longer_texts(s3_store: S3Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            await h.connect("u1", "5511977770001")
            pace = AntiBanSettings(randomDelayMin=3000, randomDelayMax=3000, batchSize=10, batchDelayMs=3000)
            short = await h.submit("u1", [("Ana", "5511900000001")], message="Oi", antiBanSettings=pace)
            await h.final(short)
            long_text = "Olá [nome], " + "temos uma novidade para você. " * 3
            long = await h.submit("u1", [("Bia", "5511900000002")], message=long_text, antiBanSettings=pace)
            await h.final(long, timeout=30)
            typing = h.world.typing("u1")
            delivered = h.world.delivered("u1")
            assert [t["to"] for t in typing] == [m.to for m in delivered]
            assert typing[0]["seconds"] == pytest.approx(0.5 + 2 / 40)
            assert typing[1]["seconds"] > typing[0]["seconds"] + 1.5
            for shown, message in zip(typing, delivered, strict=True):
                assert 0 <= message.at - (shown["at"] + shown["seconds"]) < 0.5  # the message follows the typing
            assert delivered[1].at - delivered[0].at >= 3.0  # typing came out of the pause, not on top of it

    asyncio.run(scenario())


async def _until_settled(h: HostHarness, job_id: str) -> Any:
    for _ in range(200):
        state = await h.job(job_id)
        if state.webhook is not None and state.webhook.settled:
            return state
        await asyncio.sleep(0.05)
    raise AssertionError("the webhook never settled")


def test_a_webhook_still_owed_when_the_host_stops_is_delivered_by_the_next_one(
    s3_store: S3Store, tmp_path: Path, receiver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhooks, "RETRY_DELAYS", (0.0, 30.0))
    _Receiver.failures_left = 1

    async def first_host() -> str:
        async with HostHarness(s3_store, tmp_path) as h:
            await h.connect("u1", "5511977770001")
            job_id = await h.submit("u1", [("Ana", "5511900000001")], webhookUrl=receiver)
            await h.final(job_id)
            while not _Receiver.received:
                await asyncio.sleep(0.05)
            return job_id  # the host stops while the second attempt waits

    async def second_host(job_id: str) -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            state = await _until_settled(h, job_id)
            assert state.webhook.deliveredAt is not None and state.webhook.attempts == 2  # one before the stop

    job_id = asyncio.run(first_host())
    assert s3_store.exists(f"queue/u1/{job_id}")
    monkeypatch.setattr(webhooks, "RETRY_DELAYS", (0.0, 0.0))  # the schedule goes on from the second attempt
    asyncio.run(second_host(job_id))
    assert len(_Receiver.received) == 2 and not s3_store.exists(f"queue/u1/{job_id}")


async def _until_attempts(h: HostHarness, job_id: str, attempts: int) -> Any:
    async def reached() -> Any:
        state = await h.job(job_id)
        return state if state.webhook is not None and state.webhook.attempts >= attempts else None

    return await until(reached, 10, f"{attempts} webhook attempts in the job's state")

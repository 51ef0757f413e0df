"""Case 9: the image of a campaign is fetched once, with a timeout, a size cap and a check of the
real bytes; a bad one fails the job before anyone gets anything."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from infra.store.s3 import S3Store
from tests.host.harness import HostHarness

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200
CAP = 1024 * 1024


class _Images(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[Counter[str]] = Counter()

    def do_GET(self) -> None:
        _Images.hits[self.path] += 1
        if self.path == "/page.html":
            self._answer(200, b"<html><body>not an image</body></html>", "text/html")
        elif self.path == "/missing.jpg":
            self._answer(404, b"not found", "text/plain")
        elif self.path == "/huge.png":  # says how big it is
            self._answer(200, PNG + b"\x00" * (2 * CAP), "image/png")
        elif self.path == "/huge-chunked.png":  # does not say; the cap must cut the stream
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            try:
                for _ in range(80):  # would be 80 MB
                    self.wfile.write(b"\x00" * CAP)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif self.path == "/silent.png":
            time.sleep(5)
        elif self.path == "/ok.png":
            self._answer(200, PNG, "application/octet-stream")  # a wrong type header: the bytes decide

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/page.html", "did not return an image"),
        ("/missing.jpg", "answered HTTP 404"),
        ("/huge.png", "more than the limit"),
        ("/huge-chunked.png", "larger than the limit"),
        ("/silent.png", "did not answer within 1 s"),
    ],
)
def test_a_bad_image_fails_the_job_before_anyone_gets_anything(
    s3_store: S3Store, tmp_path: Path, image_server: str, path: str, reason: str
) -> None:
    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path, image_max_bytes=CAP, image_timeout=1.0) as h:
            await h.connect("user1", "5511977770000")
            job_id = await h.submit(
                "user1", [("Ana", "5511900000001"), ("Bia", "5511900000002")], imageUrl=image_server + path
            )
            state = await h.final(job_id)
            assert state.status == "failed" and reason in (state.detail or ""), state.detail
            assert (state.totals.pending, state.totals.skipped) == (0, 2) and h.world.delivered("user1") == []
            assert all("the job failed" in (r.error or "") for r in state.results)

    asyncio.run(scenario())


def test_a_good_image_is_fetched_once_and_sent_with_each_caption(
    s3_store: S3Store, tmp_path: Path, image_server: str
) -> None:
    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            await h.connect("user1", "5511977770000")
            before = _Images.hits["/ok.png"]
            contacts = [("Ana", "5511900000001"), ("Bia", "5511900000002"), ("Cid", "5511900000003")]
            job_id = await h.submit("user1", contacts, imageUrl=image_server + "/ok.png")
            assert (await h.final(job_id)).totals.sent == 3
            delivered = h.world.delivered("user1")
            assert [m.text for m in delivered] == [f"Olá {name}, tudo bem?" for name, _ in contacts]
            assert {(m.imageSha256, m.imageMimetype) for m in delivered} == {
                (hashlib.sha256(PNG).hexdigest(), "image/png")
            }
            assert _Images.hits["/ok.png"] - before == 1

    asyncio.run(scenario())

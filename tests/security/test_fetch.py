"""Safe outbound fetches (infra/fetch.py): images and webhooks cannot reach loopback, private or
metadata addresses unless allowed, redirects are checked at each hop, and the connection goes to
the address that was checked. Every request here goes to 127.0.0.1 or nowhere."""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from infra import fetch
from infra.documents import WebhookStatus
from infra.fetch import FetchRefused, blocked_reason, open_url, parse_allowlist
from infra.settings import SettingsError, load_settings
from infra.store.s3 import S3Store
from session_host import webhooks
from session_host.media import MediaError, fetch_image
from tests.host.harness import HostHarness

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
LOOPBACK = parse_allowlist("127.0.0.1/32")
NOTHING = parse_allowlist("")


class _Server(http.server.BaseHTTPRequestHandler):
    requests: ClassVar[list[tuple[str, str, str | None]]] = []  # (method, path, Host header)

    def do_GET(self) -> None:
        self._record()
        port = self.server.server_address[1]
        if self.path == "/ok.png":
            self._answer(200, PNG)
        elif self.path == "/to-loopback":  # from an allowed name to a literal loopback address
            self._redirect(f"http://127.0.0.1:{port}/ok.png")
        elif self.path == "/to-allowed":
            self._redirect(f"http://images.example:{port}/ok.png")
        elif self.path.startswith("/loop/"):
            hops = int(self.path.rsplit("/", 1)[1])
            self._redirect(f"/loop/{hops + 1}")
        elif self.path == "/to-metadata":
            self._redirect("http://169.254.169.254/latest/meta-data/")
        else:
            self._answer(404, b"no")

    def do_POST(self) -> None:
        self._record()
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(200, b"{}")

    def _record(self) -> None:
        _Server.requests.append((self.command, self.path, self.headers.get("Host")))

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()


@pytest.fixture(autouse=True)
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[list[str]]]:
    """Names the tests use resolve here, never through real DNS; each name's answers in turn."""
    answers: dict[str, list[list[str]]] = {
        "images.example": [["127.0.0.1"]],
        "metadata.example": [["169.254.169.254"]],
        "mixed.example": [["127.0.0.1", "10.1.2.3"]],
    }
    calls: dict[str, int] = {}

    async def lookup(host: str, port: int) -> list[str]:
        if host not in answers:
            raise OSError(f"no such test host {host}")
        n = calls[host] = calls.get(host, 0) + 1
        return answers[host][min(n, len(answers[host])) - 1]

    monkeypatch.setattr(fetch, "lookup", lookup)
    answers["_calls"] = calls  # type: ignore[assignment]
    _Server.requests.clear()
    return answers


async def get(url: str, allow: fetch.Allowlist) -> tuple[int, bytes]:
    async with open_url("GET", url, timeout=5, allow=allow) as response:
        return response.status_code, await response.aread()


def test_loopback_is_refused_by_default_and_allowed_by_the_allowlist(server: int) -> None:
    url = f"http://127.0.0.1:{server}/ok.png"
    with pytest.raises(FetchRefused, match=re.escape("it leads to a loopback address")):
        asyncio.run(get(url, NOTHING))
    assert _Server.requests == []  # refused before any connection
    assert asyncio.run(get(url, LOOPBACK)) == (200, PNG)


def test_a_host_name_on_the_allowlist_is_fetched_at_the_address_that_was_checked(
    server: int, fake_dns: dict[str, Any]
) -> None:
    # images.example resolves once, to 127.0.0.1: allowed by name, though loopback
    fake_dns["images.example"] = [["127.0.0.1"], ["10.9.9.9"]]  # a second answer would lead elsewhere
    status, body = asyncio.run(get(f"http://images.example:{server}/ok.png", parse_allowlist("images.example")))
    assert (status, body) == (200, PNG)
    assert fake_dns["_calls"]["images.example"] == 1  # resolved once; the connection went to that address
    assert _Server.requests == [("GET", "/ok.png", f"images.example:{server}")]  # the name in the Host header


def test_a_name_that_resolves_to_a_refused_address_is_refused(server: int) -> None:
    with pytest.raises(FetchRefused, match="loopback"):
        asyncio.run(get(f"http://images.example:{server}/ok.png", NOTHING))
    with pytest.raises(FetchRefused, match=re.escape("it leads to a private address")):  # every address must pass
        asyncio.run(get(f"http://mixed.example:{server}/ok.png", LOOPBACK))
    assert _Server.requests == []


def test_a_redirect_from_an_allowed_host_to_loopback_is_refused(server: int) -> None:
    with pytest.raises(FetchRefused, match=re.escape("it leads to a loopback address")):
        asyncio.run(get(f"http://images.example:{server}/to-loopback", parse_allowlist("images.example")))
    assert [path for _, path, _ in _Server.requests] == ["/to-loopback"]  # the second hop never left


def test_a_redirect_to_a_metadata_address_is_refused(server: int) -> None:
    with pytest.raises(FetchRefused, match=re.escape("it leads to a cloud metadata address")):
        asyncio.run(get(f"http://127.0.0.1:{server}/to-metadata", LOOPBACK))


def test_redirects_are_followed_to_allowed_hosts_at_most_five_times(server: int) -> None:
    allow = parse_allowlist("127.0.0.1, images.example")
    assert asyncio.run(get(f"http://127.0.0.1:{server}/to-allowed", allow)) == (200, PNG)
    with pytest.raises(FetchRefused, match="redirects more than 5 times"):
        asyncio.run(get(f"http://127.0.0.1:{server}/loop/0", allow))
    assert len([p for _, p, _ in _Server.requests if p.startswith("/loop/")]) == 6


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://168.63.129.16/machine",  # Azure's wire server: a public address, refused by name
        "http://100.100.100.200/latest/meta-data/",
        "http://192.0.0.192/opc/v1/",
        "http://[::ffff:169.254.169.254]/",  # the same, IPv4-mapped
        "http://metadata.example/computeMetadata/v1/",  # a name that resolves there
    ],
)
def test_metadata_addresses_are_refused_even_with_loopback_allowed(url: str) -> None:
    started = time.monotonic()
    with pytest.raises(FetchRefused, match="metadata address"):
        asyncio.run(get(url, LOOPBACK))
    assert time.monotonic() - started < 1  # no connection was tried


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("file:///etc/passwd", "only http:// and https://"),
        ("ftp://127.0.0.1/x", "only http:// and https://"),
        ("gopher://127.0.0.1:70/", "only http:// and https://"),
        ("http://0.0.0.0:1/", "unspecified"),
        ("http://10.0.0.1/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://172.16.0.1/", "private"),
        ("http://100.64.0.1/", "CGNAT"),
        ("http://169.254.1.1/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fc00::1]/", "private"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[::1]/", "loopback"),
        ("http://[64:ff9b::7f00:1]/", "loopback"),  # NAT64 of 127.0.0.1
        ("http://[2002:7f00:1::]/", "loopback"),  # 6to4 of 127.0.0.1
        ("http://2130706433/", "loopback"),  # 127.0.0.1 written as a number
        ("http://0x7f.1/", "loopback"),
    ],
)
def test_schemes_and_address_classes_are_refused(url: str, words: str) -> None:
    with pytest.raises(FetchRefused, match=words):
        asyncio.run(get(url, NOTHING))


def test_public_addresses_pass_the_check() -> None:
    for address in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "151.101.1.1"):
        assert blocked_reason(ipaddress.ip_address(address)) is None


def test_the_allowlist_is_read_from_the_settings_and_a_bad_entry_stops_the_start() -> None:
    assert load_settings({"ZAPGATE_FETCH_ALLOW": "10.0.0.0/8, 127.0.0.1, images.internal"}).fetch.allow
    for bad in ("10.0.0.0/33", "not a host", "http://x/"):
        with pytest.raises(SettingsError, match="ZAPGATE_FETCH_ALLOW"):
            load_settings({"ZAPGATE_FETCH_ALLOW": bad})


def test_the_process_allowlist_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, server: int) -> None:
    monkeypatch.setenv("ZAPGATE_FETCH_ALLOW", "127.0.0.1")
    fetch.configure(None)
    try:
        assert fetch.current_allowlist().allows_address(ipaddress.ip_address("127.0.0.1"))
        data, mimetype = asyncio.run(fetch_image(f"http://127.0.0.1:{server}/ok.png", max_bytes=1024, timeout=5))
        assert (data, mimetype) == (PNG, "image/png")
    finally:
        monkeypatch.delenv("ZAPGATE_FETCH_ALLOW")
        fetch.configure(None)


def test_an_image_on_loopback_fails_with_a_clear_reason(server: int) -> None:
    with pytest.raises(MediaError, match=re.escape("the image URL is refused: it leads to a loopback address")):
        asyncio.run(fetch_image(f"http://127.0.0.1:{server}/ok.png", max_bytes=1024, timeout=5, allow=NOTHING))


def test_a_refused_webhook_is_given_up_at_once(server: int) -> None:
    status = WebhookStatus(url=f"http://127.0.0.1:{server}/hook")
    started = time.monotonic()
    outcome = asyncio.run(webhooks.deliver(status.url, b"{}", None, status, allow=NOTHING))
    assert outcome.gaveUp and outcome.attempts == 1 and outcome.deliveredAt is None
    assert "refused" in (outcome.lastError or "") and "loopback" in (outcome.lastError or "")
    assert time.monotonic() - started < 2 and _Server.requests == []
    delivered = asyncio.run(webhooks.deliver(status.url, b"{}", None, WebhookStatus(url=status.url), allow=LOOPBACK))
    assert delivered.deliveredAt is not None and _Server.requests == [("POST", "/hook", f"127.0.0.1:{server}")]


def test_a_job_whose_image_is_on_loopback_fails_in_the_host(s3_store: S3Store, tmp_path: Path, server: int) -> None:
    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path, fetch_allow="") as h:
            await h.connect("user1", phone="5511988880001")
            job_id = await h.submit("user1", [("Ana", "5511900000001")], imageUrl=f"http://127.0.0.1:{server}/ok.png")
            state = await h.final(job_id)
            assert state.status == "failed"
            assert "refused" in (state.detail or "") and "loopback" in (state.detail or ""), state.detail
            assert h.world.delivered("user1") == []

    asyncio.run(scenario())
    assert _Server.requests == []


@pytest.mark.parametrize("answer", ["169.254.169.254", "::ffff:a9fe:a9fe", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1"])
def test_a_name_on_the_allowlist_still_cannot_lead_to_a_metadata_address(
    fake_dns: dict[str, list[list[str]]], answer: str
) -> None:
    fake_dns["metadata.example"] = [[answer]]  # also written as IPv4-mapped, NAT64 or 6to4
    with pytest.raises(FetchRefused, match="metadata address"):
        asyncio.run(get("http://metadata.example/", parse_allowlist("metadata.example")))
    allowed = parse_allowlist("169.254.169.254/32")  # only a CIDR that names it allows it
    assert not allowed.allows_host("metadata.example") and allowed.allows_address(
        ipaddress.ip_address("169.254.169.254")
    )

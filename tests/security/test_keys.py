"""Keys: the admin key from the settings, user keys made, listed and revoked through /keys and kept
hashed in the store; page links; the rate limit; and the refusal to start open off loopback."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.auth import COOKIE, LinkSigner, RateLimiter, check_startup
from api.service import read_status
from infra import layout
from infra.settings import ApiSettings, Secret, SettingsError
from infra.store.s3 import S3Store
from tests.conftest import ROOT, free_port, wait_for
from tests.security.keyed import ADMIN_KEY, ALICE, BRUNO, QR, Keyed, app_routes, keyed_api
from tests.security.test_isolation import ROUTES, call


@pytest.fixture(scope="module")
def api(s3_client: Any, bucket: str) -> Iterator[Keyed]:
    with keyed_api(S3Store(s3_client, bucket, prefix="keys")) as keyed:
        yield keyed


def problem(answer: Any, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    return answer.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("route", sorted(ROUTES), ids=[f"{m} {p}" for m, p in sorted(ROUTES)])
def test_every_route_but_the_health_check_needs_a_key(api: Keyed, route: tuple[str, str]) -> None:
    api.client.cookies.clear()
    answer = call(api, ROUTES[route], ALICE, {})
    if route == ("GET", "/healthz"):
        assert answer.status_code == 200 and answer.json()["hosts"] == []
        return
    body = problem(answer, 401)
    assert "API key is required" in body["detail"]
    assert answer.headers["www-authenticate"].startswith("Bearer")


def test_the_table_covers_the_app(api: Keyed) -> None:
    assert app_routes(api.app) == set(ROUTES)


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Api-Key": "zg_0123456789abcdef_" + "A" * 43},  # an id that does not exist
        {"X-Api-Key": "not-a-key"},
        {"X-Api-Key": ""},
        {"Authorization": "Bearer " + ADMIN_KEY[:-1]},
        {"Authorization": "Basic " + ADMIN_KEY},
        {"Authorization": ADMIN_KEY},
    ],
    ids=["unknown id", "malformed", "empty", "admin key cut short", "basic scheme", "no scheme"],
)
def test_a_bad_key_is_a_401_that_does_not_echo_it(api: Keyed, headers: dict[str, str]) -> None:
    answer = api.client.get(f"/sessions/{ALICE}", headers=headers)
    problem(answer, 401)
    presented = next(iter(headers.values())).split(" ")[-1]
    assert not presented or presented not in answer.text


def test_a_wrong_secret_for_a_real_key_id_gets_the_same_401(api: Keyed) -> None:
    key_id = api.key_ids[ALICE]
    forged = problem(api.client.get("/sessions", headers={"X-Api-Key": f"zg_{key_id}_{'B' * 43}"}), 401)
    unknown = problem(api.client.get("/sessions", headers={"X-Api-Key": f"zg_{'f' * 16}_{'B' * 43}"}), 401)
    assert forged == unknown


def test_the_admin_key_works_as_a_header_or_a_bearer_token(api: Keyed) -> None:
    for headers in ({"X-Api-Key": ADMIN_KEY}, {"Authorization": f"Bearer {ADMIN_KEY}"}):
        assert api.client.get("/sessions", headers=headers).status_code == 200


def test_a_key_is_shown_once_stored_hashed_listed_without_secret_and_revoked_at_once(api: Keyed) -> None:
    made = api.client.post("/keys", json={"userId": "dora", "label": "crm"}, headers=api.as_admin())
    assert made.status_code == 201
    key, key_id = made.json()["key"], made.json()["keyId"]
    assert re.fullmatch(r"zg_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", key) and key_id in key
    secret = key.split("_", 2)[2]
    stored = api.store.get(layout.api_key(key_id)).data
    assert secret.encode() not in stored and b'"hash":"sha256:' in stored and b'"userId":"dora"' in stored

    as_dora = {"X-Api-Key": key}
    assert api.client.get("/sessions/dora", headers=as_dora).status_code == 200
    listed = api.client.get("/keys", params={"userId": "dora"}, headers=api.as_admin()).json()
    assert [(k["keyId"], k["label"], k["revokedAt"]) for k in listed] == [(key_id, "crm", None)]
    assert secret not in str(listed) and "hash" not in listed[0]
    assert {k["userId"] for k in api.client.get("/keys", headers=api.as_admin()).json()} >= {ALICE, BRUNO, "dora"}

    revoked = api.client.delete(f"/keys/{key_id}", headers=api.as_admin())
    assert revoked.status_code == 200 and revoked.json()["revokedAt"]
    problem(api.client.get("/sessions/dora", headers=as_dora), 401)  # at once
    again = api.client.delete(f"/keys/{key_id}", headers=api.as_admin())
    assert again.json()["revokedAt"] == revoked.json()["revokedAt"]
    problem(api.client.delete("/keys/0000000000000000", headers=api.as_admin()), 404)
    assert problem(api.client.delete("/keys/nope", headers=api.as_admin()), 400)["errors"][0]["field"] == "keyId"


def test_making_a_key_checks_its_body(api: Keyed) -> None:
    for body, field in [({}, "userId"), ({"userId": "a/b"}, "userId"), ({"userId": "x", "label": "l" * 101}, "label")]:
        assert problem(api.client.post("/keys", json=body, headers=api.as_admin()), 400)["errors"][0]["field"] == field


def test_a_page_link_opens_the_pages_and_leaves_a_cookie_for_their_polling(api: Keyed) -> None:
    api.client.cookies.clear()
    link = api.client.post(f"/sessions/{ALICE}/link", headers=api.as_user(ALICE))
    assert link.status_code == 201
    url = link.json()["url"]
    assert url.startswith(f"/connect?userId={ALICE}&token=") and ADMIN_KEY not in url
    assert api.keys[ALICE] not in url

    page = api.client.get(url)
    assert page.status_code == 200 and 'id="qr"' in page.text
    cookie = page.headers["set-cookie"]
    assert (
        cookie.startswith(f"{COOKIE}=")
        and "HttpOnly" in cookie
        and "SameSite=strict" in cookie.replace("Strict", "strict")
    )
    assert page.headers["referrer-policy"] == "no-referrer"
    # The page's own requests carry the cookie, not the key: status, QR image, phone code.
    status = api.client.get(f"/sessions/{ALICE}")
    assert status.status_code == 200 and status.json()["qr"] == QR[ALICE]
    assert api.client.get(f"/sessions/{ALICE}/qr.svg").status_code == 200
    assert api.client.post(f"/sessions/{ALICE}/pair-phone", json={"phone": "5511900000009"}).status_code == 202
    assert api.client.get(f"/?userId={ALICE}").status_code == 200
    # ... and nothing else.
    assert api.client.get(f"/sessions/{BRUNO}").status_code == 404
    problem(api.client.get(f"/jobs?userId={ALICE}"), 401)
    problem(api.client.post("/send", json={"userId": ALICE, "number": "5511900000001", "message": "x"}), 401)
    api.client.cookies.clear()
    problem(api.client.get(f"/sessions/{ALICE}"), 401)
    # A token changed by hand is refused.
    token = url.split("token=")[1]
    expiry, _, issuer, signature = token.split(".")
    assert issuer == api.key_ids[ALICE]  # the key that asked for it
    forged = f"{expiry}.YnJ1bm8.{issuer}.{signature}"  # "bruno", the same signature
    problem(api.client.get(f"/connect?userId={BRUNO}&token={forged}"), 401)
    problem(api.client.get(f"/connect?userId={ALICE}&token={int(expiry) + 1}.{token[11:]}"), 401)
    problem(api.client.get(f"/connect?userId={ALICE}&token={token.replace(issuer, 'admin')}"), 401)


def test_revoking_a_key_ends_the_page_links_and_cookies_it_made(s3_client: Any, bucket: str) -> None:
    with keyed_api(S3Store(s3_client, bucket, prefix="revoke-links")) as api:
        url = api.client.post(f"/sessions/{ALICE}/link", headers=api.as_user(ALICE)).json()["url"]
        admin_url = api.client.post(f"/sessions/{ALICE}/link", headers=api.as_admin()).json()["url"]
        api.client.cookies.clear()
        assert api.client.get(url).status_code == 200  # leaves the cookie
        assert api.client.get(f"/sessions/{ALICE}").status_code == 200
        revoked = api.client.delete(f"/keys/{api.key_ids[ALICE]}", headers=api.as_admin())
        assert revoked.status_code == 200
        problem(api.client.get(f"/sessions/{ALICE}"), 401)  # the cookie no longer opens anything
        api.client.cookies.clear()
        assert "revoked" in problem(api.client.get(url), 401)["detail"]
        assert api.client.get(admin_url).status_code == 200  # the admin's link is not the key's


def test_link_tokens_expire_and_are_bound_to_their_purpose() -> None:
    now = [1_000_000.0]
    signer = LinkSigner(b"k" * 32, ttl=600, clock=lambda: now[0])
    token, expires = signer.issue("alice", "link", "admin")
    assert signer.verify(token, "link") == ("alice", "admin") and expires.timestamp() == 1_000_600
    with pytest.raises(ValueError):
        signer.issue("alice", "link", "not.a.key")
    assert signer.verify(token, "cookie") is None  # a link is not a cookie, nor the other way round
    assert LinkSigner(b"x" * 32, ttl=600, clock=lambda: now[0]).verify(token, "link") is None  # another secret
    now[0] += 601
    assert signer.verify(token, "link") is None
    assert signer.verify("garbage", "link") is None and signer.verify("1.2.3.4", "link") is None
    assert signer.verify(token[:-1] + "é", "link") is None  # not ascii: refused, never a TypeError
    assert signer.verify("١٠٠٠٦٠٠" + token[token.index(".") :], "link") is None  # other scripts' digits


def test_a_token_or_cookie_that_is_not_ascii_is_a_401_not_a_500(api: Keyed) -> None:
    problem(api.client.get(f"/?userId={ALICE}&token=1.YQ.admin.%C3%A9"), 401)
    api.client.cookies.clear()
    answer = api.client.get(f"/sessions/{ALICE}", headers={"Cookie": f"{COOKIE}=1.YQ.admin.".encode() + b"\xe9"})
    problem(answer, 401)


def test_the_rate_limit_is_per_key_with_retry_after(s3_client: Any, bucket: str) -> None:
    with keyed_api(S3Store(s3_client, bucket, prefix="rate"), rate_limit=3) as api:
        as_alice = api.as_user(ALICE)
        answers = [api.client.get(f"/sessions/{ALICE}", headers=as_alice) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        body = problem(answers[-1], 429)
        assert "ZAPGATE_API_RATE_LIMIT" in body["detail"] and int(answers[-1].headers["retry-after"]) >= 1
        assert api.client.get(f"/sessions/{BRUNO}", headers=api.as_user(BRUNO)).status_code == 200  # another key
        assert api.client.get("/healthz").status_code == 200  # not counted


def test_the_token_bucket_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0])  # one a second, 60 at once
    assert all(limiter.take("k") == 0 for _ in range(60))
    assert limiter.take("k") == pytest.approx(1.0)
    assert limiter.take("other") == 0
    now[0] += 1.0
    assert limiter.take("k") == 0 and limiter.take("k") > 0
    assert RateLimiter(0).take("k") == 0  # no limit


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"])
def test_open_on_loopback_starts_and_says_so(host: str) -> None:
    assert "API OPEN" in check_startup(ApiSettings(host=host))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "api.example.com"])
def test_open_off_loopback_refuses_to_start(host: str) -> None:
    with pytest.raises(SettingsError, match="ZAPGATE_API_ADMIN_KEY: required"):
        check_startup(ApiSettings(host=host))
    assert "API keys required" in check_startup(ApiSettings(host=host, admin_key=Secret("k" * 32)))
    assert "API OPEN" in check_startup(ApiSettings(host=host, insecure_open=True))


def test_a_short_admin_key_is_refused() -> None:
    with pytest.raises(SettingsError, match="ZAPGATE_API_ADMIN_KEY: must be at least 16"):
        check_startup(ApiSettings(admin_key=Secret("short")))


def test_the_api_process_refuses_to_start_open_on_all_addresses() -> None:
    env = {**os.environ, "ZAPGATE_API_HOST": "0.0.0.0", "ZAPGATE_STORE": "/nonexistent/never-used"}
    env.pop("ZAPGATE_API_ADMIN_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", "api"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2
    assert "cannot start: ZAPGATE_API_ADMIN_KEY: required" in done.stderr and "'0.0.0.0'" in done.stderr


def test_the_api_process_listens_on_localhost_when_told_so(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "ZAPGATE_API_HOST": "localhost", "ZAPGATE_API_PORT": str(port), "ZAPGATE_STORE": str(tmp_path)}
    env.pop("ZAPGATE_API_ADMIN_KEY", None)
    api = subprocess.Popen([sys.executable, "-m", "api"], env=env, cwd=ROOT, stderr=subprocess.PIPE)
    try:
        answer = wait_for(lambda: _healthz(port), what="the API on localhost to answer")
        assert answer.status_code == 200
    finally:
        api.terminate()
        api.wait(timeout=30)


def _healthz(port: int) -> httpx.Response | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    except httpx.TransportError:
        return None


def test_the_open_api_says_so_in_its_log(s3_store: S3Store, caplog: pytest.LogCaptureFixture) -> None:
    from api.app import create_app
    from infra.settings import Settings

    with caplog.at_level(logging.INFO, logger="api.app"):
        create_app(Settings(), s3_store)
    assert any(r.levelno == logging.WARNING and "API OPEN" in r.getMessage() for r in caplog.records)


def test_a_refused_request_writes_no_command(api: Keyed) -> None:
    before = sorted(api.store.list(layout.COMMANDS))
    api.client.cookies.clear()
    assert api.client.get(f"/connect?userId={BRUNO}", headers=api.as_user(ALICE)).status_code == 404
    assert api.client.get(f"/connect?userId={BRUNO}").status_code == 401
    assert sorted(api.store.list(layout.COMMANDS)) == before
    assert read_status(api.store, BRUNO) is not None

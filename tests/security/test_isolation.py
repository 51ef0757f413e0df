"""A user's key opens that user's sessions, jobs and pages only: for another account, it gets the
same answer whether that account exists (bruno) or not (carla), and changes nothing. Every route of
the app is in ROUTES, so that a new route without a case fails ``test_every_route_has_a_case``."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from infra.store.s3 import S3Store
from tests.security.keyed import ALICE, BRUNO, CARLA, QR, Keyed, app_routes, keyed_api

NO_JOB = "20200101T000000000000-00000000"
NO_KEY = "0123456789abcdef"


class Case:
    """How to call one route for an account (its job, its key): (method, url, json body or None)."""

    def __init__(self, build: Callable[[str, str, str], tuple[str, str, Any]], own: int, other: int = 404) -> None:
        self.build, self.own, self.other = build, own, other


BULK = {"contatos": [{"numero": "5511900000001", "nome": "Ana"}], "mensagemBase": "Oi [nome]"}
ROUTES: dict[tuple[str, str], Case] = {
    ("GET", "/sessions"): Case(lambda u, j, k: ("GET", "/sessions", None), 200, other=200),
    ("GET", "/sessions/{user_id}"): Case(lambda u, j, k: ("GET", f"/sessions/{u}", None), 200),
    ("GET", "/sessions/{user_id}/qr.svg"): Case(lambda u, j, k: ("GET", f"/sessions/{u}/qr.svg", None), 200),
    ("GET", "/sessions/{user_id}/qr.png"): Case(lambda u, j, k: ("GET", f"/sessions/{u}/qr.png", None), 200),
    ("POST", "/sessions/{user_id}/pair-phone"): Case(
        lambda u, j, k: ("POST", f"/sessions/{u}/pair-phone", {"phone": "5511900000009"}), 202
    ),
    ("GET", "/sessions/{user_id}/settings"): Case(lambda u, j, k: ("GET", f"/sessions/{u}/settings", None), 200),
    ("PUT", "/sessions/{user_id}/settings"): Case(
        lambda u, j, k: ("PUT", f"/sessions/{u}/settings", {"dailyCap": 7}), 200
    ),
    ("POST", "/sessions/{user_id}/link"): Case(lambda u, j, k: ("POST", f"/sessions/{u}/link", None), 201),
    ("POST", "/disconnect"): Case(lambda u, j, k: ("POST", "/disconnect", {"userId": u}), 200),
    ("POST", "/logout"): Case(lambda u, j, k: ("POST", "/logout", {"userId": u}), 200),
    ("POST", "/send"): Case(
        lambda u, j, k: ("POST", "/send", {"userId": u, "number": "5511900000001", "message": "oi"}), 409
    ),
    ("POST", "/send-bulk"): Case(lambda u, j, k: ("POST", "/send-bulk", {"userId": u, **BULK}), 409),
    ("POST", "/send-bulk/preview"): Case(lambda u, j, k: ("POST", "/send-bulk/preview", {"userId": u, **BULK}), 200),
    ("GET", "/"): Case(lambda u, j, k: ("GET", f"/?userId={u}", None), 200),
    ("GET", "/connect"): Case(lambda u, j, k: ("GET", f"/connect?userId={u}", None), 200),
    ("GET", "/jobs"): Case(lambda u, j, k: ("GET", f"/jobs?userId={u}", None), 200),
    ("GET", "/jobs/{job_id}"): Case(lambda u, j, k: ("GET", f"/jobs/{j}", None), 200),
    ("GET", "/jobs/{job_id}/report.csv"): Case(lambda u, j, k: ("GET", f"/jobs/{j}/report.csv", None), 200),
    ("POST", "/jobs/{job_id}/{action}"): Case(lambda u, j, k: ("POST", f"/jobs/{j}/pause", None), 202),
    # Admin only: a user's key gets 403, whoever the key or account named.
    ("POST", "/keys"): Case(lambda u, j, k: ("POST", "/keys", {"userId": u}), 403, other=403),
    ("GET", "/keys"): Case(lambda u, j, k: ("GET", f"/keys?userId={u}", None), 403, other=403),
    ("DELETE", "/keys/{key_id}"): Case(lambda u, j, k: ("DELETE", f"/keys/{k}", None), 403, other=403),
    # Public: no key needed, and no host details without the admin key.
    ("GET", "/healthz"): Case(lambda u, j, k: ("GET", "/healthz", None), 200, other=200),
}


@pytest.fixture(scope="module")
def api(s3_client: Any, bucket: str) -> Iterator[Keyed]:
    with keyed_api(S3Store(s3_client, bucket, prefix="isolation")) as keyed:
        yield keyed


def call(api: Keyed, case: Case, user_id: str, headers: dict[str, str]) -> Any:
    job = api.jobs.get(user_id, NO_JOB)
    method, url, body = case.build(user_id, job, api.key_ids.get(user_id, NO_KEY))
    return api.client.request(method, url, json=body, headers=headers)


def test_every_route_has_a_case(api: Keyed) -> None:
    served = app_routes(api.app)
    assert served - ROUTES.keys() == set(), "a route without an isolation case: add it to ROUTES"
    assert ROUTES.keys() - served == set(), "a case for a route that no longer exists"


@pytest.mark.parametrize("route", sorted(ROUTES), ids=[f"{m} {p}" for m, p in sorted(ROUTES)])
def test_a_users_key_cannot_reach_another_account(api: Keyed, route: tuple[str, str]) -> None:
    case = ROUTES[route]
    as_alice = api.as_user(ALICE)
    before = sorted(api.store.list(""))
    existing, missing = call(api, case, BRUNO, as_alice), call(api, case, CARLA, as_alice)
    assert existing.status_code == case.other, existing.text
    # The same answer whether the account exists or not: no way to learn that bruno exists.
    assert missing.status_code == existing.status_code
    assert _neutral(missing.text, CARLA, NO_JOB, NO_KEY) == _neutral(
        existing.text, BRUNO, api.jobs[BRUNO], api.key_ids[BRUNO]
    )
    assert sorted(api.store.list("")) == before, "a refused request wrote to the store"
    for answer in (existing, missing):
        assert QR[BRUNO] not in answer.text and "Ana" not in answer.text  # nothing of bruno's leaks
        if answer.status_code >= 400:
            assert answer.headers["content-type"].startswith("application/problem+json")
    # Alice's own account answers as usual with her key.
    own = call(api, case, ALICE, as_alice)
    assert own.status_code == case.own, own.text


@pytest.mark.parametrize("route", sorted(ROUTES), ids=[f"{m} {p}" for m, p in sorted(ROUTES)])
def test_the_admin_key_reaches_every_account(api: Keyed, route: tuple[str, str]) -> None:
    case = ROUTES[route]
    answer = call(api, case, BRUNO, api.as_admin())
    assert answer.status_code not in (401, 403, 404), answer.text


def test_lists_show_only_the_keys_own_account(api: Keyed) -> None:
    listed = api.client.get("/sessions", headers=api.as_user(ALICE)).json()
    assert [s["userId"] for s in listed] == [ALICE]
    assert {s["userId"] for s in api.client.get("/sessions", headers=api.as_admin()).json()} >= {ALICE, BRUNO}
    jobs = api.client.get("/jobs", headers=api.as_user(ALICE)).json()  # userId may be left out with a user's key
    assert [j["jobId"] for j in jobs] == [api.jobs[ALICE]]
    health = api.client.get("/healthz", headers=api.as_user(ALICE)).json()
    assert health["hosts"] == [] and api.client.get("/healthz", headers=api.as_admin()).json()["hosts"]


def test_a_page_link_opens_its_own_account_only(api: Keyed) -> None:
    link = api.client.post(f"/sessions/{ALICE}/link", headers=api.as_user(ALICE)).json()
    token = re.search(r"token=([^&]+)", link["url"])[1]  # type: ignore[index]
    for method, url in [
        ("GET", f"/connect?userId={BRUNO}&token={token}"),
        ("GET", f"/?userId={CARLA}&token={token}"),
        ("GET", f"/sessions/{BRUNO}?token={token}"),
        ("GET", f"/sessions/{BRUNO}/qr.svg?token={token}"),
    ]:
        assert api.client.request(method, url).status_code == 404, url
    # Nor does it open anything but the pages and what they use: no jobs, no sends, no keys, no links.
    for method, url in [
        ("GET", f"/jobs?userId={ALICE}&token={token}"),
        ("GET", f"/jobs/{api.jobs[ALICE]}?token={token}"),
        ("POST", f"/sessions/{ALICE}/link?token={token}"),
        ("GET", f"/keys?token={token}"),
        ("GET", f"/sessions?token={token}"),
    ]:
        assert api.client.request(method, url).status_code == 401, url


def _neutral(text: str, user_id: str, job_id: str, key_id: str) -> str:
    return text.replace(job_id, "<job>").replace(key_id, "<key>").replace(user_id, "<user>")

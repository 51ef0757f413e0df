"""Bad input gets a 4xx problem document naming the field and the reason, and writes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import TestClient

from api.app import create_app
from infra import layout
from infra.documents import SessionStatus, encode
from infra.settings import S3Settings, Secret, Settings
from infra.store.s3 import S3Store, make_client
from tests.conftest import System, free_port

GOOD_BULK = {"userId": "user1", "contatos": [{"nome": "Ana", "numero": "5511900000001"}], "mensagemBase": "Oi [nome]"}

CASES: list[tuple[str, str, Any, int, str, str]] = [
    # (method, path, body, status, field, words in the reason)
    ("POST", "/send", b"{not json", 400, "body", "not valid JSON"),
    ("POST", "/send", b"[]", 400, "body", "object"),
    ("POST", "/send", b"[" * 100_000, 400, "body", "Expected `object`"),
    (
        "POST",
        "/send-bulk",
        b'{"userId": "user1", "contatos": [{"numero": "5511900000001", "x": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b'}], "mensagemBase": "x"}',
        400,
        "body",
        "nested too deeply",
    ),
    ("POST", "/send", {"userId": "user1\n", "number": "5511900000001", "message": "x"}, 400, "userId", "letters"),
    ("GET", "/sessions/user1%0A", None, 400, "userId", "letters"),
    ("GET", "/connect?userId=user1%0A", None, 400, "userId", "letters"),
    ("GET", "/jobs/x%0A", None, 400, "jobId", "not a job id"),
    ("POST", "/send-bulk", {**GOOD_BULK, "imagemUrl": "http://"}, 400, "imagemUrl", "must name a host"),
    (
        "POST",
        "/send-bulk",
        {**GOOD_BULK, "mensagemBase": "[nome] " * 3, "contatos": [{"nome": "x" * 2_000, "numero": "5511900000001"}]},
        400,
        "mensagemBase",
        "the limit is 4096",
    ),
    ("POST", "/send", {"userId": "user1", "number": "-5511900000001", "message": "x"}, 400, "number", "start with"),
    ("POST", "/send", {"number": "5511900000001", "message": "oi"}, 400, "userId", "required"),
    ("POST", "/send", {"userId": "../etc", "number": "1", "message": "x"}, 400, "userId", "letters"),
    ("POST", "/send", {"userId": "a b", "number": "5511900000001", "message": "x"}, 400, "userId", "letters"),
    ("POST", "/send", {"userId": "a/b", "number": "5511900000001", "message": "x"}, 400, "userId", "letters"),
    ("POST", "/send", {"userId": "u\u0000", "number": "5511900000001", "message": "x"}, 400, "userId", "letters"),
    ("POST", "/send", {"userId": 7, "number": "5511900000001", "message": "x"}, 400, "userId", "letters"),
    ("POST", "/send", {"userId": "user1", "message": "oi"}, 400, "number", "required"),
    ("POST", "/send", {"userId": "user1", "number": "55 11 9000O-0001", "message": "oi"}, 400, "number", "'O'"),
    ("POST", "/send", {"userId": "user1", "number": "123", "message": "oi"}, 400, "number", "not a valid"),
    ("POST", "/send", {"userId": "user1", "number": [1], "message": "oi"}, 400, "number", "Expected"),
    ("POST", "/send", {"userId": "user1", "number": "5511900000001", "message": 5}, 400, "message", "Expected `str`"),
    ("POST", "/send", {"userId": "user1", "number": "5511900000001", "message": "x" * 5000}, 400, "message", "length"),
    (
        "POST",
        "/send",
        {"userId": "user1", "number": "5511900000001", "message": "x", "extra": 1},
        400,
        "extra",
        "not a known field",
    ),
    ("POST", "/send-bulk", {**GOOD_BULK, "contatos": []}, 400, "contatos", "at least one"),
    ("POST", "/send-bulk", {**GOOD_BULK, "contatos": "Ana"}, 400, "contatos", "Expected `array`"),
    ("POST", "/send-bulk", {**GOOD_BULK, "contatos": [{"nome": "Ana"}]}, 400, "contatos[0].numero", "required"),
    (
        "POST",
        "/send-bulk",
        {
            **GOOD_BULK,
            "contatos": [{"nome": "A", "numero": "5511900000001"}, {"nome": "B", "numero": "55 11 9000O-0001"}],
        },
        400,
        "contatos[1].numero",
        "'O'",
    ),
    (
        "POST",
        "/send-bulk",
        {k: v for k, v in GOOD_BULK.items() if k != "mensagemBase"},
        400,
        "mensagemBase",
        "required",
    ),
    (
        "POST",
        "/send-bulk",
        {**GOOD_BULK, "antiBanSettings": {"randomDelayMin": 9000, "randomDelayMax": 6000}},
        400,
        "antiBanSettings",
        "randomDelayMin must not be greater",
    ),
    (
        "POST",
        "/send-bulk",
        {**GOOD_BULK, "antiBanSettings": {"batchSize": 0}},
        400,
        "antiBanSettings.batchSize",
        ">= 1",
    ),
    (
        "POST",
        "/send-bulk",
        {**GOOD_BULK, "antiBanSettings": {"randomDelayMin": -1}},
        400,
        "antiBanSettings.randomDelayMin",
        ">= 0",
    ),
    ("POST", "/send-bulk", {**GOOD_BULK, "imagemUrl": "file:///etc/passwd"}, 400, "imagemUrl", "http"),
    ("POST", "/send-bulk", GOOD_BULK, 409, "", "user1 was never paired"),
    ("POST", "/send", {"userId": "u1", "number": "5511900000001", "message": "a\u0000b"}, 400, "message", "'\\x00'"),
    (
        "POST",
        "/send-bulk",
        {**GOOD_BULK, "contatos": [{"nome": "A\u0007na", "numero": "5511900000001"}]},
        400,
        "contatos[0].nome",
        "control character '\\x07' at position 1",
    ),
    (
        "POST",
        "/send-bulk",
        {**GOOD_BULK, "contatos": [{"nome": "Ana", "cupom": "X\u001b1", "numero": "5511900000001"}]},
        400,
        "contatos[0].cupom",
        "control character",
    ),
    ("POST", "/send-bulk", {**GOOD_BULK, "mensagemBase": "Oi [ nome ]"}, 400, "mensagemBase", "write [nome]"),
    ("POST", "/send-bulk", {**GOOD_BULK, "mensagemBase": "Oi\u009b [nome]"}, 400, "mensagemBase", "'\\x9b'"),
    ("POST", "/send", {"userId": "user1", "number": "5511900000001", "message": "oi"}, 409, "", "not connected"),
    ("POST", "/disconnect", {}, 400, "userId", "required"),
    ("GET", "/?userId=a%2Fb", None, 400, "userId", "letters"),
    ("GET", "/", None, 400, "userId", "required"),
    ("GET", "/connect?userId=..", None, 400, "userId", "letters"),
    ("GET", "/connect", None, 400, "userId", "required"),
    ("GET", "/jobs/no-such-job", None, 404, "", "no job"),
    ("GET", "/jobs/bad$id", None, 400, "jobId", "not a job id"),
    ("GET", "/sessions/a%20b", None, 400, "userId", "letters"),
    ("GET", "/sessions/user1/qr.svg", None, 404, "", "no QR code"),
]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, s3_client: Any, bucket: str) -> Any:
    store = S3Store(s3_client, bucket, prefix=f"bad-input-{free_port()}")
    system = System(tmp_path_factory.mktemp("bad"), store, {}).start()
    yield system
    system.stop()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field", "words"), CASES, ids=[f"{c[0]} {c[1]} {c[4] or c[3]}" for c in CASES]
)
def test_bad_input_is_a_clear_4xx_and_writes_nothing(
    running: System, method: str, path: str, body: Any, status: int, field: str, words: str
) -> None:
    before = list(running.store.list(""))
    if isinstance(body, bytes):
        answer = running.http.request(method, path, content=body, headers={"content-type": "application/json"})
    else:
        answer = running.http.request(method, path, json=body)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["status"] == status
    if field:
        assert problem["errors"][0]["field"] == field
        assert words in problem["errors"][0]["reason"], problem
    else:
        assert words in problem["detail"], problem
    assert "Traceback" not in answer.text and "/work/" not in answer.text
    assert list(running.store.list("")) == before


def test_a_campaign_for_a_logged_out_account_is_refused_saying_so(running: System) -> None:
    status = SessionStatus(userId="gone", state="logged_out", detail="logged out from the phone", paired=False)
    running.store.put(layout.session_status("gone"), encode(status))
    before = list(running.store.list(""))
    answer = running.http.post("/send-bulk", json={**GOOD_BULK, "userId": "gone"})
    assert answer.status_code == 409
    assert answer.json()["detail"].startswith("gone is logged out (state: logged_out; logged out from the phone)")
    assert list(running.store.list("")) == before


def test_the_user_id_is_checked_before_anything_else(running: System) -> None:
    answer = running.http.post("/send", json={"number": "55 11 9000O-0001", "message": 1, "userId": "a/b"})
    assert answer.json()["errors"][0]["field"] == "userId"


def test_storage_outage_is_a_503_with_a_clear_message() -> None:
    dead = S3Settings(endpoint=f"http://127.0.0.1:{free_port()}", access_key="x", secret_key=Secret("y"), timeout=1.0)
    store = S3Store(make_client(dead), "zapgate")
    with TestClient(create_app(Settings(), store)) as client:
        for method, path, body in [
            ("GET", "/sessions", None),
            ("GET", "/?userId=u1", None),
            ("POST", "/send-bulk", GOOD_BULK),
            ("GET", "/jobs/j1", None),
        ]:
            answer = client.request(method, path, json=body)
            assert answer.status_code == 503, (path, answer.text)
            assert answer.json()["detail"] == "the object store cannot be reached; try again shortly"

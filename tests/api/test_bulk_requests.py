"""Templates and contact fields through the real API: preview, missing values, limits."""

from __future__ import annotations

from typing import Any

import pytest

from infra.documents import SessionStatus, encode
from infra.store.s3 import S3Store
from tests.conftest import System, free_port


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, s3_client: Any, bucket: str) -> Any:
    store = S3Store(s3_client, bucket, prefix=f"bulk-requests-{free_port()}")
    store.put("sessions/u1/status.json", encode(SessionStatus(userId="u1", state="connected", paired=True)))
    system = System(tmp_path_factory.mktemp("bulk"), store, {"ZAPGATE_API_MAX_CONTACTS": "1000"})
    yield system.start()
    system.stop()


def bulk(contacts: list[dict[str, Any]], message: str = "Olá [nome], tudo bem?") -> dict[str, Any]:
    return {"userId": "u1", "contatos": contacts, "mensagemBase": message}


def test_preview_renders_every_field_and_writes_nothing(running: System) -> None:
    before = list(running.store.list(""))
    answer = running.http.post(
        "/send-bulk/preview",
        params={"count": 2},
        json=bulk(
            [
                {"nome": "Ana", "numero": "+55 11 90000-0001", "empresa": "ACME", "cupom": 10},
                {"nome": "Bia", "numero": 5511900000002, "empresa": "Loja 🛒", "cupom": "B-2"},
                {"nome": "Ana de novo", "numero": "5511900000001", "empresa": "ACME", "cupom": 10},
            ],
            "Oi [nome]! [empresa] tem o cupom [cupom] para você.",
        ),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "total": 3,
        "duplicates": 1,
        "messages": [
            {"numero": "5511900000001", "nome": "Ana", "text": "Oi Ana! ACME tem o cupom 10 para você."},
            {"numero": "5511900000002", "nome": "Bia", "text": "Oi Bia! Loja 🛒 tem o cupom B-2 para você."},
        ],
    }
    assert list(running.store.list("")) == before


def test_a_placeholder_some_contacts_cannot_fill_is_refused_naming_them(running: System) -> None:
    contacts = [
        {"nome": "Ana", "numero": "5511900000001", "cupom": "X"},
        {"nome": "Bia", "numero": "5511900000002"},
        {"numero": "5511900000003", "cupom": "Y"},
    ]
    answer = running.http.post("/send-bulk", json=bulk(contacts, "Oi [nome], cupom [cupom]"))
    assert answer.status_code == 400
    error = answer.json()["errors"][0]
    assert error["field"] == "mensagemBase"
    assert error["reason"].startswith("[cupom] has no value for the contacts at positions 1;")
    answer = running.http.post("/send-bulk", json=bulk(contacts, "Oi [nome|cliente], cupom [cupom|BEMVINDO]"))
    assert answer.status_code == 202, answer.text


@pytest.mark.parametrize(
    ("contact", "field", "reason"),
    [
        ({"nome": "Ana"}, "contatos[0].numero", "is required"),
        ({"nome": "Ana", "numero": ""}, "contatos[0].numero", "is required"),
        ({"nome": "Ana", "numero": 55.5}, "contatos[0].numero", "whole number"),
        ({"nome": 7, "numero": "5511900000001"}, "contatos[0].nome", "must be text"),
        ({"nome": "Ana", "numero": "5511900000001", "extra": [1]}, "contatos[0].extra", "text or a number"),
        ({"nome": "Ana", "numero": True}, "contatos[0].numero", "whole number"),
    ],
)
def test_bad_contacts_name_the_field(running: System, contact: dict[str, Any], field: str, reason: str) -> None:
    answer = running.http.post("/send-bulk", json=bulk([contact]))
    assert answer.status_code == 400, answer.text
    assert answer.json()["errors"][0]["field"] == field and reason in answer.json()["errors"][0]["reason"]


def test_more_contacts_than_the_limit_is_a_413(running: System) -> None:
    contacts = [{"nome": "C", "numero": f"55119{i:08d}"} for i in range(1001)]
    answer = running.http.post("/send-bulk", json=bulk(contacts))
    assert answer.status_code == 413 and "limit is 1000" in answer.json()["detail"]


def test_placeholders_inside_variations_are_filled_in_what_would_be_sent(running: System) -> None:
    contacts = [{"nome": f"Pessoa {i}", "numero": f"55119000001{i:02d}"} for i in range(12)]
    answer = running.http.post(
        "/send-bulk/preview", params={"count": 12}, json=bulk(contacts, "{Oi [nome]|Olá [nome]}, tudo bem?")
    )
    assert answer.status_code == 200, answer.text
    texts = [m["text"] for m in answer.json()["messages"]]
    assert all(t in (f"Oi Pessoa {i}, tudo bem?", f"Olá Pessoa {i}, tudo bem?") for i, t in enumerate(texts))
    assert not any("[" in t for t in texts)


@pytest.mark.parametrize(
    ("message", "contacts", "words"),
    [
        ("{Oi|{Olá|E aí}} [nome]", [{"nome": "Ana", "numero": "5511900000001"}], "inside another"),
        ("Olá [nome, tudo bem?", [{"nome": "Ana", "numero": "5511900000001"}], "is not closed with ]"),
        ("{Oi|Olá [nome]", [{"nome": "Ana", "numero": "5511900000001"}], "is not closed with }"),
        ("[nome|]", [{"nome": "Ana", "numero": "5511900000001"}, {"numero": "5511900000002"}], "blank"),
        ("{ | }", [{"nome": "Ana", "numero": "5511900000001"}], "blank for the contacts at positions 0"),
        ("Oi [nome|{a|b}]", [{"numero": "5511900000001"}], "a fallback is plain text"),
        ("Oi [nome|\u200b]", [{"numero": "5511900000001"}], "is invisible"),
        ("[nome]", [{"nome": "   ", "numero": "5511900000001"}], "[nome] has no value for the contacts at positions 0"),
        ("{|}", [{"numero": "5511900000001"}], "blank"),
    ],
)
def test_templates_that_would_reach_people_as_typed_or_blank_are_refused(
    running: System, message: str, contacts: list[dict[str, Any]], words: str
) -> None:
    before = set(running.store.list("inbox/"))  # the host may still be taking earlier tests' jobs
    for path in ("/send-bulk/preview", "/send-bulk"):
        answer = running.http.post(path, json=bulk(contacts, message))
        assert answer.status_code == 400, answer.text
        problem = answer.json()
        assert problem["errors"][0]["field"] == "mensagemBase" and words in problem["detail"]
    assert set(running.store.list("inbox/")) <= before  # no job was written


def test_an_empty_image_or_webhook_url_as_older_clients_send_it_means_none(running: System) -> None:
    body = {**bulk([{"nome": "Ana", "numero": "5511900000001"}]), "imagemUrl": "", "webhookUrl": ""}
    answer = running.http.post("/send-bulk", json=body)
    assert answer.status_code == 202, answer.text
    job = running.http.get(answer.json()["statusUrl"]).json()
    assert job["jobId"] == answer.json()["jobId"] and job.get("webhook") is None
    stored = running.store.get(f"inbox/{answer.json()['jobId']}.json").data
    assert b'"imageUrl":null' in stored and b'"webhookUrl":null' in stored

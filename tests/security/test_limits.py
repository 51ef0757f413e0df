"""Every limit has a number, a 4xx that names it, and a problem document with no stack trace, no
internal path and no secret."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from infra.store.s3 import S3Store
from tests.security.keyed import ADMIN_KEY, ALICE, Keyed, keyed_api

BULK = {"userId": ALICE, "mensagemBase": "Oi [nome]"}
CONTACT = {"numero": "5511900000001", "nome": "Ana"}


@pytest.fixture(scope="module")
def api(s3_client: Any, bucket: str) -> Iterator[Keyed]:
    with keyed_api(S3Store(s3_client, bucket, prefix="limits"), max_body_bytes=64 * 1024, max_contacts=50) as keyed:
        yield keyed


def problem(answer: Any, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    for leak in ("Traceback", "/work/", ".py", ADMIN_KEY, "site-packages"):
        assert leak not in answer.text
    return answer.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("path", "body", "field", "words"),
    [
        ("/send", {"userId": ALICE, "number": "1" * 33, "message": "x"}, "number", "length <= 32"),
        (
            "/send",
            {"userId": ALICE, "number": "5511900000001", "message": "x", "webhookUrl": "https://e.com/" + "a" * 2048},
            "webhookUrl",
            "length <= 2048",
        ),
        (
            "/send-bulk/preview",
            {**BULK, "contatos": [CONTACT], "imagemUrl": "https://e.com/" + "a" * 2048},
            "imagemUrl",
            "2048",
        ),
        (
            "/send-bulk/preview",
            {**BULK, "contatos": [{**CONTACT, **{f"f{i}": "x" for i in range(63)}}]},
            "contatos[0]",
            "length <= 64",
        ),
        (
            "/send-bulk/preview",
            {**BULK, "contatos": [{**CONTACT, "nota": "x" * 4097}]},
            "contatos[0].nota",
            "the limit is 4096",
        ),
        ("/send-bulk/preview", {**BULK, "contatos": [{**CONTACT, "n" * 65: "x"}]}, "contatos[0]", "longer than 64"),
        (
            "/send-bulk/preview",
            {**BULK, "contatos": [CONTACT], "mensagemBase": "x" * 4097},
            "mensagemBase",
            "length <= 4096",
        ),
        ("/send", {"userId": "u" * 65, "number": "5511900000001", "message": "x"}, "userId", "1-64"),
    ],
    ids=["number", "webhookUrl", "imagemUrl", "contact fields", "field value", "field name", "message", "userId"],
)
def test_a_field_over_its_limit_is_a_400_naming_it(
    api: Keyed, path: str, body: dict[str, Any], field: str, words: str
) -> None:
    found = problem(api.client.post(path, json=body, headers=api.as_admin()), 400)
    assert found["errors"][0]["field"] == field and words in found["errors"][0]["reason"], found


def test_a_body_over_the_size_limit_is_a_413_naming_it(api: Keyed) -> None:
    body = {**BULK, "contatos": [{**CONTACT, "nota": "x" * 4000} for _ in range(20)]}
    found = problem(api.client.post("/send-bulk", json=body, headers=api.as_admin()), 413)
    assert "65536 bytes" in found["detail"] and "ZAPGATE_API_MAX_BODY_BYTES" in found["detail"]


def test_too_many_contacts_is_a_413_naming_the_limit(api: Keyed) -> None:
    body = {**BULK, "contatos": [{"numero": f"55119000{i:05d}", "nome": "A"} for i in range(51)]}
    found = problem(api.client.post("/send-bulk", json=body, headers=api.as_admin()), 413)
    assert "the limit is 50" in found["detail"] and found["errors"][0]["field"] == "contatos"


def test_a_flood_of_tiny_contacts_is_refused_while_it_is_read_in_bounded_memory() -> None:
    from api.errors import PayloadTooLarge
    from api.requests import read_bulk_body

    body = b'{"userId": "alice", "mensagemBase": "x", "contatos": [' + b",".join([b"{}"] * 2_000_000) + b"]}"
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge) as refused:
            read_bulk_body(body, 50)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "the limit is 50" in str(refused.value)
    assert peak < 3 * len(body)  # not two million dicts (145 MB for this 6 MB body)


@pytest.mark.parametrize(
    "contacts",
    [
        b'"contatos": [' + b",".join([b"{}"] * 500_000) + b'], "contatos": [{"numero": "5511900000001"}]',
        b'"contatos": [{"numero": "5511900000001", "x": [' + b",".join([b"{}"] * 500_000) + b"]}]",
    ],
    ids=["a second contatos key", "objects inside a contact"],
)
def test_objects_hidden_from_the_contact_list_are_counted_too(contacts: bytes) -> None:
    from api.errors import PayloadTooLarge
    from api.requests import read_bulk_body

    body = b'{"userId": "alice", "mensagemBase": "x", ' + contacts + b"}"
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge):
            read_bulk_body(body, 50)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * len(body)


def test_a_contacts_number_has_the_same_length_limit_as_a_single_sends(api: Keyed) -> None:
    long = "+55 (11) 9" + "-" * 3000 + "0000-0001"
    body = {**BULK, "contatos": [CONTACT, {"numero": long, "nome": "Bia"}]}
    found = problem(api.client.post("/send-bulk/preview", json=body, headers=api.as_admin()), 400)
    assert found["errors"][0]["field"] == "contatos[1].numero" and "32 characters" in found["detail"]


@pytest.mark.parametrize("zone", ["America", "Etc", "x" * 300, "../../etc/passwd", "Not/AZone"])
def test_a_time_zone_that_is_not_one_is_a_400(api: Keyed, zone: str) -> None:
    answer = api.client.put(f"/sessions/{ALICE}/settings", json={"timezone": zone}, headers=api.as_admin())
    assert problem(answer, 400)["errors"][0]["field"] == "timezone"


def test_a_bad_query_value_names_the_parameter_and_never_repeats_the_url(api: Keyed) -> None:
    found = problem(api.client.get(f"/jobs?userId={ALICE}&limit=lots&token=SECRET-TOKEN", headers=api.as_admin()), 400)
    assert found["errors"][0]["field"] == "limit" and "SECRET-TOKEN" not in str(found)


def test_unknown_routes_and_methods_are_problems_too(api: Keyed) -> None:
    assert problem(api.client.get("/nowhere", headers=api.as_admin()), 404)["title"] == "Not found"
    answer = api.client.delete("/send", headers=api.as_admin())
    problem(answer, 405)
    assert "POST" in answer.headers["allow"]


def test_the_openapi_document_describes_bodies_problems_and_keys(api: Keyed) -> None:
    doc = api.client.get("/schema/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert {"SendRequest", "SendBulkRequest", "UserRequest", "PairPhoneRequest", "KeyRequest", "Problem"} <= set(
        schemas
    )
    assert set(doc["components"]["securitySchemes"]) >= {"apiKey", "bearer", "pageLink", "pageCookie"}
    bodies = {
        ("/send", "post"): "SendRequest",
        ("/send-bulk", "post"): "SendBulkRequest",
        ("/send-bulk/preview", "post"): "SendBulkRequest",
        ("/disconnect", "post"): "UserRequest",
        ("/logout", "post"): "UserRequest",
        ("/sessions/{user_id}/pair-phone", "post"): "PairPhoneRequest",
        ("/sessions/{user_id}/settings", "put"): "AccountSettings",
        ("/keys", "post"): "KeyRequest",
    }
    for (path, method), name in bodies.items():
        body = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{name}"}, (path, body)
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            codes = set(operation["responses"])
            expected = {"503"} if path == "/healthz" else {"400", "401", "404", "429", "503"}
            assert expected <= codes, (path, method, codes)
            for code in expected:
                content = operation["responses"][code]["content"]
                assert content == {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
            if "requestBody" in operation:
                assert "413" in codes
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert "403" in doc["paths"]["/keys"]["post"]["responses"]


def test_the_csv_report_never_hands_a_spreadsheet_a_formula(api: Keyed) -> None:
    import csv
    import io

    from infra import layout
    from infra.documents import Job, Recipient, encode
    from infra.jobs import initial_state, prepare_job, write_state

    names = ['=HYPERLINK("http://x","y")', "+1+1", "-2", "@SUM(A1)", "\tTab", "  =1+1", "Ana", "Zé = 1"]
    job = prepare_job(
        Job(
            userId=ALICE,
            message="Oi [nome]",
            recipients=[Recipient(number=f"551190000{i:04d}", name=n) for i, n in enumerate(names)],
        ),
        job_id="20261204T000000000000-c5vc5vc5",
        default_region="BR",
    )
    api.store.put(layout.job(job.jobId or ""), encode(job))
    write_state(api.store, initial_state(job))
    report = api.client.get(f"/jobs/{job.jobId}/report.csv", headers=api.as_admin())
    assert report.status_code == 200 and report.headers["content-type"] == "text/csv; charset=utf-8"
    cells = [row["name"] for row in csv.DictReader(io.StringIO(report.text))]
    assert cells == ["'" + n for n in names[:6]] + ["Ana", "Zé = 1"]


@pytest.mark.parametrize(
    ("settings", "field", "words"),
    [
        ({"quietHours": {"start": "25:00", "end": "08:00"}}, "quietHours.start", "HH:MM"),
        ({"quietHours": {"start": "08:00", "end": "08:00"}}, "quietHours", "must differ"),
    ],
)
def test_account_settings_errors_name_the_field_in_words(
    api: Keyed, settings: dict[str, Any], field: str, words: str
) -> None:
    found = problem(api.client.put(f"/sessions/{ALICE}/settings", json=settings, headers=api.as_admin()), 400)
    assert found["errors"][0]["field"] == field and words in found["detail"] and "regex" not in found["detail"]

"""Keys, page tokens, QR payloads, pairing codes and credentials never appear in the logs or in an
error answer; the log lines still say which account (``user=…``)."""

from __future__ import annotations

import json
import logging
import re
import secrets
from typing import Any

import pytest

from infra.store.s3 import S3Store
from session_host.whatsapp.simulated import SimulatedWorld
from tests.conftest import wait_for
from tests.security.keyed import ADMIN_KEY, ALICE, QR, keyed_api

FAST = {"randomDelayMin": 200, "randomDelayMax": 300, "batchSize": 10, "batchDelayMs": 500}


def test_the_processes_log_no_secret_but_the_user_id(system_factory: Any) -> None:
    webhook_secret = "whsec-" + secrets.token_hex(16)
    system = system_factory(
        ZAPGATE_API_ADMIN_KEY=ADMIN_KEY,
        ZAPGATE_WEBHOOK_SECRET=webhook_secret,
        ZAPGATE_LOG_LEVEL="DEBUG",
    )
    world = SimulatedWorld(system.simulator_dir)
    http = system.http
    admin = {"X-Api-Key": ADMIN_KEY}
    key = http.post("/keys", json={"userId": "user1"}, headers=admin).json()["key"]
    as_user = {"X-Api-Key": key}

    link = http.post("/sessions/user1/link", headers=as_user).json()["url"]
    token = link.split("token=")[1]
    page = http.get(link)
    assert page.status_code == 200
    cookie = page.headers["set-cookie"].split(";")[0].split("=", 1)[1]
    status = wait_for(
        lambda: (s := http.get("/sessions/user1", headers=as_user).json())["state"] == "qr" and s, what="a QR code"
    )
    qr = status["qr"]
    assert http.post("/sessions/user1/pair-phone", json={"phone": "5511977770000"}, headers=as_user).status_code == 202
    code = wait_for(lambda: http.get("/sessions/user1", headers=as_user).json()["pairCode"], what="a pairing code")
    world.scan("user1", phone="5511977770000")
    wait_for(lambda: http.get("/sessions/user1", headers=as_user).json()["state"] == "connected", what="connected")
    device = json.loads((system.simulator_dir / "linked" / "user1.json").read_text())["device"]
    job = http.post(
        "/send",
        json={"userId": "user1", "number": "5511900000001", "message": "oi", "antiBanSettings": FAST},
        headers=as_user,
    ).json()["jobId"]
    wait_for(lambda: http.get(f"/jobs/{job}", headers=as_user).json()["status"] == "done", what="the send")

    # Wrong keys and tokens, as an attacker would send them: refused without being repeated.
    guesses = [f"{key[:-4]}AAAA", f"{ADMIN_KEY}x", "zg_" + "0" * 16 + "_" + "A" * 43]
    for guess in guesses:
        refused = http.get("/sessions/user1", headers={"X-Api-Key": guess})
        assert refused.status_code == 401 and guess not in refused.text
    forged = f"{token[:-3]}AAA"
    refused = http.get(f"/connect?userId=user1&token={forged}")
    assert refused.status_code == 401 and forged not in refused.text

    system.stop()
    logs = system.logs()
    secrets_seen = {
        "admin key": ADMIN_KEY,
        "user key": key,
        "key secret": key.split("_", 2)[2],
        "page token": token,
        "page cookie": cookie,
        "QR payload": qr,
        "pairing code": code,
        "credentials": device,
        "webhook secret": webhook_secret,
        **{f"guess {i}": guess for i, guess in enumerate(guesses)},
    }
    for name, value in secrets_seen.items():
        assert value not in logs, f"the {name} is in the logs"
    assert re.search(r"user=user1\b", logs), "the log lines no longer say which account"


def test_the_api_logs_no_key_or_token_when_it_refuses(
    s3_client: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    with keyed_api(S3Store(s3_client, bucket, prefix="secrets")) as api, caplog.at_level(logging.DEBUG):
        key = api.keys[ALICE]
        link = api.client.post(f"/sessions/{ALICE}/link", headers=api.as_user(ALICE)).json()["url"]
        token = link.split("token=")[1]
        answers = [
            api.client.get("/sessions", headers={"X-Api-Key": key + "x"}),
            api.client.get(f"/sessions/{ALICE}?token={token}x"),
            api.client.get(f"/jobs?userId={ALICE}&limit=x&token={token}", headers=api.as_user(ALICE)),
            api.client.get(f"/sessions/{ALICE}", headers=api.as_user(ALICE)),
        ]
    for answer in answers[:3]:
        assert answer.status_code in (400, 401)
        assert key not in answer.text and token not in answer.text
    server_logs = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("httpx"))
    for value in (ADMIN_KEY, key, token, QR[ALICE]):
        assert value not in server_logs

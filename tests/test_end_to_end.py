"""The main job end to end: S3 (Ceph RGW), the API under granian and the session host, each a real
process, and the simulated WhatsApp. What arrives is read from the simulated WhatsApp itself."""

from __future__ import annotations

import itertools
import json
from typing import Any

from session_host.whatsapp.simulated import SimulatedWorld
from tests.conftest import System, wait_for

FAST = {"randomDelayMin": 300, "randomDelayMax": 500, "batchSize": 10, "batchDelayMs": 1000}


def job_when_final(system: System, job_id: str, timeout: float = 30) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        job = system.http.get(f"/jobs/{job_id}").json()
        return job if job["status"] in ("done", "failed", "cancelled", "rejected") else None

    return wait_for(final, timeout, what=f"job {job_id} to finish")


def session(system: System, user_id: str) -> dict[str, Any]:
    return system.http.get(f"/sessions/{user_id}").json()


def connect(system: System, world: SimulatedWorld, user_id: str, phone: str) -> None:
    page = system.http.get("/connect", params={"userId": user_id})
    assert page.status_code == 200 and user_id in page.text
    wait_for(lambda: session(system, user_id)["state"] == "qr", what="a QR code")
    world.scan(user_id, phone=phone)
    wait_for(lambda: session(system, user_id)["state"] == "connected", what="the connection")


def test_connect_then_bulk_then_send_then_disconnect(system_factory: Any) -> None:
    system = system_factory()
    world = SimulatedWorld(system.simulator_dir)

    # A user never seen before: the state page answers, the connect page starts the session.
    status_page = system.http.get("/", params={"userId": "user1"})
    assert status_page.status_code == 200 and "never been connected" in status_page.text
    assert system.http.get("/connect", params={"userId": "user1"}).status_code == 200
    qr_state = wait_for(
        lambda: session(system, "user1")["state"] == "qr" and session(system, "user1"), what="the QR code"
    )
    assert qr_state["qr"] and qr_state["qrExpiresAt"] and qr_state["backend"] == "simulated"
    assert {"userId": "user1", "isConnected": False, "hasQrCode": True}.items() <= system.http.get("/sessions").json()[
        0
    ].items()
    svg = system.http.get("/sessions/user1/qr.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml") and b"<svg" in svg.content
    png = system.http.get("/sessions/user1/qr.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert '<img id="qr"' in system.http.get("/connect", params={"userId": "user1"}).text

    # Scan: user1 is connected.
    world.scan("user1", phone="5511977770000")
    wait_for(lambda: system.http.get("/sessions").json()[0]["isConnected"], what="user1 connected")
    listed = system.http.get("/sessions").json()
    assert listed[0]["userId"] == "user1" and listed[0]["hasQrCode"] is False
    assert "Connected" in system.http.get("/", params={"userId": "user1"}).text

    # The original's bulk example, with shortened delays.
    answer = system.http.post(
        "/send-bulk",
        json={
            "userId": "user1",
            "contatos": [{"nome": "João", "numero": "5511999999999"}, {"nome": "Maria", "numero": "5511888888888"}],
            "mensagemBase": "Olá [nome], tudo bem?",
            "antiBanSettings": FAST,
        },
    )
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    assert accepted["success"] is True and accepted["total"] == 2
    assert accepted["statusUrl"] == f"/jobs/{accepted['jobId']}"
    job = job_when_final(system, accepted["jobId"])
    assert job["status"] == "done"
    assert (job["totals"]["total"], job["totals"]["sent"], job["totals"]["pending"]) == (2, 2, 0)
    assert [(r["number"], r["status"], r["jid"]) for r in job["results"]] == [
        ("5511999999999", "sent", "5511999999999@s.whatsapp.net"),
        ("5511888888888", "sent", "5511888888888@s.whatsapp.net"),
    ]

    delivered = world.delivered("user1")
    assert [(m.to, m.text) for m in delivered] == [
        ("5511999999999@s.whatsapp.net", "Olá João, tudo bem?"),
        ("5511888888888@s.whatsapp.net", "Olá Maria, tudo bem?"),
    ]
    assert all(m.senderJid == "5511977770000@s.whatsapp.net" for m in delivered)
    gap = delivered[1].at - delivered[0].at
    assert gap >= 0.3, f"gap {gap:.3f} s is shorter than randomDelayMin"

    # A single send, normalised, after the account's minimum gap.
    answer = system.http.post(
        "/send",
        json={"userId": "user1", "number": "+55 (11) 90000-0001", "message": "Olá, tudo bem?", "antiBanSettings": FAST},
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["number"] == "5511900000001"
    assert job_when_final(system, answer.json()["jobId"])["status"] == "done"
    delivered = world.delivered("user1")
    assert (delivered[-1].to, delivered[-1].text) == ("5511900000001@s.whatsapp.net", "Olá, tudo bem?")
    assert delivered[-1].at - delivered[-2].at >= 0.3
    assert len(delivered) == 3

    # Disconnect keeps the pairing; a send is then refused at once.
    answer = system.http.post("/disconnect", json={"userId": "user1"})
    assert answer.status_code == 200 and answer.json()["success"] is True
    wait_for(lambda: session(system, "user1")["state"] == "disconnected", what="disconnected")
    assert session(system, "user1")["paired"] is True
    refused = system.http.post("/send", json={"userId": "user1", "number": "5511999999999", "message": "oi"})
    assert refused.status_code == 409 and "not connected" in refused.json()["detail"]
    assert len(world.delivered("user1")) == 3


def test_batches_pause_for_batch_delay(system_factory: Any) -> None:
    system = system_factory()
    world = SimulatedWorld(system.simulator_dir)
    connect(system, world, "u1", "5511977770001")
    contacts = [{"nome": f"C{i}", "numero": f"55119000000{i:02d}"} for i in range(5)]
    answer = system.http.post(
        "/send-bulk",
        json={
            "userId": "u1",
            "contatos": contacts,
            "mensagemBase": "Oi [nome]",
            "antiBanSettings": {"randomDelayMin": 100, "randomDelayMax": 200, "batchSize": 2, "batchDelayMs": 1200},
        },
    )
    assert answer.status_code == 202, answer.text
    assert job_when_final(system, answer.json()["jobId"])["totals"]["sent"] == 5
    times = [m.at for m in world.delivered("u1")]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert [m.text for m in world.delivered("u1")] == [f"Oi C{i}" for i in range(5)]
    # After messages 2 and 4 the batch delay; otherwise a random pause in [0.1, 0.2] s (+ overhead).
    assert gaps[1] >= 1.2 and gaps[3] >= 1.2, gaps
    assert all(0.1 <= gaps[i] < 1.0 for i in (0, 2)), gaps


def test_case8_host_killed_and_restarted_restores_every_session(system_factory: Any) -> None:
    system = system_factory()
    world = SimulatedWorld(system.simulator_dir)
    connect(system, world, "u1", "5511977770001")
    connect(system, world, "u2", "5511977770002")
    first_host = session(system, "u1")["host"]

    system.hosts[0].stop(sig=9)  # kill -9: no chance to save anything on the way out
    system.start_host()

    def reconnected(user_id: str) -> bool:
        status = session(system, user_id)
        return status["state"] == "connected" and status["host"] != first_host

    wait_for(lambda: reconnected("u1") and reconnected("u2"), what="both sessions back from stored auth")
    listed = {s["userId"]: s for s in system.http.get("/sessions").json()}
    assert listed["u1"]["isConnected"] and listed["u2"]["isConnected"]
    assert "QR code" not in system.hosts[1].log()  # no new pairing was needed
    answer = system.http.post("/send", json={"userId": "u2", "number": "5511900000001", "message": "de volta"})
    assert answer.status_code == 202, answer.text
    assert job_when_final(system, answer.json()["jobId"])["status"] == "done"
    assert [(m.sender, m.text) for m in world.delivered()] == [("u2", "de volta")]


def test_a_job_dropped_straight_into_the_bucket_is_sent_and_a_bad_one_set_aside(system_factory: Any) -> None:
    system = system_factory()
    world = SimulatedWorld(system.simulator_dir)
    connect(system, world, "u1", "5511977770001")
    # A name the store cannot use (a tab), sorted before the good drop and the commands: left alone.
    bad_name = f"{system.store.prefix}inbox/0\tbad.json"
    system.store.client.put_object(Bucket=system.store.bucket, Key=bad_name, Body=b"{}")
    system.store.put(
        "inbox/from-crm-42.json",
        json.dumps(
            {
                "userId": "u1",
                "message": "Olá [nome]!",
                "recipients": [{"number": "+55 11 90000-0001", "name": "Ana"}],
                "antiBanSettings": FAST,
            }
        ).encode(),
    )
    system.store.put("inbox/broken.json", b'{"userId": "u1", "recipients": "nobody"}')
    job = job_when_final(system, "from-crm-42")
    assert job["status"] == "done" and job["results"][0]["number"] == "5511900000001"
    assert [m.text for m in world.delivered("u1")] == ["Olá Ana!"]
    rejected = wait_for(
        lambda: (
            system.http.get("/jobs/broken").json()["status"] == "rejected" and system.http.get("/jobs/broken").json()
        ),
        what="the bad drop to be set aside",
    )
    assert "recipients" in rejected["detail"]
    assert system.store.get("rejected/broken.json").data == b'{"userId": "u1", "recipients": "nobody"}'
    assert not system.store.exists("inbox/broken.json")
    assert system.hosts[0].popen is not None and system.hosts[0].popen.poll() is None  # still running
    assert system.http.post("/disconnect", json={"userId": "u1"}).status_code == 200  # commands still carried out
    wait_for(lambda: system.http.get("/sessions/u1").json()["state"] == "disconnected", what="the disconnect")


def test_sigterm_stops_the_host_cleanly_and_keeps_the_session_for_the_next_start(system_factory: Any) -> None:
    system = system_factory()
    world = SimulatedWorld(system.simulator_dir)
    connect(system, world, "u1", "5511977770001")
    assert system.hosts[0].stop(sig=15) == 0
    log = system.hosts[0].log()
    assert "session stopped: reconnecting" in log and "stopped after" in log
    status = session(system, "u1")
    assert status["state"] == "reconnecting" and status["hostAlive"] is False
    assert "stopped 0 s ago" in status["detail"] or "stopped 1 s ago" in status["detail"]
    listed = system.http.get("/sessions").json()
    assert listed[0]["isConnected"] is False and listed[0]["hostAlive"] is False
    refused = system.http.post("/send", json={"userId": "u1", "number": "5511900000001", "message": "oi"})
    assert refused.status_code == 409 and "session host" in refused.json()["detail"]
    health = system.http.get("/healthz").json()
    assert health["status"] == "ok" and [h["alive"] for h in health["hosts"]] == [False]
    system.start_host()
    wait_for(lambda: session(system, "u1")["state"] == "connected", what="u1 back after a clean restart")


def test_the_command_line_sends_and_follows_a_message(system_factory: Any, capsys: Any) -> None:
    from infra import cli

    system = system_factory()
    world = SimulatedWorld(system.simulator_dir)
    world.set_numbers({"5511900000099": None})
    connect(system, world, "u1", "5511977770001")
    assert cli.main(["--url", system.url, "send", "u1", "+55 11 90000-0001", "Olá [nome]"]) == 0
    outcome = json.loads(capsys.readouterr().out)
    assert (outcome["status"], outcome["outcome"], outcome["number"]) == ("done", "sent", "5511900000001")
    assert [m.text for m in world.delivered("u1")] == ["Olá [nome]"]  # /send goes as written
    assert cli.main(["--url", system.url, "send", "u1", "5511900000099", "oi"]) == 1
    assert json.loads(capsys.readouterr().out)["outcome"] == "not_on_whatsapp"
    assert cli.main(["--url", system.url, "sessions"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["userId"] == "u1"


def test_the_command_line_sends_the_key_to_a_keyed_api(system_factory: Any, capsys: Any, monkeypatch: Any) -> None:
    from infra import cli

    admin = "admin-" + "k" * 24
    system = system_factory(ZAPGATE_API_ADMIN_KEY=admin)
    assert cli.main(["--url", system.url, "sessions"]) == 1
    assert "API key" in json.loads(capsys.readouterr().out)["detail"]
    assert cli.main(["--url", system.url, "--key", admin, "sessions"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    monkeypatch.setenv("ZAPGATE_API_KEY", admin)
    assert cli.main(["--url", system.url, "sessions"]) == 0

"""Campaigns through the real processes: a host killed mid-campaign, control and reports over HTTP."""

from __future__ import annotations

import csv
import io
from collections import Counter
from typing import Any

import pytest

from session_host.whatsapp.simulated import SimulatedWorld
from tests.conftest import wait_for
from tests.test_end_to_end import connect, job_when_final

PACE = {"randomDelayMin": 150, "randomDelayMax": 250, "batchSize": 5, "batchDelayMs": 400}


def test_host_killed_mid_campaign_resumes_without_duplicates_or_losses(system_factory: Any) -> None:
    system = system_factory()
    world = SimulatedWorld(system.simulator_dir)
    connect(system, world, "u1", "5511977770001")
    contacts = [{"nome": f"Pessoa {i}", "numero": f"55119000003{i:02d}"} for i in range(20)]
    answer = system.http.post(
        "/send-bulk", json={"userId": "u1", "contatos": contacts, "mensagemBase": "Oi [nome]", "antiBanSettings": PACE}
    )
    job_id = answer.json()["jobId"]
    wait_for(lambda: len(world.delivered("u1")) >= 6, what="six messages")
    system.hosts[0].stop(sig=9)
    killed_at = len(world.delivered("u1"))
    assert killed_at < 20
    system.start_host()
    job = job_when_final(system, job_id, timeout=60)
    texts = [m.text for m in world.delivered("u1")]
    assert Counter(texts) == Counter(f"Oi Pessoa {i}" for i in range(20))  # everyone once, no one twice
    assert job["status"] == "done" and job["totals"]["sent"] == 20 and job["totals"]["pending"] == 0


def test_killed_mid_campaign_through_a_backend_without_our_message_ids(system_factory: Any, tmp_path: Any) -> None:
    """As through neonize 0.5.2: a resend would be a second message, so the one the kill may have
    caught in flight is reported unknown, and no one gets two."""
    SimulatedWorld(tmp_path / "whatsapp").set_message_ids(False)  # the world the host will use
    system = system_factory()
    world = SimulatedWorld(system.simulator_dir)
    connect(system, world, "u1", "5511977770001")
    contacts = [{"nome": f"Pessoa {i}", "numero": f"55119000005{i:02d}"} for i in range(20)]
    answer = system.http.post(
        "/send-bulk", json={"userId": "u1", "contatos": contacts, "mensagemBase": "Oi [nome]", "antiBanSettings": PACE}
    )
    job_id = answer.json()["jobId"]
    wait_for(lambda: len(world.delivered("u1")) >= 6, interval=0.01, what="six messages")
    system.hosts[0].stop(sig=9)
    system.start_host()
    job = job_when_final(system, job_id, timeout=60)
    delivered = Counter(m.text for m in world.delivered("u1"))
    assert max(delivered.values()) == 1  # no one twice
    results = system.http.get(f"/jobs/{job_id}").json()["results"]
    sent = {f"Oi {r['name']}" for r in results if r["status"] == "sent"}
    unknown = [r for r in results if r["status"] == "unknown"]
    assert sent <= set(delivered) and len(sent) + len(unknown) == 20 and len(unknown) <= 1  # no one lost
    assert all("not resent" in r["error"] for r in unknown)
    assert job["status"] == "done" and job["totals"]["pending"] == 0


@pytest.mark.parametrize("honoured", [False, True], ids=["fresh-ids", "our-ids"])
def test_host_killed_while_a_message_is_out_sends_no_one_twice(
    system_factory: Any, tmp_path: Any, honoured: bool
) -> None:
    """The first message leaves and its send never returns; the host is killed before it can write
    the outcome. Where WhatsApp keeps our id, the resend is de-duplicated; where it cannot
    (neonize 0.5.2), the recipient is unknown, and not resent."""
    SimulatedWorld(tmp_path / "whatsapp").set_message_ids(honoured)
    system = system_factory()
    world = SimulatedWorld(system.simulator_dir)
    connect(system, world, "u1", "5511977770001")
    world.hang_after_next_send("u1")
    contacts = [{"nome": f"Pessoa {i}", "numero": f"55119000006{i:02d}"} for i in range(4)]
    answer = system.http.post(
        "/send-bulk", json={"userId": "u1", "contatos": contacts, "mensagemBase": "Oi [nome]", "antiBanSettings": PACE}
    )
    job_id = answer.json()["jobId"]
    wait_for(lambda: world._read("faults/u1/hang_after_send.json") is None, what="the first message out")
    assert [m.text for m in world.delivered("u1")] == ["Oi Pessoa 0"]
    system.hosts[0].stop(sig=9)
    system.start_host()
    job = job_when_final(system, job_id, timeout=60)
    assert Counter(m.text for m in world.delivered("u1")) == Counter(f"Oi Pessoa {i}" for i in range(4))
    first = system.http.get(f"/jobs/{job_id}").json()["results"][0]
    if honoured:
        assert job["totals"]["sent"] == 4 and first["status"] == "sent"
    else:
        assert job["totals"]["sent"] == 3 and job["totals"]["unknown"] == 1
        assert first["status"] == "unknown" and "not resent" in first["error"] and first["sendingSince"] is None


def test_control_list_and_csv_report_over_http(system_factory: Any) -> None:
    system = system_factory()
    world = SimulatedWorld(system.simulator_dir)
    world.set_numbers({"5511900000499": None})
    connect(system, world, "u1", "5511977770001")
    contacts = [
        {"nome": "Ana", "numero": "5511900000401"},
        {"nome": "Zé", "numero": "5511900000499"},
        {"nome": "Ana outra vez", "numero": "+55 11 90000-0401"},
    ]
    first = system.http.post(
        "/send-bulk", json={"userId": "u1", "contatos": contacts, "mensagemBase": "Oi [nome]", "antiBanSettings": PACE}
    ).json()["jobId"]
    job = job_when_final(system, first)
    assert job["totals"] | {} == {**job["totals"], "sent": 1, "not_on_whatsapp": 1, "duplicate": 1}

    report = system.http.get(f"/jobs/{first}/report.csv")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(report.text)))
    assert [(r["number"], r["name"], r["status"]) for r in rows] == [
        ("5511900000401", "Ana", "sent"),
        ("5511900000499", "Zé", "not_on_whatsapp"),
        ("5511900000401", "Ana outra vez", "duplicate"),
    ]
    assert rows[2]["error"] == "the same number as the contact at position 0"

    slow = {"randomDelayMin": 1000, "randomDelayMax": 1000, "batchSize": 10, "batchDelayMs": 1000}
    many = [{"nome": f"N{i}", "numero": f"55119000005{i:02d}"} for i in range(10)]
    second = system.http.post(
        "/send-bulk", json={"userId": "u1", "contatos": many, "mensagemBase": "Olá [nome]", "antiBanSettings": slow}
    ).json()["jobId"]
    assert system.http.post(f"/jobs/{second}/pause").status_code == 202
    wait_for(lambda: system.http.get(f"/jobs/{second}").json()["status"] == "paused", what="paused")
    assert system.http.post(f"/jobs/{second}/cancel").status_code == 202
    job = job_when_final(system, second)
    assert job["status"] == "cancelled" and job["totals"]["skipped"] + job["totals"]["sent"] == 10
    assert system.http.post(f"/jobs/{second}/resume").status_code == 409  # finished: no longer changes
    assert system.http.post(f"/jobs/{second}/explode").json()["errors"][0]["field"] == "action"

    listed = system.http.get("/jobs", params={"userId": "u1"}).json()
    assert [j["jobId"] for j in listed] == [second, first] and all(j["results"] == [] for j in listed)
    assert system.http.get("/jobs", params={"userId": "nobody"}).json() == []
    assert system.http.get("/jobs").status_code == 400

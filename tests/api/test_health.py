"""``GET /healthz``: the store answers, and which session hosts are alive."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from litestar.testing import TestClient

from api.app import create_app
from infra import layout
from infra.documents import HostBeat, encode, utcnow
from infra.settings import Settings
from infra.store.local import LocalStore


def test_hosts_alive_now_or_lately_are_listed_and_long_gone_ones_forgotten(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    now = utcnow()
    for host_id, seen in [
        ("alive", now),
        ("died-an-hour-ago", now - dt.timedelta(hours=1)),
        ("old", now - dt.timedelta(days=2)),
    ]:
        beat = HostBeat(hostId=host_id, startedAt=seen, lastSeen=seen, staleAfter=20)
        store.put(layout.host_beat(host_id), encode(beat))
    with TestClient(create_app(Settings(), store)) as client:
        health = client.get("/healthz").json()
    assert health["status"] == "ok"
    assert sorted((host["hostId"], host["alive"]) for host in health["hosts"]) == [
        ("alive", True),
        ("died-an-hour-ago", False),
    ]

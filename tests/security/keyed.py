"""A keyed API on the real S3 store, in the test's process (Litestar's TestClient), with two
accounts that exist (alice, bruno: a session with a QR code, a job each) and one that does not (carla)."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import TestClient

from api.app import create_app
from api.service import submit_job
from infra import layout
from infra.documents import HostBeat, Job, Recipient, SessionStatus, encode, utcnow
from infra.jobs import prepare_job
from infra.settings import ApiSettings, Secret, Settings
from infra.store.s3 import S3Store

ADMIN_KEY = "admin-" + secrets.token_urlsafe(24)
ALICE, BRUNO, CARLA = "alice", "bruno", "carla"  # carla has nothing: she does not exist
QR = {ALICE: "2@alice-qr-payload-" + secrets.token_hex(8), BRUNO: "2@bruno-qr-payload-" + secrets.token_hex(8)}


@dataclass
class Keyed:
    store: S3Store
    app: Litestar
    client: TestClient[Any]
    jobs: dict[str, str] = field(default_factory=dict)  # userId -> one of its job ids
    keys: dict[str, str] = field(default_factory=dict)  # userId -> its key
    key_ids: dict[str, str] = field(default_factory=dict)

    def as_admin(self) -> dict[str, str]:
        return {"X-Api-Key": ADMIN_KEY}

    def as_user(self, user_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[user_id]}"}


def seed_account(store: S3Store, user_id: str) -> str:
    """A session showing a QR code on a live host, and one job in the inbox; returns the job id."""
    now = utcnow()
    store.put(
        layout.host_beat("h1"), encode(HostBeat(hostId="h1", startedAt=now, lastSeen=now + dt.timedelta(hours=1)))
    )
    status = SessionStatus(
        userId=user_id,
        state="qr",
        qr=QR[user_id],
        qrExpiresAt=now + dt.timedelta(hours=1),
        host="h1",
        backend="simulated",
        updatedAt=now,
    )
    store.put(layout.session_status(user_id), encode(status))
    job = prepare_job(
        Job(userId=user_id, recipients=[Recipient(number="5511900000001", name="Ana")], message="Oi [nome]"),
        job_id=f"{now:%Y%m%dT%H%M%S%f}-{secrets.token_hex(4)}",
        default_region="BR",
    )
    submit_job(store, job)
    assert job.jobId is not None
    store.put(layout.user_job(user_id, job.jobId), b"")  # as the host marks the jobs it accepts, for listing
    return job.jobId


@contextmanager
def keyed_api(store: S3Store, **api: Any) -> Iterator[Keyed]:
    settings = Settings(api=ApiSettings(admin_key=Secret(ADMIN_KEY), **{"rate_limit": 0, **api}))
    app = create_app(settings, store)
    with TestClient(app) as client:
        keyed = Keyed(store, app, client)
        for user_id in (ALICE, BRUNO):
            keyed.jobs[user_id] = seed_account(store, user_id)
            made = client.post("/keys", json={"userId": user_id, "label": "test"}, headers=keyed.as_admin())
            assert made.status_code == 201, made.text
            keyed.keys[user_id], keyed.key_ids[user_id] = made.json()["key"], made.json()["keyId"]
        yield keyed


def app_routes(app: Litestar) -> set[tuple[str, str]]:
    """Every (method, path) the app serves, except Litestar's own: OPTIONS and the OpenAPI pages."""
    return {
        (method, route.path_format)
        for route in app.routes
        if isinstance(route, HTTPRoute) and not route.path_format.startswith("/schema")
        for handler in route.route_handlers
        for method in handler.http_methods
        if method != "OPTIONS"
    }

"""A session saves the newest credentials when its connection ends, never those of an account another
host serves, and a start that fails leaves no half-started session (a fake backend, local store)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from infra import layout
from infra.settings import HostSettings
from infra.store.local import LocalStore
from session_host.sessions import Session
from session_host.storage import Storage
from session_host.whatsapp import Connected, Disconnected, Emit, Event, StreamReplaced, TemporaryBan


class FakeClient:
    def __init__(self, emit: Emit, fail_start: bool) -> None:
        self.emit, self.creds, self.stopped, self.fail_start = emit, b"v1", False, fail_start

    async def start(self) -> None:
        if self.fail_start:
            raise RuntimeError("the worker did not come up")
        self.emit(Connected(jid="5511977770001@s.whatsapp.net"))

    async def stop(self) -> None:
        self.stopped = True

    async def export_auth(self) -> bytes | None:
        return None if self.stopped else self.creds


class FakeBackend:
    name, honours_message_ids = "fake", False

    def __init__(self, fail_start: bool = False) -> None:
        self.clients: list[FakeClient] = []
        self.fail_start = fail_start

    def new_client(self, user_id: str, auth_path: str, emit: Emit) -> Any:
        self.clients.append(FakeClient(emit, self.fail_start))
        return self.clients[-1]


def make_session(store: LocalStore, tmp_path: Path, backend: FakeBackend, mine: list[bool]) -> Session:
    async def still_mine() -> bool:
        return mine[0]

    settings = HostSettings(work_dir=str(tmp_path / "work"))
    return Session("u1", backend, Storage(store), settings, still_mine=still_mine)  # type: ignore[arg-type]


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    "ending",
    [TemporaryBan(reason="x", expires_in=3600), Disconnected(reason="gone", final=True), StreamReplaced()],
    ids=["temporary ban", "final disconnect", "stream replaced"],
)
def test_a_connection_that_ends_saves_what_changed_since_the_last_save(
    local_store: LocalStore, tmp_path: Path, ending: Event
) -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        session = make_session(local_store, tmp_path, backend, [True])
        await session.start()
        await settle()
        assert local_store.get(layout.session_auth("u1")).data == b"v1"  # saved on connecting
        backend.clients[0].creds = b"v2"  # whatsmeow moved its keys on since
        backend.clients[0].emit(ending)
        await settle()
        assert backend.clients[0].stopped and local_store.get(layout.session_auth("u1")).data == b"v2"
        await session.release()

    asyncio.run(scenario())


def test_credentials_are_not_saved_for_an_account_another_host_serves(local_store: LocalStore, tmp_path: Path) -> None:
    async def scenario() -> None:
        backend, mine = FakeBackend(), [True]
        session = make_session(local_store, tmp_path, backend, mine)
        await session.start()
        await settle()
        mine[0] = False  # another host took the account over; this one has not noticed yet
        backend.clients[0].creds = b"stale"
        await session.save_auth()
        assert local_store.get(layout.session_auth("u1")).data == b"v1"
        await session.release()

    asyncio.run(scenario())


def test_a_start_that_fails_leaves_no_half_started_session(local_store: LocalStore, tmp_path: Path) -> None:
    async def scenario() -> None:
        session = make_session(local_store, tmp_path, FakeBackend(fail_start=True), [True])
        with pytest.raises(RuntimeError):
            await session.start()
        assert session.client is None and not session.active
        assert session.status.state == "failed" and "the worker did not come up" in (session.status.detail or "")

    asyncio.run(scenario())

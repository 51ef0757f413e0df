"""The host keeps its promises while it is busy or the store stumbles: it beats while a session
starts slowly or a large job is prepared, lets a released session be, serves an account whose
take-over hit a store error, and loses no command that came before its job."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from api.service import send_command
from infra import layout
from infra.documents import (
    AntiBanSettings,
    Connect,
    ControlJob,
    Disconnect,
    HostBeat,
    Job,
    Recipient,
    decode,
    encode,
    utcnow,
)
from infra.jobs import prepare_job
from infra.store import StoredObject, StoreUnavailable
from infra.store.local import LocalStore
from session_host import host as host_module
from session_host import sessions as sessions_module
from session_host import webhooks
from session_host.auth import CredentialVault
from session_host.leases import Lease, Leases
from session_host.storage import Storage
from session_host.whatsapp.simulated import SimulatedClient
from tests.host.harness import HostHarness, holds, until
from tests.host.test_webhooks_and_typing import _Receiver

SLOW = AntiBanSettings(randomDelayMin=1000, randomDelayMax=1000, batchSize=100, batchDelayMs=1000, typing=False)


class FlakyStore(LocalStore):
    """A local store that fails the reads of the keys in ``fail_once`` once each, and everything
    while ``down_until`` (monotonic) is ahead."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.fail_once: set[str] = set()
        self.down_until = 0.0

    def _outage(self, key: str) -> None:
        if time.monotonic() < self.down_until:
            raise StoreUnavailable(f"simulated outage at {key}")

    def get(self, key: str) -> StoredObject:
        self._outage(key)
        if key in self.fail_once:
            self.fail_once.discard(key)
            raise StoreUnavailable(f"simulated failure reading {key}")
        return super().get(key)

    def put(self, key: str, data: bytes, **options: Any) -> str:
        self._outage(key)
        return super().put(key, data, **options)

    def list(self, prefix: str) -> Any:
        self._outage(prefix)
        return super().list(prefix)


def counting_clients(h: HostHarness) -> list[str]:
    made: list[str] = []
    new_client = h.backend.new_client

    def counted(user_id: str, *args: Any) -> Any:
        made.append(user_id)
        return new_client(user_id, *args)

    h.backend.new_client = counted  # type: ignore[method-assign]
    return made


async def command(store: Any, user_id: str, what: Any) -> None:
    await asyncio.to_thread(send_command, store, user_id, what)


async def taken_by_another_host(store: Any, user_id: str) -> bool:
    return await Leases(Storage(store), "host-b").acquire(user_id)


def test_a_slow_session_start_neither_stops_the_heartbeat_nor_the_polling(
    local_store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = SimulatedClient.start

    async def slow_start(self: SimulatedClient) -> None:  # a worker that takes its time to spawn
        if self.user_id == "slow":
            await asyncio.sleep(3)
        await start(self)

    monkeypatch.setattr(SimulatedClient, "start", slow_start)

    async def scenario() -> None:
        async with HostHarness(local_store, tmp_path) as h:  # a beat every 0.5 s, taken for dead after 2 s
            await h.connect("u1", "5511977770001")
            await command(local_store, "slow", Connect(issuedAt=utcnow()))
            await until(lambda: holds(h.host.sessions.get("slow") is not None), 5, "the slow start to begin")
            began = time.monotonic()
            job_id = await h.submit("u1", [("Ana", "5511900000001")])
            await asyncio.sleep(began + 2.5 - time.monotonic())  # past the 2 s after which a silent host is dead
            assert not await taken_by_another_host(local_store, "u1")
            assert (await h.job(job_id)).totals.sent == 1  # accepted and sent while the start went on
            assert (await h.until_state("slow", "qr", timeout=5)).host == "test-host"

    asyncio.run(scenario())


def test_preparing_a_large_job_does_not_stop_the_heartbeat(
    local_store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def slow_prepare(job: Job, **options: Any) -> Job:  # templates for 100,000 contacts
        time.sleep(2.5)
        return prepare_job(job, **options)

    monkeypatch.setattr(host_module, "prepare_job", slow_prepare)
    ages: list[float] = []
    watching = threading.Event()

    def watch_the_beat() -> None:  # from a thread: a blocked event loop cannot watch itself
        while watching.is_set():
            beat = decode(local_store.get(layout.host_beat("test-host")).data, HostBeat)
            ages.append((utcnow() - beat.lastSeen).total_seconds())
            time.sleep(0.05)

    async def scenario() -> None:
        async with HostHarness(local_store, tmp_path) as h:
            await h.connect("u1", "5511977770001")
            watching.set()
            watcher = asyncio.create_task(asyncio.to_thread(watch_the_beat))
            job_id = await h.submit("u1", [("Ana", "5511900000001")])
            assert (await h.final(job_id, timeout=10)).totals.sent == 1
            watching.clear()
            await watcher
        assert max(ages) < 2.0, f"the beat was {max(ages):.1f} s old: the host looked dead"

    asyncio.run(scenario())


def test_a_session_released_to_another_host_is_not_restarted_by_its_retry_timer(
    local_store: LocalStore, tmp_path: Path
) -> None:
    async def scenario() -> None:
        h = HostHarness(local_store, tmp_path)
        made = counting_clients(h)
        async with h:
            await h.connect("u1", "5511977770001")
            h.world.temporary_ban("u1", seconds=0.8, reason="spam")
            await h.until_state("u1", "paused")  # a timer will start the session when the ban is over
            now = utcnow()
            beat = HostBeat(hostId="host-b", startedAt=now, lastSeen=now, staleAfter=1000)
            local_store.put(layout.host_beat("host-b"), encode(beat))
            lease = Lease(hostId="host-b", takenAt=now.isoformat())
            local_store.put(layout.lease("u1", 2), encode(lease), create_only=True)
            await until(lambda: holds("u1" not in h.host.sessions), 5, "the host to let u1 go")
            before = len(made)
            await asyncio.sleep(1.5)  # the ban is over: the old timer would have fired
            assert len(made) == before, "a session released to another host connected again"

    asyncio.run(scenario())


def test_two_starts_at_once_make_one_client(local_store: LocalStore, tmp_path: Path) -> None:
    async def scenario() -> None:
        h = HostHarness(local_store, tmp_path)
        made = counting_clients(h)
        async with h:
            await h.connect("u1", "5511977770001")
            session = h.host.sessions["u1"]
            await session.stop("reconnecting", "the connection failed for good")
            made.clear()
            await asyncio.gather(session._start_if_idle(), session.start())  # the retry timer and a Connect
            await h.until_state("u1", "connected")
            assert made == ["u1"]
            job_id = await h.submit("u1", [("Ana", "5511900000001")])
            assert (await h.final(job_id)).totals.sent == 1

    asyncio.run(scenario())


def test_an_account_whose_take_over_hit_a_store_error_is_served_at_the_next_heartbeat(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "store")

    async def scenario() -> None:
        async with HostHarness(store, tmp_path) as h:
            await h.connect("u1", "5511977770001")
            job_id = await h.submit("u1", [("Ana", "5511900000001"), ("Bia", "5511900000002")], antiBanSettings=SLOW)
            await until(lambda: holds(len(h.world.delivered("u1")) == 1), 10, "the first message")
        store.fail_once = {layout.session_status("u1")}
        async with HostHarness(store, tmp_path) as again:
            state = await again.final(job_id, timeout=10)
            assert state.status == "done" and state.totals.sent == 2
            assert not store.fail_once  # the failure did happen

    asyncio.run(scenario())


def test_a_finished_job_without_a_webhook_leaves_no_queue_marker_behind(
    local_store: LocalStore, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with HostHarness(local_store, tmp_path) as h:
            await h.connect("u1", "5511977770001")
            job_id = await h.submit("u1", [("Ana", "5511900000001")])
            await h.final(job_id)
        local_store.put(layout.queue_marker("u1", job_id), b"")  # killed after the last checkpoint
        async with HostHarness(local_store, tmp_path):
            await until(lambda: holds(not list(local_store.list(layout.QUEUE))), 5, "the queue marker to go")

    asyncio.run(scenario())


class SlowInboxStore(LocalStore):
    """A local store whose next inbox listing takes a second: the API writes meanwhile."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.armed = False
        self.listing = threading.Event()

    def list(self, prefix: str) -> Any:
        keys = list(super().list(prefix))
        if prefix == layout.INBOX and self.armed:
            self.armed = False
            self.listing.set()
            time.sleep(1.0)
        return iter(keys)


def test_a_cancel_read_before_its_job_was_accepted_still_cancels_it(tmp_path: Path) -> None:
    store = SlowInboxStore(tmp_path / "store")

    async def scenario() -> None:
        async with HostHarness(store, tmp_path) as h:
            await h.connect("u1", "5511977770001")
            store.armed = True
            await asyncio.to_thread(store.listing.wait, 5)  # the host lists the inbox without the job
            job_id = await h.submit("u1", [("Ana", "5511900000001"), ("Bia", "5511900000002")], antiBanSettings=SLOW)
            await command(store, "u1", ControlJob(issuedAt=utcnow(), jobId=job_id, action="cancel"))
            state = await h.final(job_id)
            assert state.status == "cancelled"
            assert not list(store.list(layout.COMMANDS))

    asyncio.run(scenario())


def test_a_command_about_a_job_that_never_leaves_the_inbox_waits_a_while_only(
    local_store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(host_module, "JOB_COMMAND_WAIT", 0.5)

    async def scenario() -> None:
        async with HostHarness(local_store, tmp_path) as h:
            await h.connect("u1", "5511977770001")
            now = utcnow()  # the job's account is served by another living host: it stays in the inbox here
            local_store.put(layout.host_beat("host-b"), encode(HostBeat(hostId="host-b", startedAt=now, lastSeen=now)))
            local_store.put(layout.lease("u2", 1), encode(Lease(hostId="host-b", takenAt=now.isoformat())))
            job = Job(userId="u2", recipients=[Recipient(number="5511900000001", name="Ana")], message="Olá")
            local_store.put(layout.inbox("stuck"), encode(job))
            await command(local_store, "u1", ControlJob(issuedAt=utcnow(), jobId="stuck", action="cancel"))
            await until(lambda: holds(not list(local_store.list(layout.COMMANDS))), 5, "the command to be dropped")
            assert local_store.exists(layout.inbox("stuck"))
        assert "job=stuck still in the inbox" in caplog.text

    asyncio.run(scenario())


def test_a_host_started_during_a_store_outage_comes_up_when_the_store_is_back(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "store")

    async def scenario() -> None:
        async with HostHarness(store, tmp_path) as h:
            await h.connect("u1", "5511977770001")
        store.down_until = time.monotonic() + 1.0
        async with HostHarness(store, tmp_path, id="host-b", work_dir=str(tmp_path / "work-b")) as again:
            await asyncio.sleep(1.2)  # the outage is over
            assert not again.task.done()
            status = await again.until_state("u1", "connected")
            assert status.host == "host-b"

    asyncio.run(scenario())


def test_a_reconnect_that_hits_a_store_error_is_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FlakyStore(tmp_path / "store")
    monkeypatch.setattr(sessions_module, "RETRY_BACKOFF", (0.5,))

    async def scenario() -> None:
        async with HostHarness(store, tmp_path) as h:
            await h.connect("u1", "5511977770001")
            store.fail_once = {layout.session_auth("u1")}  # one failed read when the retry starts
            h.world.drop("u1", down_for=0.2)
            h.world.unreachable("u1", seconds=0.4)
            await h.until_state("u1", "reconnecting")
            await until(lambda: holds(not store.fail_once), 5, "the retry to hit the store error")
            job_id = await h.submit("u1", [("Ana", "5511900000001")])
            await h.until_state("u1", "connected", timeout=10)
            assert (await h.final(job_id)).totals.sent == 1

    asyncio.run(scenario())


def test_a_cancelled_campaign_queued_behind_another_finishes_at_once(local_store: LocalStore, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with HostHarness(local_store, tmp_path) as h:
            await h.connect("u1", "5511977770001")
            first = await h.submit("u1", [(f"C{i}", f"55119000000{i:02d}") for i in range(1, 20)], antiBanSettings=SLOW)
            await until(lambda: holds(len(h.world.delivered("u1")) >= 1), 10, "the first message")
            second = await h.submit("u1", [("Ana", "5511900000091"), ("Bia", "5511900000092")], antiBanSettings=SLOW)
            await until(lambda: holds(any(r.id == second for r in h.host.senders["u1"].runs)), 5, "second queued")
            await command(local_store, "u1", ControlJob(issuedAt=utcnow(), jobId=second, action="cancel"))
            state = await h.final(second, timeout=3)  # long before the first campaign ends
            assert state.status == "cancelled" and [r.status for r in state.results] == ["skipped", "skipped"]
            assert (await h.job(first)).status == "running"

    asyncio.run(scenario())


def test_no_session_work_queued_behind_a_slow_stop_runs_after_the_host_stopped(
    local_store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stop = SimulatedClient.stop
    slow = {"on": False}

    async def slow_stop(self: SimulatedClient) -> None:  # a worker that takes its time to exit
        if slow["on"]:
            await asyncio.sleep(2)
        await stop(self)

    monkeypatch.setattr(SimulatedClient, "stop", slow_stop)

    async def scenario() -> None:
        h = HostHarness(local_store, tmp_path)
        made = counting_clients(h)
        async with h:
            await h.connect("u1", "5511977770001")
            slow["on"] = True
            for what in (Disconnect, Connect, Connect):
                await command(local_store, "u1", what(issuedAt=utcnow()))
            await until(lambda: holds(len(h.host._commands_running) == 3), 5, "three commands in turn")
            made.clear()
        await asyncio.sleep(3)  # the host has said it stopped: nothing of it may start now
        assert not made and not h.host.sessions["u1"].active

    asyncio.run(scenario())


def test_a_webhook_is_not_posted_twice_when_the_account_is_dropped_and_served_again(
    local_store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhooks, "RETRY_DELAYS", (0.0, 2.0, 2.0, 2.0))
    _Receiver.received.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    _Receiver.failures_left = 99

    async def first_life() -> None:  # the job ends, its webhook fails and is still owed at the stop
        async with HostHarness(local_store, tmp_path) as h:
            await h.connect("u1", "5511977770001")
            await h.final(await h.submit("u1", [("Ana", "5511900000001")], webhookUrl=url))
            await until(lambda: holds(len(_Receiver.received) == 1), 5, "the first failed attempt")

    async def load_once_failing(self: CredentialVault, user_id: str) -> Any:
        if not failed:
            failed.append(user_id)
            await asyncio.sleep(0.5)  # a slow store, then a failure: the job's webhook was resumed meanwhile
            raise StoreUnavailable("simulated outage while restoring")
        return await load(self, user_id)

    async def second_life() -> None:  # the restore fails, the account is dropped, then served again
        async with HostHarness(local_store, tmp_path, id="host-2") as h:
            await h.until_state("u1", "connected", timeout=10)
            await asyncio.sleep(5)

    try:
        asyncio.run(first_life())
        _Receiver.failures_left = 0
        load, failed = CredentialVault.load, []
        monkeypatch.setattr(CredentialVault, "load", load_once_failing)
        asyncio.run(second_life())
    finally:
        server.shutdown()
    assert failed and len(_Receiver.received) - 1 == 1  # delivered once after the restart

"""One worker process per session: the wire format, a client in a real worker process, and the host
on the real S3 server surviving a worker killed with SIGKILL or frozen with SIGSTOP."""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from infra.store.s3 import S3Store
from session_host.whatsapp import (
    AuthChanged,
    Connected,
    Disconnected,
    Event,
    LoggedOut,
    NotConnected,
    OutcomeUnknown,
    PairCode,
    QrCode,
    QrExpired,
    RateLimited,
    SendReceipt,
    SendRejected,
    StreamReplaced,
    TemporaryBan,
    WhatsAppError,
    open_backend,
)
from session_host.whatsapp.simulated import SimulatedBackend, SimulatedWorld
from session_host.whatsapp.worker import (
    Call,
    Emitted,
    ExportAuth,
    Failed,
    Logout,
    Lookup,
    PairPhone,
    Ping,
    ProtocolError,
    Ready,
    Reply,
    SendImage,
    SendText,
    Start,
    Stop,
    Timeouts,
    Typing,
    WorkerBackend,
    WorkerClient,
    decode_call,
    decode_from_worker,
    encode_frame,
    error_from_wire,
    error_to_wire,
    read_frame,
)
from tests.host.harness import HostHarness, until

ROOT = Path(__file__).resolve().parents[2]


# -- the wire format -------------------------------------------------------------------------------


def read_frames(data: bytes) -> list[bytes]:
    async def read() -> list[bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        frames = []
        while (body := await read_frame(reader)) is not None:
            frames.append(body)
        return frames

    return asyncio.run(read())


@pytest.mark.parametrize(
    "error",
    [
        NotConnected("not connected to WhatsApp"),
        OutcomeUnknown("no confirmation from WhatsApp: message send timed out"),
        RateLimited(42.0, reason="WhatsApp rate limit (rate-overlimit)"),
        SendRejected("5511900000099@s.whatsapp.net has no WhatsApp account"),
        WhatsAppError("pairing by phone code failed: bad number"),
        ValueError("not a phone number: 'abc'"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_each_error_crosses_the_wire_as_the_same_exception(error: Exception) -> None:
    (body,) = read_frames(encode_frame(Failed(id=7, error=error_to_wire(error))))
    message = decode_from_worker(body)
    assert isinstance(message, Failed) and message.id == 7
    back = error_from_wire(message.error)
    assert type(back) is type(error) and str(back) == str(error)
    assert getattr(back, "retry_after", None) == getattr(error, "retry_after", None)
    assert getattr(back, "reason", None) == getattr(error, "reason", None)


def test_an_unexpected_exception_becomes_a_generic_whatsapp_error() -> None:
    (body,) = read_frames(encode_frame(Failed(id=1, error=error_to_wire(RuntimeError("Go said no")))))
    message = decode_from_worker(body)
    assert isinstance(message, Failed)
    back = error_from_wire(message.error)
    assert type(back) is WhatsAppError and str(back) == "RuntimeError: Go said no"


EVENTS: list[Event] = [
    QrCode(code="2@abc,def", timeout=60.0, index=1, total=6),
    QrExpired(),
    PairCode(code="ABCD-EFGH"),
    Connected(jid="5511977770000@s.whatsapp.net"),
    Disconnected(reason="connection lost; reconnecting"),
    Disconnected(reason="session worker exited with code -9 (SIGKILL)", final=True),
    LoggedOut(reason="the device was removed on the phone"),
    StreamReplaced(),
    TemporaryBan(reason="blocked by too many users", expires_in=3600.0),
    AuthChanged(),
]


def test_events_cross_the_wire_unchanged() -> None:
    frames = read_frames(b"".join(encode_frame(Emitted(event=event)) for event in EVENTS))
    assert [decode_from_worker(body) for body in frames] == [Emitted(event=event) for event in EVENTS]


def test_requests_and_replies_cross_the_wire_unchanged() -> None:
    requests = [
        Start(),
        Stop(),
        Logout(),
        PairPhone(phone="+55 11 97777-0000"),
        Lookup(numbers=["5511900000001", "551100000002"]),
        SendText(jid="5511900000001@s.whatsapp.net", text="Olá Ana, tudo bem?", message_id="3EB0A1"),
        SendImage(jid="x@s.whatsapp.net", image=b"\x89PNG\r\n\x00", mimetype="image/png", caption="", message_id="m"),
        Typing(jid="x@s.whatsapp.net", seconds=1.5),
        ExportAuth(),
        Ping(),
    ]
    calls = [Call(id=index, request=request) for index, request in enumerate(requests, start=1)]
    assert [decode_call(body) for body in read_frames(b"".join(map(encode_frame, calls)))] == calls
    replies = [Ready(), Reply(id=1, value=SendReceipt(message_id="m", timestamp=1.5)), Reply(id=2, value=b"\x00db")]
    decoded = [decode_from_worker(body) for body in read_frames(b"".join(map(encode_frame, replies)))]
    assert decoded[0] == Ready() and decoded[2] == Reply(id=2, value=b"\x00db")
    assert decoded[1] == Reply(id=1, value={"message_id": "m", "timestamp": 1.5})  # typed by the caller


def test_a_cut_or_oversized_frame_is_a_protocol_error_and_a_clean_end_is_none() -> None:
    frame = encode_frame(Call(id=1, request=Ping()))
    assert read_frames(b"") == []
    with pytest.raises(ProtocolError):
        read_frames(frame[:2])
    with pytest.raises(ProtocolError):
        read_frames(frame[:-1])
    with pytest.raises(ProtocolError):
        read_frames(b"\xff\xff\xff\xff" + b"x" * 10)


def test_open_backend_isolates_by_default_and_keeps_the_inner_backends_name(tmp_path: Path) -> None:
    isolated = open_backend("simulated", str(tmp_path))
    assert isinstance(isolated, WorkerBackend)
    assert (isolated.name, isolated.honours_message_ids) == ("simulated", True)
    real = open_backend("neonize", None)
    assert isinstance(real, WorkerBackend) and (real.name, real.honours_message_ids) == ("neonize", False)
    assert isinstance(open_backend("simulated", str(tmp_path), isolated=False), SimulatedBackend)
    with pytest.raises(ValueError):
        WorkerBackend("simulated", None)


# -- one client in a real worker process -----------------------------------------------------------


class Events:
    def __init__(self) -> None:
        self.seen: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.seen.append(event)

    def finals(self) -> list[Disconnected]:
        return [event for event in self.seen if isinstance(event, Disconnected) and event.final]


async def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)
    return value


def reaped(pid: int) -> bool:
    """Gone for good: not running, and not a zombie either (a zombie keeps its /proc entry)."""
    return not Path(f"/proc/{pid}").exists()


def worker_children() -> list[str]:
    """This process's children that are workers, or zombies of anything."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid() and (fields[0] == "Z" or "session_host.whatsapp.worker" in cmdline):
            found.append(f"{stat.parent.name} {fields[0]} {cmdline}")
    return found


async def connected_client(
    tmp_path: Path, events: Events, timeouts: Timeouts | None = None
) -> tuple[WorkerClient, SimulatedWorld]:
    world = SimulatedWorld(tmp_path / "wa")
    backend = WorkerBackend("simulated", str(world.root), timeouts=timeouts)
    client = backend.new_client("u1", str(tmp_path / "work" / "u1" / "auth.db"), events)
    await client.start()
    await wait_until(lambda: any(isinstance(e, QrCode) for e in events.seen), 10, "a QR code")
    world.scan("u1", phone="5511977770000")
    await wait_until(lambda: any(isinstance(e, Connected) for e in events.seen), 10, "the connection")
    return client, world


def test_a_client_in_a_worker_process_sends_and_maps_the_inner_clients_errors(tmp_path: Path) -> None:
    async def scenario() -> None:
        events = Events()
        client, world = await connected_client(tmp_path, events)
        pid = client.pid
        assert pid is not None and pid != os.getpid()
        world.set_numbers({"5511900000099": None})
        found = await client.lookup(["5511900000001", "5511900000099"])
        assert found == {"5511900000001": "5511900000001@s.whatsapp.net", "5511900000099": None}
        receipt = await client.send_text("5511900000001@s.whatsapp.net", "Olá", "msg-1")
        assert isinstance(receipt, SendReceipt) and receipt.message_id == "msg-1"
        assert [(m.to, m.text) for m in world.delivered("u1")] == [("5511900000001@s.whatsapp.net", "Olá")]
        with pytest.raises(SendRejected, match="has no WhatsApp account"):
            await client.send_image("5511900000099@s.whatsapp.net", b"\x89PNG", "image/png", "", "msg-2")
        world.rate_limit("u1", seconds=30)
        with pytest.raises(RateLimited) as limited:
            await client.send_text("5511900000001@s.whatsapp.net", "Olá", "msg-3")
        assert 25 < limited.value.retry_after <= 30
        assert await client.export_auth() == (tmp_path / "work" / "u1" / "auth.db").read_bytes()
        await client.stop()
        assert reaped(pid) and client.pid is None
        assert events.finals() == []  # a stop is not a crash
        with pytest.raises(NotConnected):
            await client.lookup(["5511900000001"])
        assert await client.export_auth() is None

    asyncio.run(scenario())
    assert worker_children() == []


def test_a_killed_worker_fails_what_waits_and_is_reported_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        events = Events()
        client, _world = await connected_client(tmp_path, events)
        pid = client.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # frozen, so that both calls are surely still waiting
        send = asyncio.create_task(client.send_text("5511900000001@s.whatsapp.net", "Olá", "msg-1"))
        lookup = asyncio.create_task(client.lookup(["5511900000001"]))
        await asyncio.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(OutcomeUnknown, match="may have left"):
            await send  # the message may have left before the worker died
        with pytest.raises(NotConnected):
            await lookup
        await wait_until(events.finals, 5, "the final disconnect")
        await asyncio.sleep(0.5)
        assert events.finals() == [Disconnected(reason="session worker exited with code -9 (SIGKILL)", final=True)]
        assert reaped(pid)
        await client.stop()
        assert len(events.finals()) == 1

    asyncio.run(scenario())
    assert worker_children() == []


def test_a_frozen_idle_worker_is_noticed_by_the_ping_and_killed(tmp_path: Path) -> None:
    async def scenario() -> None:
        events = Events()
        timeouts = Timeouts(control=0.5, ping_interval=0.3)
        client, _world = await connected_client(tmp_path, events, timeouts)
        pid = client.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        frozen = time.monotonic()
        (final,) = await wait_until(events.finals, 5, "the final disconnect")
        assert final.reason == "session worker hung: no answer to ping within 0.5 s"
        assert time.monotonic() - frozen < 2.0
        await wait_until(lambda: reaped(pid), 5, "the frozen worker to be killed and reaped")
        await client.stop()

    asyncio.run(scenario())
    assert worker_children() == []


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ([sys.executable, "-c", "import time; time.sleep(60)"], "session worker hung: not ready within 1 s"),
        ([sys.executable, "-c", "raise SystemExit(3)"], "session worker exited with code 3"),
        (["/nonexistent/python"], "cannot start the session worker: [Errno 2] No such file or directory"),
    ],
    ids=["never-ready", "exits-at-once", "cannot-run"],
)
def test_a_worker_that_does_not_come_up_is_reported_not_raised(command: list[str], reason: str) -> None:
    """The host's restore loop starts sessions one after another: start() must not raise for this."""

    async def scenario() -> None:
        events = Events()
        client = WorkerClient(command, "u1", events, Timeouts(spawn=1.0))
        await client.start()
        (final,) = events.finals()
        assert final.reason.startswith(reason), final.reason
        assert client.pid is None
        await client.stop()

    asyncio.run(scenario())
    assert worker_children() == []


PANICKING_WORKER = """
import os, sys
from session_host.whatsapp.neonize_client import NeonizeClient
from session_host.whatsapp.worker import run_worker

class Panicking(NeonizeClient):
    async def lookup(self, numbers):
        self.neonize_client.get_me()  # unguarded, without a session: a Go panic aborts the process
        return {}

os._exit(run_worker(lambda emit: Panicking("u1", sys.argv[1], emit), "u1"))
"""


def test_a_go_panic_in_a_neonize_worker_ends_that_session_only(tmp_path: Path) -> None:
    async def scenario() -> None:
        healthy, _world = await connected_client(tmp_path, Events())
        events = Events()
        (tmp_path / "nz").mkdir()
        command = [sys.executable, "-c", PANICKING_WORKER, str(tmp_path / "nz" / "auth.db")]
        panicking = WorkerClient(command, "u1", events)
        assert await panicking.spawn()  # a real neonize client, built in its own process
        pid = panicking.pid
        assert pid is not None
        with pytest.raises(NotConnected):
            await panicking.lookup(["5511900000001"])
        await wait_until(events.finals, 5, "the final disconnect")
        assert events.finals() == [Disconnected(reason="session worker exited with code -6 (SIGABRT)", final=True)]
        assert reaped(pid)
        receipt = await healthy.send_text("5511900000001@s.whatsapp.net", "still here", "after-the-panic")
        assert receipt.message_id == "after-the-panic"
        await panicking.stop()
        await healthy.stop()

    asyncio.run(scenario())
    assert worker_children() == []


def test_a_worker_stops_its_client_and_exits_when_its_stdin_closes(tmp_path: Path) -> None:
    """What happens to the workers of a host that dies: their stdin closes."""
    command = WorkerBackend("simulated", str(tmp_path / "wa")).command("u1", str(tmp_path / "u1" / "auth.db"))
    worker = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert worker.stdin is not None and worker.stdout is not None and worker.stderr is not None
    try:
        assert decode_from_worker(read_frame_sync(worker.stdout)) == Ready()
        for group_signal in (signal.SIGINT, signal.SIGTERM):  # a terminal's or a service manager's, for the host
            worker.send_signal(group_signal)
        worker.stdin.write(encode_frame(Call(id=1, request=Start())))
        worker.stdin.flush()
        answers = [decode_from_worker(read_frame_sync(worker.stdout)) for _ in range(2)]
        assert Reply(id=1, value=None) in answers  # started: it shows a QR code now
        assert any(isinstance(answer, Emitted) and isinstance(answer.event, QrCode) for answer in answers)
        worker.stdin.close()
        assert worker.wait(10) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    log = worker.stderr.read().decode()
    assert "user=u1 session worker pid=" in log and "done" in log
    assert "2@sim" not in log  # no QR code in the log


def read_frame_sync(stream: Any) -> bytes:
    (size,) = struct.unpack(">I", stream.read(4))
    return stream.read(size)


# -- the host ----------------------------------------------------------------------------------------

USERS = {"u1": "5511977770001", "u2": "5511977770002", "u3": "5511977770003"}
CONTACTS = 12


def contacts(user_id: str) -> list[tuple[str, str]]:
    return [(f"{user_id}-C{i}", f"551190000{user_id[-1]}{i:03d}") for i in range(CONTACTS)]


def isolated_harness(store: S3Store, tmp_path: Path, timeouts: Timeouts | None = None) -> HostHarness:
    h = HostHarness(store, tmp_path)
    h.host.backend = WorkerBackend("simulated", str(h.world.root), timeouts=timeouts)
    return h


def pid_of(h: HostHarness, user_id: str) -> int | None:
    client = h.host.sessions[user_id].client
    return client.pid if isinstance(client, WorkerClient) else None


async def each_delivered_once(h: HostHarness, user_id: str, job_id: str) -> None:
    state = await h.final(job_id, timeout=45)
    assert (state.status, state.totals.sent, state.totals.pending) == ("done", CONTACTS, 0)
    delivered = h.world.delivered(user_id)
    assert sorted(m.to for m in delivered) == sorted(r.jid for r in state.results if r.jid)
    assert collections.Counter(m.to for m in delivered).most_common(1)[0][1] == 1
    assert sorted(m.text for m in delivered) == sorted(f"Olá {name}, tudo bem?" for name, _ in contacts(user_id))


async def states_until_back(h: HostHarness, user_id: str, old_pid: int) -> list[tuple[str, str | None]]:
    """The session's states from now until it is connected again through a new worker."""
    seen: list[tuple[str, str | None]] = []
    while True:
        status = await h.status(user_id)
        assert status is not None
        if not seen or seen[-1] != (status.state, status.detail):
            seen.append((status.state, status.detail))
        pid = pid_of(h, user_id)
        if status.state == "connected" and pid not in (None, old_pid):
            return seen
        await asyncio.sleep(0.05)


def test_kill_9_of_one_accounts_worker_mid_campaign_leaves_the_others_alone(s3_store: S3Store, tmp_path: Path) -> None:
    pids: set[int] = set()

    async def scenario() -> None:
        async with isolated_harness(s3_store, tmp_path) as h:
            for user_id, phone in USERS.items():
                await h.connect(user_id, phone)
            before = {user_id: pid_of(h, user_id) for user_id in USERS}
            assert None not in before.values() and len(set(before.values())) == 3 and os.getpid() not in before
            pids.update(pid for pid in before.values() if pid)
            jobs = {user_id: await h.submit(user_id, contacts(user_id)) for user_id in USERS}
            await until(lambda: _async(len(h.world.delivered("u2")) >= 3), 15, "three of u2's messages")

            victim = before["u2"]
            assert victim is not None
            os.kill(victim, signal.SIGKILL)
            states = await asyncio.wait_for(states_until_back(h, "u2", victim), 30)
            assert any(
                state == "reconnecting" and "session worker exited with code -9 (SIGKILL)" in (detail or "")
                for state, detail in states
            ), states
            assert "qr" not in {state for state, _ in states}  # restored from the stored credentials
            assert reaped(victim)
            pids.add(pid_of(h, "u2") or 0)

            for user_id, job_id in jobs.items():
                await each_delivered_once(h, user_id, job_id)
            assert {user_id: pid_of(h, user_id) for user_id in ("u1", "u3")} == {"u1": before["u1"], "u3": before["u3"]}
            assert not h.task.done()  # the host itself never noticed more than one session's trouble

    asyncio.run(scenario())
    assert all(reaped(pid) for pid in pids)
    assert worker_children() == []


def test_a_frozen_worker_times_out_a_call_and_the_session_recovers(s3_store: S3Store, tmp_path: Path) -> None:
    pids: set[int] = set()

    async def scenario() -> None:
        timeouts = Timeouts(call=2.0, control=2.0, ping_interval=3600)  # the call, not the ping, must notice
        async with isolated_harness(s3_store, tmp_path, timeouts) as h:
            await h.connect("u1", USERS["u1"])
            job_id = await h.submit("u1", contacts("u1"))
            await until(lambda: _async(len(h.world.delivered("u1")) >= 2), 15, "two messages")
            frozen = pid_of(h, "u1")
            assert frozen is not None
            pids.add(frozen)
            os.kill(frozen, signal.SIGSTOP)
            started = time.monotonic()
            status = await h.until_state("u1", "reconnecting", timeout=10)
            hung = re.search(r"session worker hung: no answer to \w+ within ([\d.]+) s", status.detail or "")
            assert hung is not None, status.detail
            assert time.monotonic() - started < float(hung[1]) + 1.5  # the call's timeout, a pause, polling
            await until(lambda: _async(reaped(frozen)), 5, "the frozen worker to be killed and reaped")
            await asyncio.wait_for(states_until_back(h, "u1", frozen), 30)
            pids.add(pid_of(h, "u1") or 0)
            await each_delivered_once(h, "u1", job_id)

    asyncio.run(scenario())
    assert all(reaped(pid) for pid in pids)
    assert worker_children() == []


async def _async(value: object) -> object:
    return value

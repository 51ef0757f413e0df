"""One worker process per session: the wire format, a client in a real worker process (forked from the
zygote, or a fresh interpreter), the zygote itself, and the host on the real S3 server surviving a
worker killed with SIGKILL or frozen with SIGSTOP."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import json
import logging
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
    zygote,
)
from session_host.whatsapp.neonize_client import NeonizeClient
from session_host.whatsapp.simulated import SimulatedBackend, SimulatedWorld
from session_host.whatsapp.worker import (
    MAIN_ENTRY,
    PROCESS_NAME,
    Call,
    Emitted,
    ExportAuth,
    Failed,
    Fork,
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
    run_worker,
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


def process_state(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None once it is reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def parent_pid(pid: int) -> int | None:
    state = process_state(pid)
    return None if state is None else state[1]


def ended(pid: int) -> bool:
    """Not running any more: reaped, or a zombie that init has not reaped (this machine's init does not)."""
    state = process_state(pid)
    return state is None or state[0] in ("Z", "X")


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def worker_children() -> list[str]:
    """This process's descendants (forked workers are the fork server's children) that are workers, or
    zombies of anything."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        if (state := process_state(int(stat.parent.name))) is not None:
            children[state[1]].append(int(stat.parent.name))
    descendants, waiting, found = [], list(children[os.getpid()]), []
    while waiting:
        pid = waiting.pop()
        descendants.append(pid)
        waiting.extend(children.get(pid, []))
    for pid in sorted(descendants):
        state = process_state(pid)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            name = comm(pid)
        except OSError:
            continue
        if state and (state[0] == "Z" or name == PROCESS_NAME or "session_host.whatsapp.worker" in cmdline):
            found.append(f"{pid} {state[0]} {name} {cmdline[:200]}")
    return found


async def connected_client(
    tmp_path: Path, events: Events, timeouts: Timeouts | None = None, *, zygote: bool = True
) -> tuple[WorkerClient, SimulatedWorld]:
    world = SimulatedWorld(tmp_path / "wa")
    backend = WorkerBackend("simulated", str(world.root), timeouts=timeouts, zygote=zygote)
    client = backend.new_client("u1", str(tmp_path / "work" / "u1" / "auth.db"), events)
    await client.start()
    await wait_until(lambda: any(isinstance(e, QrCode) for e in events.seen), 10, "a QR code")
    world.scan("u1", phone="5511977770000")
    await wait_until(lambda: any(isinstance(e, Connected) for e in events.seen), 10, "the connection")
    return client, world


MODES = pytest.mark.parametrize("forked", [True, False], ids=["forked", "fresh"])


@MODES
def test_a_client_in_a_worker_process_sends_and_maps_the_inner_clients_errors(tmp_path: Path, forked: bool) -> None:
    async def scenario() -> None:
        events = Events()
        client, world = await connected_client(tmp_path, events, zygote=forked)
        pid = client.pid
        assert pid is not None and pid != os.getpid()
        assert parent_pid(pid) == (zygote.fork_server_pid() if forked else os.getpid())
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


@MODES
def test_a_killed_worker_fails_what_waits_and_is_reported_once(tmp_path: Path, forked: bool) -> None:
    async def scenario() -> None:
        events = Events()
        client, _world = await connected_client(tmp_path, events, zygote=forked)
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


def never_ready(argv: list[str], protocol: int) -> int:
    time.sleep(60)
    return 0


def exits_at_once(argv: list[str], protocol: int) -> int:
    return 3


def forked(entry: str) -> Fork:
    return Fork(entry, (), ("/nonexistent/python",))


@pytest.mark.parametrize(
    ("launch", "reason"),
    [
        ([sys.executable, "-c", "import time; time.sleep(60)"], "session worker hung: not ready within 1 s"),
        ([sys.executable, "-c", "raise SystemExit(3)"], "session worker exited with code 3"),
        (["/nonexistent/python"], "cannot start the session worker: [Errno 2] No such file or directory"),
        (forked("tests.host.test_worker:never_ready"), "session worker hung: not ready within 1 s"),
        (forked("tests.host.test_worker:exits_at_once"), "session worker exited with code 3"),
        (forked("tests.host.no_such_module:main"), "session worker exited with code 3"),
    ],
    ids=["never-ready", "exits-at-once", "cannot-run", "forked-never-ready", "forked-exits", "forked-cannot-import"],
)
def test_a_worker_that_does_not_come_up_is_reported_not_raised(launch: list[str] | Fork, reason: str) -> None:
    """The host's restore loop starts sessions one after another: start() must not raise for this."""

    async def scenario() -> None:
        events = Events()
        client = WorkerClient(launch, "u1", events, Timeouts(spawn=1.0))
        await client.start()
        (final,) = events.finals()
        assert final.reason.startswith(reason), final.reason
        assert client.pid is None
        await client.stop()

    asyncio.run(scenario())
    assert worker_children() == []


class PanickingClient(NeonizeClient):
    async def lookup(self, numbers: Any) -> dict[str, str | None]:
        self.neonize_client.get_me()  # unguarded, without a session: a Go panic aborts the process
        return {}


def panicking_worker(argv: list[str], protocol: int | None = None) -> int:
    """A worker with a real neonize client that panics on lookup: forked, or run by PANICKING_WORKER."""
    return run_worker(lambda emit: PanickingClient("u1", argv[0], emit), "u1", protocol)


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


@MODES
def test_a_go_panic_in_a_neonize_worker_ends_that_session_only(tmp_path: Path, forked: bool) -> None:
    async def scenario() -> None:
        healthy, _world = await connected_client(tmp_path, Events())
        events = Events()
        (tmp_path / "nz").mkdir()
        auth = str(tmp_path / "nz" / "auth.db")
        command = [sys.executable, "-c", PANICKING_WORKER, auth]
        launch = Fork("tests.host.test_worker:panicking_worker", (auth,), ()) if forked else command
        panicking = WorkerClient(launch, "u1", events)
        assert await panicking.spawn()  # a real neonize client, built in its own process
        pid = panicking.pid
        assert pid is not None
        assert parent_pid(pid) == (zygote.fork_server_pid() if forked else os.getpid())
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


# -- the zygote --------------------------------------------------------------------------------------


def channels(pid: int) -> set[str]:
    """The pipes and sockets a process holds (their inodes, which both ends of a pipe share)."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if (target := os.readlink(fd)).startswith(("pipe:", "socket:")):
                found.add(target)
    return found


def test_workers_are_forked_from_a_zygote_that_never_loads_neonize(tmp_path: Path) -> None:
    async def scenario() -> None:
        client = WorkerBackend("neonize").new_client("u1", str(tmp_path / "u1" / "auth.db"), Events())
        assert await client.spawn()  # neonize imported and its client built, in the worker
        pid, server = client.pid, zygote.fork_server_pid()
        assert pid is not None and server is not None
        assert parent_pid(pid) == server and parent_pid(server) == os.getpid()
        assert (comm(pid), comm(server)) == (PROCESS_NAME, zygote.SERVER_NAME)
        server_maps, worker_maps = Path(f"/proc/{server}/maps").read_text(), Path(f"/proc/{pid}/maps").read_text()
        assert "/neonize/neonize-" in worker_maps  # the Go library, loaded in the worker
        assert "/neonize/" not in server_maps  # never in the zygote: a Go runtime does not survive fork
        assert "/PIL/_imaging" in server_maps and "/PIL/_imaging" in worker_maps  # preloaded, inherited
        assert len(list(Path(f"/proc/{server}/task").iterdir())) == 1  # no threads when it forks
        await client.stop()
        assert reaped(pid)

    asyncio.run(scenario())
    assert worker_children() == []


PRELOAD_COVERAGE = """
import importlib, json, os, sys
import multiprocessing.forkserver  # the fork server's own imports
from session_host.whatsapp.zygote import PRELOAD
for name in PRELOAD:
    importlib.import_module(name)
assert not [name for name in sys.modules if name.partition(".")[0] == "neonize"]
before = set(sys.modules)
from session_host.whatsapp.neonize_client import load_neonize
load_neonize()
home = os.path.dirname(sys.modules["neonize"].__file__)
def neonizes(name):
    module = sys.modules[name]
    where = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", None) or []), "")
    return name.partition(".")[0] == "neonize" or where.startswith(home)
print(json.dumps(sorted(name for name in set(sys.modules) - before if not neonizes(name))))
"""


def test_the_zygote_preloads_all_that_neonize_imports_but_neonize_itself() -> None:
    """A newer neonize that imports something more would cost each worker that module's memory."""
    found = subprocess.run(
        [sys.executable, "-c", PRELOAD_COVERAGE], capture_output=True, text=True, cwd=ROOT, check=True, timeout=60
    )
    assert json.loads(found.stdout) == []


def test_a_forked_worker_holds_only_its_socket_and_stderr_and_exits_when_its_host_goes(tmp_path: Path) -> None:
    """What happens to the forked workers of a host that dies: their socket ends."""
    arguments = WorkerBackend("simulated", str(tmp_path / "wa")).arguments("u1", str(tmp_path / "u1" / "auth.db"))
    log_r, log_w = os.pipe()
    try:
        worker = zygote.fork_worker(MAIN_ENTRY, arguments, name="test", timeout=30, stderr=log_w)
    finally:
        os.close(log_w)
    stream = worker.socket.makefile("rwb", buffering=0)
    try:
        assert decode_from_worker(read_frame_sync(stream)) == Ready()
        assert parent_pid(worker.pid) == zygote.fork_server_pid()
        server = zygote.fork_server_pid()
        assert server is not None
        log_pipe = f"pipe:[{os.fstat(log_r).st_ino}]"
        assert channels(worker.pid) & (channels(os.getpid()) | channels(server)) == {log_pipe}
        for group_signal in (signal.SIGINT, signal.SIGTERM):  # a terminal's or a service manager's, for the host
            os.kill(worker.pid, group_signal)
        stream.write(encode_frame(Call(id=1, request=Start())))
        answers = [decode_from_worker(read_frame_sync(stream)) for _ in range(2)]
        assert Reply(id=1, value=None) in answers  # started: it shows a QR code now
        assert any(isinstance(answer, Emitted) and isinstance(answer.event, QrCode) for answer in answers)
    finally:
        stream.close()
        worker.socket.close()
    assert zygote._read_number(worker.status, time.monotonic() + 10) == 0  # the fork server reaped it
    worker.discard()
    with os.fdopen(log_r, "rb") as log_file:
        log = log_file.read().decode()
    assert "user=u1 session worker pid=" in log and "done" in log
    assert "2@sim" not in log  # no QR code in the log
    assert reaped(worker.pid)


HOST_THAT_DIES = """
import asyncio, os, sys
from session_host.whatsapp import zygote
from session_host.whatsapp.worker import WorkerBackend

async def main():
    client = WorkerBackend("simulated", sys.argv[1]).new_client("u1", sys.argv[2], lambda event: None)
    assert await client.spawn()
    await client.start()
    print(client.pid, *zygote.helper_pids(), flush=True)
    os.kill(os.getpid(), 9)  # no stop(), no cleanup

asyncio.run(main())
"""


def test_when_the_host_dies_its_forked_workers_and_the_fork_server_exit(tmp_path: Path) -> None:
    command = [sys.executable, "-c", HOST_THAT_DIES, str(tmp_path / "wa"), str(tmp_path / "u1" / "auth.db")]
    # run() returns once every process holding the host's stdout and stderr has ended: the worker,
    # the fork server and the resource tracker too
    host = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert host.returncode == -signal.SIGKILL, host.stderr
    worker, *helpers = map(int, host.stdout.split())
    assert len(helpers) == 2
    deadline = time.monotonic() + 5  # their descriptors are closed a moment before they end
    while not all(map(ended, (worker, *helpers))) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert all(map(ended, (worker, *helpers)))
    assert f"user=u1 session worker pid={worker} done" in host.stderr, host.stderr
    assert "Traceback" not in host.stderr


def set_child_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(36, int(on), 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER


def test_a_dead_fork_server_is_replaced_and_the_sessions_it_started_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        events = Events()
        client, world = await connected_client(tmp_path, events)
        pid, old_server = client.pid, zygote.fork_server_pid()
        assert pid is not None and old_server is not None and parent_pid(pid) == old_server
        os.kill(old_server, signal.SIGKILL)
        await wait_until(lambda: ended(old_server), 5, "the fork server's end")
        await wait_until(lambda: parent_pid(pid) == os.getpid(), 5, "the orphaned worker to come to this process")
        receipt = await client.send_text("5511900000001@s.whatsapp.net", "still here", "after-the-fork-server")
        assert receipt.message_id == "after-the-fork-server"

        other = WorkerBackend("simulated", str(world.root)).new_client("u2", str(tmp_path / "u2" / "auth.db"), Events())
        assert await other.spawn()
        new_server = zygote.fork_server_pid()
        assert new_server not in (None, old_server) and parent_pid(other.pid or 0) == new_server
        assert reaped(old_server)  # by multiprocessing, before it started the new one
        assert f"the fork server pid={old_server} is gone; started a new one, pid={new_server}" in caplog.text
        await client.stop()
        await other.stop()
        assert reaped(pid)  # by the client: this process became its parent
        assert events.finals() == []
        assert f"user=u1 session worker pid={pid} ended: session worker exited with code 0" in caplog.text

    set_child_subreaper(True)  # as the host is when it is PID 1 of a container; this machine's init reaps nothing
    try:
        asyncio.run(scenario())
    finally:
        set_child_subreaper(False)
    assert worker_children() == []


def test_without_a_working_fork_server_workers_start_as_fresh_interpreters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(zygote, "_unusable", None)  # restored afterwards: the next tests fork again

    def refuse(fds: list[int]) -> tuple[int, int]:
        raise ConnectionRefusedError("no fork server here")

    monkeypatch.setattr(zygote.forkserver, "connect_to_new_process", refuse)

    async def scenario() -> None:
        client, world = await connected_client(tmp_path, Events())
        other = WorkerBackend("simulated", str(world.root)).new_client("u2", str(tmp_path / "u2" / "auth.db"), Events())
        assert await other.spawn()
        assert parent_pid(client.pid or 0) == os.getpid() and parent_pid(other.pid or 0) == os.getpid()
        await client.stop()
        await other.stop()

    asyncio.run(scenario())
    assert worker_children() == []
    assert "the fork server did not start a session worker (ConnectionRefusedError" in caplog.text
    assert caplog.text.count("cannot use the fork server") == 1  # said once, not for each worker


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


def test_workers_get_the_hosts_environment_without_its_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from session_host.whatsapp import worker, zygote

    for name in zygote.SECRET_VARIABLES:
        monkeypatch.setenv(name, f"secret-{name}")
    monkeypatch.setenv("ZAPGATE_LOG_LEVEL", "DEBUG")
    for env in (zygote.environment_without_secrets(), worker._worker_env()):  # forked, and fresh interpreters
        assert not any(value.startswith("secret-") for value in env.values())
        assert env["ZAPGATE_LOG_LEVEL"] == "DEBUG"

"""One worker process per session: each account's WhatsApp client runs in an OS process of its own.

neonize 0.5.2 (Go inside Python) aborts the whole process with a Go panic on some calls, and
concurrent connects in one process crashed it now and then. ``WorkerBackend`` wraps another backend
by name (``neonize`` or ``simulated``) and gives the host ``WorkerClient``\\ s: each one starts
``python -m session_host.whatsapp.worker`` (a fresh interpreter, never a fork: a Go runtime does not
survive fork), where the real client lives, and forwards every call and event over the child's
stdin and stdout. A crash, a Go panic, ``kill -9`` or a hang then ends one session only:

* every request that is waiting fails with ``NotConnected``, or with ``OutcomeUnknown`` for a send
  that was in flight (the message may have left);
* the client emits ``Disconnected(reason="session worker exited with code N" | "... hung ...",
  final=True)`` once, and the host's ``Session`` starts again with its backoff: a new client, a new
  worker, the credentials restored from the store.

A call that gets no answer in time (``Timeouts``) gets the worker killed and is treated as above; an
idle worker is pinged every ``Timeouts.ping_interval`` seconds, so a frozen one is noticed too.
``stop()`` asks the worker to stop its client, closes its stdin, waits ``Timeouts.exit`` seconds,
then kills it; the process is always waited for (no zombies). A worker whose stdin closes (the host
stopped or died) stops its client and exits by itself; it ignores SIGINT and SIGTERM, which a
terminal or a service manager sends to the whole process group, so that the host can still save
the credentials through it while shutting down.

Wire format: length-prefixed msgpack frames (a 4-byte big-endian length, then one msgspec-encoded
value; no pickle), over the child's stdin (host to worker) and stdout (worker to host)::

    host -> worker   Call(id, request)    request: Start | Stop | Logout | PairPhone | Lookup | SendText
                                                   | SendImage | Typing | ExportAuth | Ping
    worker -> host   Ready()              the inner client is built; requests may come
                     Reply(id, value)     the call's result (None, str, dict, SendReceipt, bytes)
                     Failed(id, error)    WireError(kind, message, retry_after): the boundary's exceptions
                     Emitted(event)       one of the boundary's ``Event`` Structs, unchanged

The worker moves the protocol to private descriptors at start and points its fd 0 at /dev/null and
fd 1 at stderr, so a stray print (Python's or Go's) cannot corrupt the stream. It logs to the
inherited stderr in the host's format, ``user=…`` first.

Known limits:

* Isolation costs one Python interpreter per session: with neonize, 45 MB PSS per idle session
  (``bench/memory.py``), nearly all of it private heap from what ``import neonize`` pulls in (httpx,
  requests, bs4, PIL, its protobufs, ~12 MB of its own); the Go library's pages are shared.
* ``start()`` waits until the worker has come up (imports done, client built): about 0.2 s with the
  simulated backend, 0.5 to 1 s with neonize; the host starts its sessions one after another.
* A call that legitimately takes longer than its timeout (a big upload on a slow link) is taken for a
  hang: the worker is killed and the session starts again.
* ``export_auth()`` returns None when no worker is running: what changed since the last save in a
  worker that died is lost (the in-process clients lose it the same way when the host dies).
* Messages are not streamed: an image travels as one frame (at most ``MAX_FRAME`` bytes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import signal
import struct
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec

from infra.logs import setup_logging
from session_host.whatsapp import (
    Disconnected,
    Emit,
    Event,
    LoggedOut,
    NotConnected,
    OutcomeUnknown,
    QrExpired,
    RateLimited,
    SendReceipt,
    SendRejected,
    StreamReplaced,
    TemporaryBan,
    WhatsAppClient,
    WhatsAppError,
    open_backend,
)

logger = logging.getLogger(__spec__.name if __spec__ else __name__)  # not "__main__" in the worker

MAX_FRAME = 64 * 1024 * 1024
STOP_TIMEOUT = 15.0  # neonize gives its connect thread 10 s to return
# A call to a worker that is gone fails after this pause, not at once: a caller that retries at once
# on NotConnected (the account's sender does, until the session has handled the worker's end) would
# otherwise spin without ever yielding, and the event loop would never get to report that end.
GONE_PAUSE = 0.05
_HEADER = struct.Struct(">I")
_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])


# -- the wire format -------------------------------------------------------------------------------


class Start(msgspec.Struct, tag="start"):
    pass


class Stop(msgspec.Struct, tag="stop"):
    pass


class Logout(msgspec.Struct, tag="logout"):
    pass


class PairPhone(msgspec.Struct, tag="pair_phone"):
    phone: str


class Lookup(msgspec.Struct, tag="lookup"):
    numbers: list[str]


class SendText(msgspec.Struct, tag="send_text"):
    jid: str
    text: str
    message_id: str


class SendImage(msgspec.Struct, tag="send_image"):
    jid: str
    image: bytes
    mimetype: str
    caption: str
    message_id: str


class Typing(msgspec.Struct, tag="typing"):
    jid: str
    seconds: float


class ExportAuth(msgspec.Struct, tag="export_auth"):
    pass


class Ping(msgspec.Struct, tag="ping"):
    pass


Request = Start | Stop | Logout | PairPhone | Lookup | SendText | SendImage | Typing | ExportAuth | Ping


class Call(msgspec.Struct, tag="call"):
    id: int
    request: Request


ErrorKind = Literal["not_connected", "outcome_unknown", "rate_limited", "send_rejected", "invalid", "error"]


class WireError(msgspec.Struct):
    kind: ErrorKind
    message: str
    retry_after: float = 0.0


class Ready(msgspec.Struct, tag="ready"):
    pass


class Reply(msgspec.Struct, tag="reply"):
    id: int
    value: Any = None


class Failed(msgspec.Struct, tag="failed"):
    id: int
    error: WireError


class Emitted(msgspec.Struct, tag="event"):
    event: Event


FromWorker = Ready | Reply | Failed | Emitted

_encoder = msgspec.msgpack.Encoder()
_call_decoder = msgspec.msgpack.Decoder(Call)
_from_worker_decoder = msgspec.msgpack.Decoder(FromWorker)


class ProtocolError(Exception):
    """The byte stream is not a sequence of frames (cut off, or absurdly long)."""


def encode_frame(message: Call | FromWorker) -> bytes:
    body = _encoder.encode(message)
    if len(body) > MAX_FRAME:
        raise ValueError(f"a {type(message).__name__} of {len(body)} bytes is over the {MAX_FRAME}-byte frame limit")
    return _HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The next frame's body, or None at a clean end of stream."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("the stream ended inside a frame header") from None
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ProtocolError(f"a frame of {size} bytes is over the limit")
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise ProtocolError("the stream ended inside a frame") from None


def decode_call(body: bytes) -> Call:
    return _call_decoder.decode(body)


def decode_from_worker(body: bytes) -> FromWorker:
    return _from_worker_decoder.decode(body)


def error_to_wire(exc: BaseException) -> WireError:
    """The boundary's exceptions as data; anything else is a generic ``WhatsAppError``."""
    match exc:
        case RateLimited(retry_after=retry_after):
            reason = str(exc).removesuffix(f"; retry after {retry_after:.0f} s")
            return WireError("rate_limited", reason, retry_after)
        case SendRejected(reason=reason):
            return WireError("send_rejected", reason)
        case NotConnected():
            return WireError("not_connected", str(exc))
        case OutcomeUnknown():
            return WireError("outcome_unknown", str(exc))
        case ValueError() | TypeError():
            return WireError("invalid", str(exc))
        case WhatsAppError():
            return WireError("error", str(exc))
    return WireError("error", f"{type(exc).__name__}: {exc}")


def error_from_wire(error: WireError) -> Exception:
    match error.kind:
        case "rate_limited":
            return RateLimited(error.retry_after, reason=error.message)
        case "send_rejected":
            return SendRejected(error.message)
        case "not_connected":
            return NotConnected(error.message)
        case "outcome_unknown":
            return OutcomeUnknown(error.message)
        case "invalid":
            return ValueError(error.message)
    return WhatsAppError(error.message)


# -- the host's side -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timeouts:
    """Seconds a worker has for each kind of answer before it is taken for hung and killed."""

    spawn: float = 30.0  # the process is up and the inner client built (neonize imports in ~0.5 s)
    control: float = 10.0  # start, logout, ping
    stop: float = STOP_TIMEOUT
    call: float = 60.0  # send_text, send_image, lookup, pair_phone (neonize waits up to 30 s for a QR)
    export: float = 30.0  # export_auth: SQLite's backup may wait for a lock
    exit: float = 5.0  # after stop, before SIGTERM; as long again before SIGKILL
    ping_interval: float = 30.0


def inner_backend_class(name: str) -> type:
    """The in-process backend class behind ``name``; importing it imports no neonize."""
    if name == "simulated":
        from session_host.whatsapp.simulated import SimulatedBackend

        return SimulatedBackend
    if name == "neonize":
        from session_host.whatsapp.neonize_client import NeonizeBackend

        return NeonizeBackend
    raise ValueError(f"no WhatsApp backend named {name!r}")


class WorkerBackend:
    """A ``WhatsAppBackend`` whose clients each run the ``inner`` backend's client in a worker process."""

    def __init__(self, inner: str, simulator_dir: str | None = None, *, timeouts: Timeouts | None = None) -> None:
        inner_class = inner_backend_class(inner)
        if inner == "simulated" and not simulator_dir:
            raise ValueError("the simulated backend needs a simulator directory")
        self.inner = inner
        self.simulator_dir = simulator_dir
        self.timeouts = timeouts or Timeouts()
        self.name: str = inner_class.name
        self.honours_message_ids: bool = inner_class.honours_message_ids

    def new_client(self, user_id: str, auth_path: str, emit: Emit) -> WorkerClient:
        return WorkerClient(self.command(user_id, auth_path), user_id, emit, self.timeouts)

    def command(self, user_id: str, auth_path: str) -> list[str]:
        command = [sys.executable, "-m", "session_host.whatsapp.worker", "--backend", self.inner]
        command += ["--user", user_id, "--auth", auth_path]
        if self.simulator_dir:
            command += ["--simulator-dir", self.simulator_dir]
        return command


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[Any]
    op: str
    sends: bool  # the message may leave once the worker has the request


class _Worker:
    """One worker process and the calls waiting for it."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pending: dict[int, _Pending] = {}
        self.ids = itertools.count(1)
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.gone = False  # the process ended (or is being killed): no request reaches it any more
        self.hung: str | None = None  # why it was killed, when it stopped answering
        self.reader: asyncio.Task[None] | None = None
        self.pinger: asyncio.Task[None] | None = None


_ENDING_EVENTS = (QrExpired, LoggedOut, StreamReplaced, TemporaryBan)


class WorkerClient:
    """Implements ``WhatsAppClient`` by forwarding to a worker process (see the module docstring)."""

    def __init__(self, command: Sequence[str], user_id: str, emit: Emit, timeouts: Timeouts | None = None) -> None:
        self.command = list(command)
        self.user_id = user_id
        self._emit = emit
        self._timeouts = timeouts or Timeouts()
        self._worker: _Worker | None = None
        self._closing = False  # stop() was called: the worker's end is expected
        self._ended = False  # an event that ends the session went to the host

    @property
    def pid(self) -> int | None:
        """The running worker's process id."""
        worker = self._worker
        return None if worker is None or worker.gone else worker.process.pid

    # -- WhatsAppClient ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start a worker if none is running, then the client in it. A worker that dies or hangs
        meanwhile is reported as ``Disconnected(final=True)``, not raised."""
        self._closing = self._ended = False
        if not await self.spawn():
            return
        try:
            await self._call(Start(), self._timeouts.control)
        except NotConnected:
            if not self._running():
                return  # the worker's end was reported as an event
            raise

    async def stop(self) -> None:
        self._closing = True
        worker = self._worker
        if worker is None:
            return
        if not worker.gone:
            with contextlib.suppress(WhatsAppError):
                await self._call(Stop(), self._timeouts.stop)
        await self._close(worker)

    async def logout(self) -> None:
        await self._call(Logout(), self._timeouts.control)

    async def pair_phone(self, phone: str) -> str:
        return await self._call(PairPhone(phone=phone), self._timeouts.call, str)

    async def lookup(self, numbers: Sequence[str]) -> dict[str, str | None]:
        return await self._call(Lookup(numbers=list(numbers)), self._timeouts.call, dict[str, str | None])

    async def send_text(self, jid: str, text: str, message_id: str) -> SendReceipt:
        request = SendText(jid=jid, text=text, message_id=message_id)
        return await self._call(request, self._timeouts.call, SendReceipt, sends=True)

    async def send_image(self, jid: str, image: bytes, mimetype: str, caption: str, message_id: str) -> SendReceipt:
        request = SendImage(jid=jid, image=bytes(image), mimetype=mimetype, caption=caption, message_id=message_id)
        return await self._call(request, self._timeouts.call, SendReceipt, sends=True)

    async def typing(self, jid: str, seconds: float) -> None:
        await self._call(Typing(jid=jid, seconds=seconds), seconds + self._timeouts.control)

    async def export_auth(self) -> bytes | None:
        if not self._running():
            return None
        return await self._call(ExportAuth(), self._timeouts.export, bytes | None)

    # -- the worker process ------------------------------------------------------------------------

    async def spawn(self) -> bool:
        """Start the worker process (its client built, not started) unless one runs; False if it
        could not come up, which has then been reported as ``Disconnected(final=True)``."""
        if self._running():
            return True
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=_worker_env()
            )
        except OSError as exc:
            self._report_end(f"cannot start the session worker: {exc}")
            return False
        worker = self._worker = _Worker(process)
        worker.reader = asyncio.create_task(self._read(worker), name=f"worker-reader-{self.user_id}")
        try:
            ready = await asyncio.wait_for(asyncio.shield(worker.ready), self._timeouts.spawn)
        except TimeoutError:
            self._kill(worker, f"session worker hung: not ready within {self._timeouts.spawn:g} s")
            await asyncio.shield(worker.reader)
            return False
        if ready:
            logger.info("user=%s session worker pid=%d ready", self.user_id, process.pid)
            worker.pinger = asyncio.create_task(self._ping(worker), name=f"worker-ping-{self.user_id}")
        return ready

    def _running(self) -> bool:
        return self._worker is not None and not self._worker.gone

    async def _call(self, request: Request, timeout: float, result: Any = None, *, sends: bool = False) -> Any:
        worker = self._worker
        if worker is None or worker.gone:
            await asyncio.sleep(GONE_PAUSE)
            raise NotConnected("the session worker is not running")
        op = _op(request)
        call_id = next(worker.ids)
        pending = worker.pending[call_id] = _Pending(asyncio.get_running_loop().create_future(), op, sends)
        try:
            async with asyncio.timeout(timeout):
                stdin = worker.process.stdin
                assert stdin is not None
                stdin.write(encode_frame(Call(id=call_id, request=request)))
                await stdin.drain()
                value = await pending.future
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise NotConnected(f"the session worker is gone: {exc}") from None  # the request never arrived
        except TimeoutError:
            self._kill(worker, f"session worker hung: no answer to {op} within {timeout:g} s")
            raise _lost_call_error(pending, "the session worker did not answer in time") from None
        finally:
            worker.pending.pop(call_id, None)
        return msgspec.convert(value, result)

    async def _read(self, worker: _Worker) -> None:
        """Take the worker's messages until its stdout ends, then wait for it and report its end."""
        stdout = worker.process.stdout
        assert stdout is not None
        try:
            while (body := await read_frame(stdout)) is not None:
                self._dispatch(worker, decode_from_worker(body))
        except (ProtocolError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            if worker.process.returncode is None:
                logger.error("user=%s session worker sent a malformed message: %s", self.user_id, exc)
                self._kill(worker, f"session worker broke the protocol: {exc}")
        code = await self._wait_exit(worker)
        self._lost(worker, worker.hung or _exit_reason(code))

    def _dispatch(self, worker: _Worker, message: FromWorker) -> None:
        match message:
            case Ready():
                if not worker.ready.done():
                    worker.ready.set_result(True)
            case Reply(id=call_id, value=value):
                if (pending := worker.pending.get(call_id)) is not None and not pending.future.done():
                    pending.future.set_result(value)
            case Failed(id=call_id, error=error):
                if (pending := worker.pending.get(call_id)) is not None and not pending.future.done():
                    pending.future.set_exception(error_from_wire(error))
            case Emitted(event=event):
                if isinstance(event, _ENDING_EVENTS) or (isinstance(event, Disconnected) and event.final):
                    self._ended = True
                self._forward(event)

    async def _ping(self, worker: _Worker) -> None:
        """Notice a worker that froze while no call was waiting for it."""
        while not worker.gone:
            await asyncio.sleep(self._timeouts.ping_interval)
            if worker is not self._worker or worker.gone:
                return
            with contextlib.suppress(WhatsAppError):
                await self._call(Ping(), self._timeouts.control)

    def _kill(self, worker: _Worker, reason: str) -> None:
        """SIGKILL: the worker ignores SIGTERM (its host ends it by closing its stdin)."""
        worker.gone = True
        if worker.hung is None and worker.process.returncode is None:
            worker.hung = reason
            logger.error("user=%s %s; killing pid %d", self.user_id, reason, worker.process.pid)
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()

    async def _wait_exit(self, worker: _Worker) -> int:
        """The exit code, once the process is gone (killed if it lingers ``Timeouts.exit`` seconds)."""
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(worker.process.wait(), self._timeouts.exit)
        self._kill(worker, f"session worker did not exit within {self._timeouts.exit:g} s")
        return await worker.process.wait()

    def _lost(self, worker: _Worker, reason: str) -> None:
        """The worker process is gone: fail what waits for it; report it unless that was expected."""
        worker.gone = True
        if not worker.ready.done():
            worker.ready.set_result(False)
        if worker.pinger is not None:
            worker.pinger.cancel()
        for pending in worker.pending.values():
            if not pending.future.done():
                pending.future.set_exception(_lost_call_error(pending, reason))
        worker.pending.clear()
        if self._closing or self._ended or worker is not self._worker:
            logger.info("user=%s session worker pid=%d ended: %s", self.user_id, worker.process.pid, reason)
            return
        self._report_end(reason)

    def _report_end(self, reason: str) -> None:
        logger.warning("user=%s %s", self.user_id, reason)
        self._ended = True
        self._forward(Disconnected(reason=reason, final=True))

    async def _close(self, worker: _Worker) -> None:
        """Close the worker's stdin (it exits at EOF) and wait until it is gone, killing it if it lingers."""
        worker.gone = True  # no more requests: they could only be lost
        stdin = worker.process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()
        assert worker.reader is not None
        _, lingering = await asyncio.wait({worker.reader}, timeout=self._timeouts.exit)
        if lingering:
            self._kill(worker, f"session worker did not exit within {self._timeouts.exit:g} s of its stop")
        await asyncio.shield(worker.reader)  # it reports the exit, once the process has been waited for

    def _forward(self, event: Event) -> None:
        try:
            self._emit(event)
        except Exception:
            logger.exception("user=%s emitting %s failed", self.user_id, type(event).__name__)


def _op(request: Request) -> str:
    return type(request).__struct_config__.tag  # type: ignore[return-value]


def _lost_call_error(pending: _Pending, reason: str) -> WhatsAppError:
    if pending.sends:
        return OutcomeUnknown(f"{reason} during {pending.op}; the message may have left")
    return NotConnected(f"{reason} during {pending.op}")


def _exit_reason(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"session worker exited with code {code} ({signal.Signals(-code).name})"
    return f"session worker exited with code {code}"


def _worker_env() -> dict[str, str]:
    """The host's environment, with this project importable wherever the host was started from."""
    env = dict(os.environ)
    paths = [path for path in env.get("PYTHONPATH", "").split(os.pathsep) if path]
    if _PROJECT_ROOT not in paths:
        env["PYTHONPATH"] = os.pathsep.join([_PROJECT_ROOT, *paths])
    return env


# -- the worker's side -----------------------------------------------------------------------------


class _Channel:
    """The worker's end of the stream: frames out, from the event loop or from neonize's threads."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    def send(self, message: FromWorker) -> None:
        if self._writer.is_closing():
            return
        self._writer.write(encode_frame(message))

    def emit(self, event: Event) -> None:
        """The inner client's ``emit``: thread-safe, and in order when called from the loop."""
        if threading.get_ident() == self._loop_thread:
            self.send(Emitted(event=event))
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the worker is exiting
            self._loop.call_soon_threadsafe(self.send, Emitted(event=event))

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()


async def perform(client: WhatsAppClient, request: Request) -> Any:
    """Carry out one request on the inner client; the value goes back in ``Reply``."""
    match request:
        case Start():
            return await client.start()
        case Stop():
            return await client.stop()
        case Logout():
            return await client.logout()
        case PairPhone(phone=phone):
            return await client.pair_phone(phone)
        case Lookup(numbers=numbers):
            return await client.lookup(numbers)
        case SendText(jid=jid, text=text, message_id=message_id):
            return await client.send_text(jid, text, message_id)
        case SendImage(jid=jid, image=image, mimetype=mimetype, caption=caption, message_id=message_id):
            return await client.send_image(jid, image, mimetype, caption, message_id)
        case Typing(jid=jid, seconds=seconds):
            return await client.typing(jid, seconds)
        case ExportAuth():
            return await client.export_auth()
        case Ping():
            return None
    raise ValueError(f"unknown request {request!r}")


async def _answer(client: WhatsAppClient, call: Call, channel: _Channel) -> None:
    try:
        channel.send(Reply(id=call.id, value=await perform(client, call.request)))
    except Exception as exc:  # the call failed, or its value does not fit in a frame
        channel.send(Failed(id=call.id, error=error_to_wire(exc)))
    await channel.drain()


MakeClient = Callable[[Emit], WhatsAppClient]


async def serve(make_client: MakeClient, user_id: str, protocol_in: int, protocol_out: int) -> int:
    """Build the inner client, answer calls until the host closes the stream, stop the client."""
    reader, channel = await _open_stream(protocol_in, protocol_out)
    client = make_client(channel.emit)
    channel.send(Ready())
    logger.info("user=%s session worker pid=%d serving a %s", user_id, os.getpid(), type(client).__name__)
    calls: set[asyncio.Task[None]] = set()
    try:
        while (body := await read_frame(reader)) is not None:
            task = asyncio.create_task(_answer(client, decode_call(body), channel))
            calls.add(task)
            task.add_done_callback(calls.discard)
    except (ProtocolError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        logger.error("user=%s session worker got a malformed message: %s", user_id, exc)
        return 3
    finally:
        await _stop_client(user_id, client, calls)
    logger.info("user=%s session worker pid=%d done", user_id, os.getpid())
    return 0


async def _open_stream(protocol_in: int, protocol_out: int) -> tuple[asyncio.StreamReader, _Channel]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(protocol_in, "rb", 0))
    pipe = os.fdopen(protocol_out, "wb", 0)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, pipe)
    return reader, _Channel(asyncio.StreamWriter(transport, protocol, None, loop))


async def _stop_client(user_id: str, client: WhatsAppClient, calls: set[asyncio.Task[None]]) -> None:
    for task in list(calls):
        task.cancel()
    try:
        await asyncio.wait_for(client.stop(), STOP_TIMEOUT)
    except Exception:
        logger.exception("user=%s stopping the client at the worker's end failed", user_id)


def _take_protocol_descriptors() -> tuple[int, int]:
    """Move the protocol off fds 0 and 1, so that a stray print cannot corrupt it."""
    protocol_in, protocol_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return protocol_in, protocol_out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m session_host.whatsapp.worker --backend NAME --user ID --auth PATH [--simulator-dir DIR]``,
    started by ``WorkerClient``, speaking the wire format on stdin and stdout."""
    parser = argparse.ArgumentParser(prog="python -m session_host.whatsapp.worker")
    parser.add_argument("--backend", required=True, choices=("neonize", "simulated"))
    parser.add_argument("--user", required=True)
    parser.add_argument("--auth", required=True)
    parser.add_argument("--simulator-dir")
    args = parser.parse_args(argv)

    def make_client(emit: Emit) -> WhatsAppClient:
        return open_backend(args.backend, args.simulator_dir, isolated=False).new_client(args.user, args.auth, emit)

    return run_worker(make_client, args.user)


def run_worker(make_client: MakeClient, user_id: str) -> int:
    """Be a session worker on this process's stdin and stdout; the exit code to end with."""
    # Ctrl-C in a terminal, or a service manager's SIGTERM to the whole group, is for the host: it
    # saves the credentials through us, then closes our stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    protocol_in, protocol_out = _take_protocol_descriptors()
    setup_logging()
    try:
        return asyncio.run(serve(make_client, user_id, protocol_in, protocol_out))
    except Exception:
        logger.exception("user=%s session worker failed", user_id)
        return 3


if __name__ == "__main__":
    exit_code = main()
    logging.shutdown()
    sys.stderr.flush()
    os._exit(exit_code)  # neonize may leave a non-daemon Go thread behind; the client is stopped already

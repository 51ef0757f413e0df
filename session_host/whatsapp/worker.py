"""One worker process per session: each account's WhatsApp client runs in an OS process of its own.

neonize 0.5.2 (Go inside Python) aborts the whole process with a Go panic on some calls, and
concurrent connects in one process crashed it now and then. ``WorkerBackend`` wraps another backend
by name (``neonize`` or ``simulated``) and gives the host ``WorkerClient``\\ s: each one starts a
worker process, where the real client lives, and forwards every call and event to it. The worker is
forked from the zygote (``session_host.whatsapp.zygote``): multiprocessing's fork server, which has
imported neonize's dependencies once but never neonize itself (importing neonize loads its Go
library, and a Go runtime does not survive fork); the worker imports neonize after the fork and
talks over its end of a ``socketpair``. If the zygote cannot be used, the worker is a fresh
interpreter, ``python -m session_host.whatsapp.worker``, talking over its stdin and stdout (said once
in the log); ``WorkerBackend(zygote=False)`` always starts those. A crash, a Go panic, ``kill -9`` or a
hang then ends one session only:

* every request that is waiting fails with ``NotConnected``, or with ``OutcomeUnknown`` for a send
  that was in flight (the message may have left);
* the client emits ``Disconnected(reason="session worker exited with code N" | "... hung ...",
  final=True)`` once, and the host's ``Session`` starts again with its backoff: a new client, a new
  worker, the credentials restored from the store.

A call that gets no answer in time (``Timeouts``) gets the worker killed and is treated as above; an
idle worker is pinged every ``Timeouts.ping_interval`` seconds, so a frozen one is noticed too.
``stop()`` asks the worker to stop its client, ends its input (half-closes the socket, or closes its
stdin), waits ``Timeouts.exit`` seconds, then kills it; the process is always waited for, no zombies
(the fork server reaps the workers it forked and passes their exit codes on). A worker whose input
ends (the host stopped or died) stops its client and exits by itself; workers and the fork server
ignore SIGINT and SIGTERM, which a terminal or a service manager sends to the whole process group,
so that the host can still save the credentials through them while shutting down.

Wire format: length-prefixed msgpack frames (a 4-byte big-endian length, then one msgspec-encoded
value; no pickle), both ways over the socket, or over the child's stdin (host to worker) and stdout
(worker to host)::

    host -> worker   Call(id, request)    request: Start | Stop | Logout | PairPhone | Lookup | SendText
                                                   | SendImage | Typing | ExportAuth | Ping
    worker -> host   Ready()              the inner client is built; requests may come
                     Reply(id, value)     the call's result (None, str, dict, SendReceipt, bytes)
                     Failed(id, error)    WireError(kind, message, retry_after): the boundary's exceptions
                     Emitted(event)       one of the boundary's ``Event`` Structs, unchanged

Only the start of a forked worker goes through multiprocessing (with pickle): its entry point, its
arguments and the environment, plain strings. A forked worker closes every descriptor it inherited
but its socket and stderr; a fresh one moves the protocol to private descriptors at start. Either
way fd 0 is /dev/null and fd 1 is stderr, so a stray print (Python's or Go's) cannot corrupt the
stream. The worker logs to the host's stderr in the host's format, ``user=…`` first, and is named
``zapgate-worker`` (``/proc/PID/comm``: what ps and top show; the fork server is ``zapgate-zygote``).

Known limits:

* Isolation costs a process per session. With neonize, an idle session takes 22 MB PSS at 50
  sessions, 27 MB at 10 and 80 MB alone, the zygote's share counted in (the fork server and
  multiprocessing's resource tracker: 22 to 34 MB in all); fresh interpreters took 45, 47 and 60 MB
  (``python -m bench.memory --mode both``, same run). What stays a worker's own is mostly what cannot
  be preloaded: neonize's modules (its protobufs) and the Go runtime. A page shared with the fork
  server becomes a worker's own once the worker writes to it (a reference count it changes), so
  busy sessions share less than idle ones.
* ``start()`` waits until the worker has come up (client built). Forked: about 0.01 s with the
  simulated backend and 0.1 s with neonize (which it imports then), plus about 0.5 s for the first,
  which starts the fork server. Fresh interpreters: about 0.2 s and 0.5 to 1 s. The host starts its
  sessions one after another.
* If the fork server dies, the workers it forked run on, but their exit codes are lost with it (the
  reason for their end says so) and init reaps them, unless the host is their reaper (PID 1 of a
  container); the next worker starts a new fork server.
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
import functools
import itertools
import logging
import os
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

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

if TYPE_CHECKING:
    from session_host.whatsapp import zygote
    from session_host.whatsapp.neonize_client import NeonizeBackend
    from session_host.whatsapp.simulated import SimulatedBackend

logger = logging.getLogger(__spec__.name if __spec__ else __name__)  # not "__main__" in the worker

MAX_FRAME = 64 * 1024 * 1024
STOP_TIMEOUT = 15.0  # neonize gives its connect thread 10 s to return
# A call to a worker that is gone fails after this pause, not at once: a caller that retries at once
# on NotConnected (the account's sender does, until the session has handled the worker's end) would
# otherwise spin without ever yielding, and the event loop would never get to report that end.
GONE_PAUSE = 0.05
_HEADER = struct.Struct(">I")
_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])
MAIN_ENTRY = "session_host.whatsapp.worker:main"  # what a forked worker runs: main(argv, protocol_fd)
PROCESS_NAME = "zapgate-worker"  # a worker's /proc/PID/comm, forked or not (what ps and top show)


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
    """The next frame's body, or None at the end of the stream: a clean end, or the other side gone
    (a socket reports a reset when a frame it had not read was waiting, or a broken pipe once a write
    to it failed: one transport carries both directions)."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("the stream ended inside a frame header") from None
        return None
    except ConnectionError:
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ProtocolError(f"a frame of {size} bytes is over the limit")
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise ProtocolError("the stream ended inside a frame") from None
    except ConnectionError:
        return None  # gone: what it meant to say no longer matters


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


def inner_backend_class(name: str) -> type[SimulatedBackend] | type[NeonizeBackend]:
    """The in-process backend class behind ``name``; importing it imports no neonize."""
    if name == "simulated":
        from session_host.whatsapp.simulated import SimulatedBackend

        return SimulatedBackend
    if name == "neonize":
        from session_host.whatsapp.neonize_client import NeonizeBackend

        return NeonizeBackend
    raise ValueError(f"no WhatsApp backend named {name!r}")


@dataclass(frozen=True)
class Fork:
    """Start a worker as a fork of the zygote (``session_host.whatsapp.zygote``) that runs
    ``entry(argv, protocol_fd)``; or, when the zygote cannot be used, ``command``, a fresh interpreter
    speaking on its stdin and stdout."""

    entry: str
    argv: tuple[str, ...]
    command: tuple[str, ...]


class WorkerBackend:
    """A ``WhatsAppBackend`` whose clients each run the ``inner`` backend's client in a worker process:
    forked from the zygote, or (``zygote=False``) a fresh interpreter each."""

    def __init__(
        self,
        inner: str,
        simulator_dir: str | None = None,
        *,
        timeouts: Timeouts | None = None,
        zygote: bool = True,
    ) -> None:
        inner_class = inner_backend_class(inner)
        if inner == "simulated" and not simulator_dir:
            raise ValueError("the simulated backend needs a simulator directory")
        self.inner = inner
        self.simulator_dir = simulator_dir
        self.timeouts = timeouts or Timeouts()
        self.zygote = zygote
        self.name: str = inner_class.name
        self.honours_message_ids: bool = inner_class.honours_message_ids
        if inner == "simulated":  # the simulated world says whether it keeps our ids
            from session_host.whatsapp.simulated import SimulatedWorld

            self.honours_message_ids = SimulatedWorld(simulator_dir).message_ids_honoured()  # type: ignore[arg-type]

    def new_client(self, user_id: str, auth_path: str, emit: Emit) -> WorkerClient:
        command = self.command(user_id, auth_path)
        if not self.zygote:
            return WorkerClient(command, user_id, emit, self.timeouts)
        fork = Fork(MAIN_ENTRY, tuple(self.arguments(user_id, auth_path)), tuple(command))
        return WorkerClient(fork, user_id, emit, self.timeouts)

    def arguments(self, user_id: str, auth_path: str) -> list[str]:
        """The worker's command line arguments (``main``'s ``argv``)."""
        arguments = ["--backend", self.inner, "--user", user_id, "--auth", auth_path]
        if self.simulator_dir:
            arguments += ["--simulator-dir", self.simulator_dir]
        return arguments

    def command(self, user_id: str, auth_path: str) -> list[str]:
        """The worker as a fresh interpreter."""
        return [sys.executable, "-m", "session_host.whatsapp.worker", *self.arguments(user_id, auth_path)]


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[Any]
    op: str
    sends: bool  # the message may leave once the worker has the request


class _Process(Protocol):
    """What the client needs of a worker process: ``asyncio.subprocess.Process`` or ``zygote.ForkedProcess``."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def kill(self) -> None: ...

    async def wait(self) -> int | None: ...


class _Worker:
    """One worker process, its protocol stream, and the calls waiting for it."""

    def __init__(
        self, process: _Process, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, forked: bool
    ) -> None:
        self.process = process
        self.reader = reader
        self.writer = writer
        self.forked = forked
        self.pending: dict[int, _Pending] = {}
        self.ids = itertools.count(1)
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.gone = False  # the process ended (or is being killed): no request reaches it any more
        self.hung: str | None = None  # why it was killed, when it stopped answering
        self.reader_task: asyncio.Task[None] | None = None
        self.pinger: asyncio.Task[None] | None = None


_ENDING_EVENTS = (QrExpired, LoggedOut, StreamReplaced, TemporaryBan)


class WorkerClient:
    """Implements ``WhatsAppClient`` by forwarding to a worker process (see the module docstring)."""

    def __init__(
        self, launch: Sequence[str] | Fork, user_id: str, emit: Emit, timeouts: Timeouts | None = None
    ) -> None:
        self.launch = launch if isinstance(launch, Fork) else list(launch)  # a Fork, or a command to run
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
            worker = self._worker = await self._launch()
        except OSError as exc:
            self._report_end(f"cannot start the session worker: {exc}")
            return False
        process = worker.process
        worker.reader_task = asyncio.create_task(self._read(worker), name=f"worker-reader-{self.user_id}")
        try:
            ready = await asyncio.wait_for(asyncio.shield(worker.ready), self._timeouts.spawn)
        except TimeoutError:
            self._kill(worker, f"session worker hung: not ready within {self._timeouts.spawn:g} s")
            await asyncio.shield(worker.reader_task)
            return False
        if ready:
            how = "forked from the zygote" if worker.forked else "a fresh interpreter"
            logger.info("user=%s session worker pid=%d ready (%s)", self.user_id, process.pid, how)
            worker.pinger = asyncio.create_task(self._ping(worker), name=f"worker-ping-{self.user_id}")
        return ready

    async def _launch(self) -> _Worker:
        """A new worker process: forked from the zygote, or a fresh interpreter (the fallback)."""
        command = self.launch
        if isinstance(command, Fork):
            from session_host.whatsapp import zygote

            try:
                forked = await self._fork(command)
            except zygote.ZygoteUnavailable:  # said in the log once
                command = list(command.command)
            else:
                child = zygote.ForkedProcess(forked)  # collects the exit code, whatever happens next
                try:
                    reader, writer = await asyncio.open_unix_connection(sock=forked.socket)
                except BaseException:
                    forked.socket.close()  # the worker exits at EOF
                    raise
                return _Worker(child, reader, writer, forked=True)
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=_worker_env()
        )
        assert process.stdin is not None and process.stdout is not None
        return _Worker(process, process.stdout, process.stdin, forked=False)

    async def _fork(self, fork: Fork) -> zygote.Forked:
        """Ask the zygote for a worker, in a thread (it blocks while the fork server starts)."""
        from session_host.whatsapp import zygote

        name = f"{PROCESS_NAME} {self.user_id}"
        request = functools.partial(zygote.fork_worker, fork.entry, fork.argv, name=name, timeout=self._timeouts.spawn)
        future = asyncio.get_running_loop().run_in_executor(None, request)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(_discard_forked)
            raise

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
                worker.writer.write(encode_frame(Call(id=call_id, request=request)))
                await worker.writer.drain()
                value = await pending.future
        except ConnectionError as exc:
            raise NotConnected(f"the session worker is gone: {exc}") from None  # the request never arrived
        except TimeoutError:
            self._kill(worker, f"session worker hung: no answer to {op} within {timeout:g} s")
            raise _lost_call_error(pending, "the session worker did not answer in time") from None
        finally:
            worker.pending.pop(call_id, None)
        return msgspec.convert(value, result)

    async def _read(self, worker: _Worker) -> None:
        """Take the worker's messages until its stream ends, then wait for it and report its end."""
        try:
            while (body := await read_frame(worker.reader)) is not None:
                self._dispatch(worker, decode_from_worker(body))
        except (ProtocolError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            if worker.process.returncode is None:
                logger.error("user=%s session worker sent a malformed message: %s", self.user_id, exc)
                self._kill(worker, f"session worker broke the protocol: {exc}")
        code = await self._wait_exit(worker)
        worker.writer.close()
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
        """SIGKILL: the worker ignores SIGTERM (its host ends it by closing its stream)."""
        worker.gone = True
        if worker.hung is None and worker.process.returncode is None:
            worker.hung = reason
            logger.error("user=%s %s; killing pid %d", self.user_id, reason, worker.process.pid)
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()

    async def _wait_exit(self, worker: _Worker) -> int | None:
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
        """End the worker's input (it exits at EOF) and wait until it is gone, killing it if it lingers.
        Its output is read on until it ends: it may still report something while stopping."""
        worker.gone = True  # no more requests: they could only be lost
        if not worker.writer.is_closing():
            with contextlib.suppress(OSError):
                worker.writer.write_eof()  # a socket's half-close, or a pipe's close
        assert worker.reader_task is not None
        _, lingering = await asyncio.wait({worker.reader_task}, timeout=self._timeouts.exit)
        if lingering:
            self._kill(worker, f"session worker did not exit within {self._timeouts.exit:g} s of its stop")
        await asyncio.shield(worker.reader_task)  # it reports the exit, once the process has been waited for

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


def _discard_forked(future: asyncio.Future[zygote.Forked]) -> None:
    """A worker forked for a ``spawn()`` that was cancelled meanwhile: let it go (it exits at EOF)."""
    if not future.cancelled() and future.exception() is None:
        future.result().discard()


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "session worker exited; its exit code was lost with the fork server that had started it"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"session worker exited with code {code} ({signal.Signals(-code).name})"
    return f"session worker exited with code {code}"


def _worker_env() -> dict[str, str]:
    """The host's environment but its secrets, with this project importable wherever the host was
    started from."""
    from session_host.whatsapp.zygote import environment_without_secrets

    env = environment_without_secrets()
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


Stream = int | tuple[int, int]  # a socket's descriptor, or two pipes' (from the host, to the host)


async def serve(make_client: MakeClient, user_id: str, protocol: Stream) -> int:
    """Build the inner client, answer calls until the host closes the stream, stop the client."""
    reader, channel = await _open_stream(protocol)
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


async def _open_stream(stream: Stream) -> tuple[asyncio.StreamReader, _Channel]:
    if isinstance(stream, int):
        reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=stream))
        return reader, _Channel(writer)
    protocol_in, protocol_out = stream
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


def main(argv: Sequence[str] | None = None, protocol: int | None = None) -> int:
    """``python -m session_host.whatsapp.worker --backend NAME --user ID --auth PATH [--simulator-dir DIR]``,
    started by ``WorkerClient``, speaking the wire format on stdin and stdout; or, forked from the
    zygote, ``main(argv, protocol)`` on the socket ``protocol``."""
    parser = argparse.ArgumentParser(prog="python -m session_host.whatsapp.worker")
    parser.add_argument("--backend", required=True, choices=("neonize", "simulated"))
    parser.add_argument("--user", required=True)
    parser.add_argument("--auth", required=True)
    parser.add_argument("--simulator-dir")
    args = parser.parse_args(argv)

    def make_client(emit: Emit) -> WhatsAppClient:
        return open_backend(args.backend, args.simulator_dir, isolated=False).new_client(args.user, args.auth, emit)

    return run_worker(make_client, args.user, protocol)


def run_worker(make_client: MakeClient, user_id: str, protocol: int | None = None) -> int:
    """Be a session worker on the socket ``protocol``, or on this process's stdin and stdout; the exit
    code to end with."""
    # Ctrl-C in a terminal, or a service manager's SIGTERM to the whole group, is for the host: it
    # saves the credentials through us, then closes our stream.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write(PROCESS_NAME)
    stream: Stream = _take_protocol_descriptors() if protocol is None else protocol
    setup_logging()
    try:
        return asyncio.run(serve(make_client, user_id, stream))
    except Exception:
        logger.exception("user=%s session worker failed", user_id)
        return 3


if __name__ == "__main__":
    exit_code = main()
    logging.shutdown()
    sys.stderr.flush()
    os._exit(exit_code)  # neonize may leave a non-daemon Go thread behind; the client is stopped already

"""The zygote: session workers are forked from a process that has imported neonize's dependencies once.

A fresh ``python -m session_host.whatsapp.worker`` per session costs about 45 MB PSS per idle neonize
session, nearly all of it the private heap of what ``import neonize`` pulls in (httpx, requests, bs4,
PIL, protobuf, asyncio, ...). So ``WorkerClient`` asks multiprocessing's fork server (the machinery
behind ``multiprocessing.get_context("forkserver")``) for its workers: a fresh interpreter, started
once, whose preload is this module; this module then imports ``PRELOAD`` and freezes the garbage
collector (``gc.freeze()``: a collection in a worker must not write to, and so copy, every page of
those objects). Each worker is an ``os.fork()`` of it, shares those pages copy-on-write, and imports
neonize itself.

What importing neonize (0.5.2) does: ``neonize/__init__.py`` imports ``neonize.client``, whose
``_binder`` loads the Go library (``neonize-linux-amd64.so``) with ``ctypes.CDLL`` and calls into it,
and ``neonize.utils.log`` starts a thread. Every neonize module, ``neonize.proto...`` included, runs
that package ``__init__`` first. So nothing of neonize is preloaded, only its dependencies: a Go
runtime does not survive fork, and the fork server must have no threads when it forks. ``_preload``
refuses to serve (the fork server exits, and the host falls back to fresh interpreters) if neonize
got imported or its library mapped anyway.

How the host gets a worker (``fork_worker``; it blocks, the host calls it in a thread):

1. it makes a ``socket.socketpair()``: one end carries the worker's protocol (``worker``'s
   length-prefixed msgpack frames), the other stays with the host;
2. ``forkserver.connect_to_new_process`` hands the worker's end and the host's stderr to the fork
   server (SCM_RIGHTS), starting the fork server first if none runs, or if the last one died (which
   the log says); the fork server forks at once and sends the child's pid;
3. the host writes what ``multiprocessing.spawn._main`` reads in the child: a preparation dict with
   the name, ``sys.path`` and working directory only, then a ``_Start`` (entry point
   ``"module:function"``, its arguments, the host's environment: plain strings). Not
   ``multiprocessing.Process``: its preparation data makes each child re-import the host's
   ``__main__`` (the whole host, for ``zapgate-host``), it joins its children when the host exits,
   and it polls them from ``start()`` in any thread;
4. the child closes every descriptor it inherited except the two it was given, points fd 1 at
   stderr, takes the environment, calls ``entry(argv, protocol_fd)`` and ends with ``os._exit``
   (neonize leaves a non-daemon Go thread behind);
5. once it has reaped the worker, the fork server sends its exit code on the same status pipe, which
   the host watches (``ForkedProcess``); the host also holds a pidfd to signal the worker safely.

The fork server and the workers ignore SIGINT and SIGTERM, which a terminal or a service manager sends
to the whole process group: the host ends them. The fork server exits when the host does (multiprocessing's
"alive" pipe ends). If it dies, the workers it forked run on, each on its own socket to the host; their
exit codes are lost with it and init reaps them (or the host, when it is their reaper, as PID 1 of a
container); the next worker starts a new fork server. If one cannot be used twice in a row,
``ZygoteUnavailable`` is raised from then on, and ``WorkerClient`` starts fresh interpreters instead.

multiprocessing also starts its resource tracker (a small fresh interpreter) for the fork server;
``helper_pids()`` names both, for ``bench.memory``. With neonize, an idle session then takes about
22 MB PSS at 50 sessions, these two included, against 45 MB (see ``worker``'s "Known limits").

Beyond multiprocessing's documented API this relies on (CPython 3.11 to 3.13): ``forkserver``'s
module functions (``connect_to_new_process``, ``read_signed``, ``get_inherited_fds``), what its
child runs (``spawn._main``: two pickles, the second's ``_bootstrap(parent_sentinel)``), and a few
attributes (the fork server's pid and ``_stop()``, the resource tracker's pid and descriptor).
``tests/host/test_worker.py`` exercises each of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import multiprocessing
import os
import pickle
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import forkserver, resource_tracker
from types import FrameType
from typing import Any

# What a session's worker never needs, and its Go library should never hold: the keys of the
# stored credentials, the API's secrets and the store's credentials (the host does all the writing).
SECRET_VARIABLES = (
    "ZAPGATE_HOST_AUTH_KEY",
    "ZAPGATE_HOST_AUTH_KEY_PREVIOUS",
    "ZAPGATE_API_ADMIN_KEY",
    "ZAPGATE_API_LINK_SECRET",
    "ZAPGATE_WEBHOOK_SECRET",
    "ZAPGATE_S3_ACCESS_KEY",
    "ZAPGATE_S3_SECRET_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)


def environment_without_secrets() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name not in SECRET_VARIABLES}


logger = logging.getLogger(__name__)

# What ``import neonize`` (0.5.2) imports besides itself, as it imports it, and this project's side of
# a worker; the modules these import come along. ``tests/host/test_worker.py`` checks that importing
# neonize after these imports nothing else but neonize's own modules.
PRELOAD: tuple[str, ...] = (
    # the standard library
    "asyncio",
    "concurrent.futures",
    "concurrent.futures.process",
    "ctypes",
    "ctypes.util",
    "dataclasses",
    "datetime",
    "json",
    "platform",
    "queue",
    "random",
    "shlex",
    "shutil",
    "sqlite3",
    "subprocess",
    "tempfile",
    "traceback",
    "uuid",
    "zipfile",
    # neonize's dependencies
    "google.protobuf.descriptor",
    "google.protobuf.descriptor_pool",
    "google.protobuf.internal.builder",
    "google.protobuf.internal.containers",
    "google.protobuf.message",
    "google.protobuf.runtime_version",
    "google.protobuf.symbol_database",
    "httpx",
    "linkpreview",
    "linkpreview.exceptions",
    "magic",
    "phonenumbers",
    "PIL.Image",
    "PIL.ImageSequence",
    "requests",
    "requests.exceptions",
    "segno",
    "tqdm",
    # the worker
    "msgspec",
    "infra.logs",
    "session_host.whatsapp",
    "session_host.whatsapp.neonize_client",
    "session_host.whatsapp.simulated",
    "session_host.whatsapp.worker",
)

SERVER_NAME = "zapgate-zygote"  # the fork server's /proc/PID/comm (what ps and top show)


class ZygoteUnavailable(Exception):
    """The fork server cannot start workers here: start a fresh interpreter instead."""


# -- the host's side -------------------------------------------------------------------------------


@dataclass
class Forked:
    """A worker just forked: its pid, the fork server's status pipe for it (the exit code comes there),
    a pidfd (None where there is none), and the host's end of its protocol socket."""

    pid: int
    status: int
    pidfd: int | None
    socket: socket.socket

    def discard(self) -> None:
        """Let go of a worker nobody will use: it exits once its socket closes."""
        self.socket.close()
        for fd in (self.status, self.pidfd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)


_lock = threading.Lock()
_server_pid: int | None = None  # the fork server the last worker came from
_unusable: str | None = None  # why the fork server is not used any more


def unsupported() -> str | None:
    """Why the fork server cannot work on this platform at all, or None."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return "multiprocessing has no fork server on this platform"
    return None


def fork_worker(entry: str, argv: Sequence[str], *, name: str, timeout: float, stderr: int = 2) -> Forked:
    """A worker forked from the zygote, running ``entry(argv, protocol_fd)``; blocks up to about
    ``timeout`` seconds, twice if the first fork server fails. Raises ``ZygoteUnavailable`` once the
    fork server has failed twice in a row (and from then on, said once in the log)."""
    global _unusable
    reason = _unusable or unsupported()
    if reason is not None:
        raise ZygoteUnavailable(reason)
    for attempt in (1, 2):
        try:
            return _fork(entry, argv, name, timeout, stderr)
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"
            _discard_server()
            if attempt == 1:
                logger.warning("the fork server did not start a session worker (%s); trying a new one", failure)
    with _lock:
        if _unusable is None:
            _unusable = failure
            logger.error("cannot use the fork server (%s); session workers start as fresh interpreters now", failure)
    raise ZygoteUnavailable(failure)


def fork_server_pid() -> int | None:
    """The running fork server's pid, if one was started."""
    return getattr(_server(), "_forkserver_pid", None)


def helper_pids() -> list[int]:
    """The processes that the zygote costs besides the workers: the fork server and multiprocessing's
    resource tracker."""
    pids = [fork_server_pid(), getattr(_tracker(), "_pid", None)]
    return [pid for pid in pids if pid is not None]


def _server() -> Any:
    """multiprocessing's fork server singleton (its state is private)."""
    return forkserver._forkserver


def _tracker() -> Any:
    """multiprocessing's resource tracker singleton (its state is private)."""
    return resource_tracker._resource_tracker


def _fork(entry: str, argv: Sequence[str], name: str, timeout: float, stderr: int) -> Forked:
    deadline = time.monotonic() + timeout
    host_end, worker_end = socket.socketpair()
    status = devnull = -1
    try:
        try:
            os.fstat(stderr)
        except OSError:  # a host without stderr: the worker's log goes nowhere, as the host's does
            stderr = devnull = os.open(os.devnull, os.O_WRONLY)
        forkserver.set_forkserver_preload([__name__])
        status, data = forkserver.connect_to_new_process([worker_end.fileno(), stderr])
        _note_server()
        preparation: dict[str, object] = {"name": name, "sys_path": _sys_path()}
        with contextlib.suppress(OSError):
            preparation["dir"] = os.getcwd()
        start = _Start(entry, list(argv), environment_without_secrets())
        try:
            _write_all(data, pickle.dumps(preparation) + pickle.dumps(start), deadline)
        finally:
            os.close(data)
        pid = _read_number(status, deadline)
    except BaseException:
        host_end.close()
        if status >= 0:
            os.close(status)
        raise
    finally:
        worker_end.close()
        if devnull >= 0:
            os.close(devnull)
    return Forked(pid, status, _open_pidfd(pid, status), host_end)


def _note_server() -> None:
    """Say in the log when a fork server was started, and whether it replaces one that died."""
    global _server_pid
    pid = fork_server_pid()
    with _lock:
        if pid is None or pid == _server_pid:
            return
        if _server_pid is None:
            logger.info("started the fork server pid=%d for the session workers", pid)
        else:
            logger.warning("the fork server pid=%d is gone; started a new one, pid=%d", _server_pid, pid)
        _server_pid = pid


def _discard_server() -> None:
    """Kill a fork server that failed and reap it, so that the next request starts a new one."""
    pid = fork_server_pid()
    if pid is None:
        return
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        _server()._stop()  # closes its "alive" pipe, waits for it, forgets it


def _sys_path() -> list[str]:
    """This process's import path for the worker, with the project in it wherever the host started."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = [entry for entry in sys.path if entry]
    with contextlib.suppress(OSError):
        path = [entry or os.getcwd() for entry in sys.path]
    return path if root in path else [root, *path]


def _write_all(fd: int, data: bytes, deadline: float) -> None:
    os.set_blocking(fd, False)
    view = memoryview(data)
    while view:
        if not select.select([], [fd], [], max(0.0, deadline - time.monotonic()))[1]:
            raise TimeoutError("the fork server did not take the start data in time")
        view = view[os.write(fd, view) :]


def _read_number(fd: int, deadline: float) -> int:
    """The next number on a status pipe (``forkserver.read_signed``), within the deadline."""
    if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
        raise TimeoutError("the fork server did not fork in time")
    return forkserver.read_signed(fd)


def _open_pidfd(pid: int, status: int) -> int | None:
    """A pidfd for the worker; None without pidfds, or if the worker may have ended (and its pid been
    reused) before the pidfd was opened: the fork server has written to its status pipe then."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
    if select.select([status], [], [], 0)[0]:
        os.close(pidfd)
        return None
    return pidfd


class ForkedProcess:
    """A forked worker as the host sees it, like ``asyncio.subprocess.Process``: ``pid``,
    ``returncode``, ``kill()`` and ``wait()``. ``wait()`` gives None when the exit code was lost with
    a fork server that died."""

    def __init__(self, forked: Forked) -> None:
        self.pid = forked.pid
        self.returncode: int | None = None
        self._status: int | None = forked.status
        self._pidfd = forked.pidfd
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int | None] = self._loop.create_future()
        self._poller: asyncio.Task[None] | None = None
        self._loop.add_reader(forked.status, self._on_status)

    def kill(self) -> None:
        """SIGKILL; ``ProcessLookupError`` if it is gone."""
        if self._exited.done():
            raise ProcessLookupError(f"session worker pid {self.pid} has ended")
        if self._pidfd is not None:
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        else:
            os.kill(self.pid, signal.SIGKILL)

    async def wait(self) -> int | None:
        return await asyncio.shield(self._exited)

    def _on_status(self) -> None:
        assert self._status is not None
        self._loop.remove_reader(self._status)
        try:
            code: int | None = forkserver.read_signed(self._status)
        except (EOFError, OSError):
            code = None  # the fork server is gone, and the exit code with it
        os.close(self._status)
        self._status = None
        if code is not None:
            self._end(code)
        elif self._pidfd is not None:
            self._loop.add_reader(self._pidfd, self._on_pidfd)
        else:
            self._poller = self._loop.create_task(self._poll_gone())

    def _on_pidfd(self) -> None:
        """The worker ended after its fork server: reap it if it is ours now, else init does."""
        assert self._pidfd is not None
        self._loop.remove_reader(self._pidfd)
        code = None
        with contextlib.suppress(OSError, AttributeError):
            result = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
            if result is not None:
                code = result.si_status if result.si_code == os.CLD_EXITED else -result.si_status
        self._end(code)

    async def _poll_gone(self) -> None:
        """Without a pidfd: poll until the process has ended (gone, or a zombie that init has not reaped)."""
        while True:
            try:
                with open(f"/proc/{self.pid}/stat") as stat:
                    if stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                        break
            except OSError:
                break
            await asyncio.sleep(0.1)
        self._end(None)

    def _end(self, code: int | None) -> None:
        self.returncode = code
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if not self._exited.done():
            self._exited.set_result(code)


# -- the fork server's and the forked worker's side ------------------------------------------------


class _Start:
    """What a forked worker runs; ``multiprocessing.spawn._main`` unpickles it and calls ``_bootstrap``."""

    def __init__(self, entry: str, argv: list[str], env: dict[str, str]) -> None:
        self.entry = entry
        self.argv = argv
        self.env = env

    def _bootstrap(self, parent_sentinel: int) -> int:
        code = 3
        try:
            inherited = forkserver.get_inherited_fds()
            assert inherited is not None, "not started by the fork server"
            protocol, stderr = inherited
            _keep_only(protocol, stderr)
            os.dup2(stderr, 1)
            os.dup2(stderr, 2)
            os.close(stderr)
            devnull = os.open(os.devnull, os.O_RDONLY)  # fd 0 is the fork server's /dev/null already; sure
            os.dup2(devnull, 0)
            os.close(devnull)
            sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115  # the fork server's closed above
            os.environ.clear()
            os.environ.update(self.env)
            if "neonize" in sys.modules:
                raise RuntimeError("neonize is loaded in the fork server: a Go runtime does not survive fork")
            asyncio.set_event_loop_policy(None)  # the fork server has no event loop; nor may a worker inherit one
            module, _, function = self.entry.partition(":")
            code = getattr(importlib.import_module(module), function)(self.argv, protocol)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            logging.shutdown()
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)


def _keep_only(*keep: int) -> None:
    """Close every descriptor above 2 but ``keep``: the fork server's, multiprocessing's (its "alive"
    pipe, the resource tracker's pipe, the parent sentinel) and whatever else came along the fork."""
    _server()._forkserver_alive_fd = None
    _tracker()._fd = None
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def _set_name(name: str) -> None:
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write(name)


def _in_fork_server() -> bool:
    """True while multiprocessing's fork server imports this module as its preload."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code is forkserver.main.__code__:
            return True
        frame = frame.f_back
    return False


def _preload() -> None:
    """Import ``PRELOAD`` into the fork server, then freeze what is there for the workers to share."""
    gc.disable()  # no collection while importing: no holes in the pages that the workers share
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # multiprocessing ignores SIGINT already
    _set_name(SERVER_NAME)
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a worker imports it itself then: more memory, not a failure
            print(f"{SERVER_NAME}: cannot preload {name}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    with open("/proc/self/maps") as maps:
        mapped = "/neonize/" in maps.read()
    if mapped or any(name == "neonize" or name.startswith("neonize.") for name in sys.modules):
        print(f"{SERVER_NAME}: neonize got loaded; refusing to fork workers", file=sys.stderr, flush=True)
        os._exit(1)
    gc.freeze()
    gc.enable()


if _in_fork_server():
    _preload()

"""Real WhatsApp through neonize 0.5.2 (Python bindings over the Go library whatsmeow).

``NeonizeBackend`` makes one ``NeonizeClient`` per account. The client drives neonize's sync
``NewClient``: ``connect()`` blocks for the whole session, so it runs in a daemon thread of its
own, and every other neonize call runs in the client's small thread pool, so that no coroutine
blocks the event loop. neonize reports from Go threads; the handlers here turn its protobuf events
into the boundary's ``Event`` values and hand them to ``emit`` (thread-safe) at once.

How WhatsApp's pairing behaves, and what this module does about it:

* QR codes reach Python one at a time, through neonize's per-code QR callback
  (``client.qr(...)``, Go's ``qrFuncCb``), as whatsmeow rotates them: the first for 60 s, then
  five more for 20 s each. neonize's Go side runs that QR loop *before* it starts draining its
  event channel, so the ``QR`` event (the whole batch) and every other event stay buffered until
  the account is paired; the QR event is therefore ignored. Each code is shown with its validity
  (``qr_first_timeout``, then ``qr_next_timeout``) and re-arms a watchdog (``QrWatch``): when no
  next code and no pairing come within a code's validity plus ``qr_grace``, ``QrExpired`` is
  emitted and the client stops, because whatsmeow goes silent then while ``connect()`` still
  blocks.
* After pairing, whatsmeow restarts the connection with the new credentials; codes after pairing
  are ignored, so the restart shows no new QR.
* Pairing by phone code (``pair_phone``) only works once the first QR has arrived; it waits for
  it (at most ``pair_wait`` seconds).
* Several neonize calls abort the whole process with a Go panic when there is no logged-in
  session (``get_me``, ``get_pn_from_lid``, ...). Every call that needs a session first checks
  the client is connected and logged in, and raises ``NotConnected`` instead of calling.

Known limits:

* Message ids: neonize 0.5.2's ``send_message`` takes no message id. Its Go binding
  ``SendMessage(uuid, jid, message)`` calls whatsmeow without ``SendRequestExtra``; that struct
  (which has an ``ID``) is only accepted by ``send_fb_message``, which sends Facebook/Armadillo
  ``ConsumerApplication`` payloads, not ordinary WhatsApp messages. So the host's message id cannot
  reach WhatsApp, ``honours_message_ids`` is False, and the receipt carries WhatsApp's own id.
  After ``OutcomeUnknown`` the host must not resend.
* Images are sent from bytes only (neonize's URL download has no timeout; the host downloads).
* A failure of the first connection attempt (offline: a DNS error within a second; a silent
  network: about 60 s) ends the session with ``Disconnected(final=True)``; the client does not
  retry that itself. Once a session is up, whatsmeow reconnects by itself (``final=False``).
* ``RateLimited.retry_after`` is a fixed guess (``RATE_LIMIT_BACKOFF``): WhatsApp gives none.
* ``typing`` is best effort: a failed presence update is logged, not raised.
* ``AuthChanged`` comes on pairing and on the first connection only; key changes later in a
  session are left to the host's periodic save (every 5 minutes), and to the save it makes when the
  connection ends or the session stops.
* ``export_auth`` takes its snapshot in a process of its own (``session_host.whatsapp.snapshot``):
  neonize's library carries its own SQLite, whose locks Python's SQLite in the same process would
  neither see nor keep.
* A ``TemporaryBan`` (like ``LoggedOut``, ``StreamReplaced`` and every final ``Disconnected``)
  stops the client: WhatsApp closes the connection and whatsmeow does not reconnect, so the
  host has to start the session again once the ban is over.
* neonize hands events to Python one after the other from one goroutine, but the per-code QR
  callback comes from another, so a code and the pairing can cross; the handlers tolerate that (a
  code after pairing is ignored).
* In one process, all sessions share one Go runtime: a Go panic that slips past the guards takes
  every session of that process down. The host therefore runs each session's client in a worker
  process of its own (``session_host.whatsapp.worker``); this class keeps everything
  neonize-specific in plain synchronous methods (``*_sync``) and only talks to the outside through
  ``emit``, so that it runs inside such a worker unchanged.
* Stopping a client that is not paired yet (showing QR codes) does not end neonize's ``connect()``:
  its Go side waits in its QR loop, and then for a device id, without looking at the stop. The
  join gives up after ``STOP_JOIN_TIMEOUT`` (10 s), and once whatsmeow's QR time is over the Go
  side reads the removed client and panics. A worker ends its process after a stop (``os._exit``),
  so this never outlives the session there; in one process (``isolated=False``, tests) it would.
* A process that exits without stopping its clients would hang, because neonize's ``connect()``
  starts a non-daemon thread; running clients are therefore stopped when the interpreter shuts down.

Importing this module does not import neonize (importing neonize reconfigures the root logger);
the backend imports it on first use and puts the root logger back as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from session_host.whatsapp import (
    AuthChanged,
    Connected,
    Disconnected,
    Emit,
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
)
from session_host.whatsapp.snapshot import snapshot_in_own_process

if TYPE_CHECKING:
    from neonize.client import NewClient
    from neonize.proto.Neonize_pb2 import JID

logger = logging.getLogger(__name__)

T = TypeVar("T")

QR_FIRST_TIMEOUT = 60.0
QR_NEXT_TIMEOUT = 20.0
QR_CODES = 6  # whatsmeow's codes for one pairing: the first, then five more
QR_GRACE = 5.0  # seconds past a code's validity before the next one counts as missing
PAIR_WAIT = 30.0
RATE_LIMIT_BACKOFF = 60.0
LOOKUP_BATCH = 50
STOP_JOIN_TIMEOUT = 10.0


# -- importing neonize -----------------------------------------------------------------------------

_import_lock = threading.Lock()


def load_neonize() -> type[NewClient]:
    """Import neonize on first use and undo what its import does to the root logger."""
    with _import_lock:
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        try:
            from neonize.client import NewClient
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)
    return NewClient


# -- the backend -----------------------------------------------------------------------------------


class NeonizeBackend:
    name = "neonize"
    honours_message_ids = False  # neonize 0.5.2 cannot pass our message id; see the module docstring

    def __init__(
        self,
        *,
        qr_first_timeout: float = QR_FIRST_TIMEOUT,
        qr_next_timeout: float = QR_NEXT_TIMEOUT,
        pair_wait: float = PAIR_WAIT,
    ) -> None:
        self.qr_first_timeout = qr_first_timeout
        self.qr_next_timeout = qr_next_timeout
        self.pair_wait = pair_wait

    def new_client(self, user_id: str, auth_path: str, emit: Emit) -> NeonizeClient:
        return NeonizeClient(
            user_id,
            auth_path,
            emit,
            qr_first_timeout=self.qr_first_timeout,
            qr_next_timeout=self.qr_next_timeout,
            pair_wait=self.pair_wait,
        )


# -- QR codes, one at a time -----------------------------------------------------------------------


class QrWatch:
    """Reports that the QR codes ran out when no new code came in time.

    ``arm(seconds)`` at each code (a later arm replaces the earlier); ``cancel()`` on pairing or stop
    ends it without a call. The call runs in a daemon timer thread."""

    def __init__(self, expired: Callable[[], None]) -> None:
        self._expired = expired
        self._lock = threading.Lock()
        self._generation = 0
        self._timer: threading.Timer | None = None
        self._cancelled = False

    def arm(self, seconds: float) -> None:
        with self._lock:
            if self._cancelled:
                return
            if self._timer is not None:
                self._timer.cancel()
            self._generation += 1
            self._timer = threading.Timer(seconds, self._fire, args=(self._generation,))
            self._timer.daemon = True
            self._timer.name = "neonize-qr-watch"
            self._timer.start()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._timer is not None:
                self._timer.cancel()

    def _fire(self, generation: int) -> None:
        with self._lock:
            if self._cancelled or generation != self._generation:
                return
            self._cancelled = True
        self._expired()


# -- the client ------------------------------------------------------------------------------------


class NeonizeClient:
    """One account's connection through neonize; implements ``WhatsAppClient``."""

    def __init__(
        self,
        user_id: str,
        auth_path: str,
        emit: Emit,
        *,
        qr_first_timeout: float = QR_FIRST_TIMEOUT,
        qr_next_timeout: float = QR_NEXT_TIMEOUT,
        qr_grace: float = QR_GRACE,
        pair_wait: float = PAIR_WAIT,
    ) -> None:
        self.user_id = user_id
        self.auth_path = auth_path
        self._emit = emit
        self._qr_first_timeout = qr_first_timeout
        self._qr_next_timeout = qr_next_timeout
        self._qr_grace = qr_grace
        self._pair_wait = pair_wait
        self._lock = threading.RLock()  # guards the fields below; held around calls that can panic
        self._lifecycle = threading.Lock()  # serialises start and stop
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"neonize-{user_id}")
        self._thread: threading.Thread | None = None
        self._stopping = False  # stop() was called, or the connection ended
        self._ended = False  # an event that ends the session was emitted
        self._paired = False
        self._paired_jid = ""
        self._connected_once = False
        self._first_qr = threading.Event()
        self._qr_shown = 0  # codes shown since the start
        self._available_sent = False  # "available" presence sent on this connection
        self._qr_watch: QrWatch | None = None
        self._client = self._new_neonize_client()

    @property
    def neonize_client(self) -> NewClient:
        """The underlying neonize client (replaced by a fresh one when started after a stop)."""
        return self._client

    @property
    def running(self) -> bool:
        with self._lock:
            return self._running()

    # -- WhatsAppClient ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self._run(self._start_sync)

    async def stop(self) -> None:
        await self._run(self._stop_sync)

    async def logout(self) -> None:
        await self._run(self._logout_sync)

    async def pair_phone(self, phone: str) -> str:
        digits = _digits(phone)
        if not digits:
            raise ValueError(f"not a phone number: {phone!r}")
        if not self.running:
            raise NotConnected("the session is not started")
        if not await self._run(self._first_qr.wait, self._pair_wait):
            raise NotConnected("no QR code arrived yet; pairing by code needs the first one")
        code = await self._run(self._pair_phone_sync, digits)
        self._emit_event(PairCode(code=code))
        return code

    async def lookup(self, numbers: Sequence[str]) -> dict[str, str | None]:
        wanted = {number: _digits(number) for number in numbers}
        queries = sorted({digits for digits in wanted.values() if digits})
        found: dict[str, str] = {}
        for start in range(0, len(queries), LOOKUP_BATCH):
            found.update(await self._run(self._lookup_sync, queries[start : start + LOOKUP_BATCH]))
        return {number: found.get(digits) for number, digits in wanted.items()}

    async def send_text(self, jid: str, text: str, message_id: str) -> SendReceipt:
        from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message

        return await self._run(self._send_sync, jid, lambda _client: Message(conversation=text), message_id)

    async def send_image(self, jid: str, image: bytes, mimetype: str, caption: str, message_id: str) -> SendReceipt:
        if not isinstance(image, bytes | bytearray | memoryview):
            raise TypeError("send_image takes the image as bytes; the host downloads URLs itself")
        data = bytes(image)

        def build(client: NewClient) -> Any:
            return self._image_message(client, data, mimetype, caption)

        return await self._run(self._send_sync, jid, build, message_id)

    async def typing(self, jid: str, seconds: float) -> None:
        target = _parse_jid(jid)
        await self._run(self._chat_presence_sync, target, True)
        try:
            await asyncio.sleep(seconds)
        finally:
            with contextlib.suppress(NotConnected):
                await self._run(self._chat_presence_sync, target, False)

    async def export_auth(self) -> bytes | None:
        return await self._run(snapshot_in_own_process, self.auth_path)  # see session_host.whatsapp.snapshot

    # -- lifecycle (sync) --------------------------------------------------------------------------

    def _start_sync(self) -> None:
        with self._lifecycle:
            with self._lock:
                if self._running():
                    return
                if self._thread is not None:  # started before: neonize clients are not reused
                    self._client = self._new_neonize_client()
                self._stopping = False
                self._ended = False
                self._paired = False
                self._paired_jid = ""
                self._first_qr.clear()
                self._qr_shown = 0
                Path(self.auth_path).parent.mkdir(parents=True, exist_ok=True)
                client = self._client
                self._thread = threading.Thread(
                    target=self._connect_until_closed, args=(client,), name=f"neonize-{self.user_id}", daemon=True
                )
                self._thread.start()
            _live_clients.add(self)
            _stop_clients_at_exit()
            logger.info("user=%s connecting", self.user_id)

    def _stop_sync(self) -> None:
        with self._lifecycle:
            with self._lock:
                thread, watch = self._thread, self._qr_watch
                if thread is None or self._stopping:
                    return
                self._stopping = True
                self._qr_watch = None
                client = self._client
            if watch is not None:
                watch.cancel()
            client.stop()
            if thread is not threading.current_thread():
                thread.join(STOP_JOIN_TIMEOUT)
                if thread.is_alive():
                    logger.warning(
                        "user=%s neonize did not return within %.0f s of stop", self.user_id, STOP_JOIN_TIMEOUT
                    )
            _live_clients.discard(self)
            logger.info("user=%s stopped", self.user_id)

    def _stop_in_background(self) -> None:
        """Stop from a neonize callback or the QR thread, which must not wait for themselves."""
        threading.Thread(target=self._stop_sync, name=f"neonize-stop-{self.user_id}", daemon=True).start()

    def _connect_until_closed(self, client: NewClient) -> None:
        error: str | None = None
        try:
            client.connect()
        except Exception as exc:  # neonize raises NeonizeError with Go's message
            error = str(exc) or type(exc).__name__
        with self._lock:
            if self._stopping or self._ended or client is not self._client:
                return
            self._stopping = self._ended = True
            watch, self._qr_watch = self._qr_watch, None
        if watch is not None:
            watch.cancel()
        reason = readable_connect_error(error) if error else "the connection closed"
        logger.warning("user=%s connection ended: %s", self.user_id, reason)
        self._emit_event(Disconnected(reason=reason, final=True))

    def _running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    # -- calls that need a session (sync, in the thread pool) --------------------------------------

    def _require_session(self) -> NewClient:
        """The neonize client, if it is connected and logged in; else NotConnected, without
        making any call that could panic."""
        with self._lock:
            if not self._running():
                raise NotConnected("the session is not started")
            client = self._client
        if not client.is_connected:
            raise NotConnected("not connected to WhatsApp")
        if not client.is_logged_in:
            raise NotConnected("not logged in to WhatsApp")
        return client

    def _send_sync(self, jid: str, build: Callable[[NewClient], Any], message_id: str) -> SendReceipt:
        from neonize.exc import NeonizeError

        target = _parse_jid(jid)
        client = self._require_session()
        try:
            message = build(client)
        except NeonizeError as exc:  # the media upload failed; nothing was sent
            raise classify_failure(str(exc), still_connected=client.is_connected, after_send=False) from exc
        try:
            response = client.send_message(target, message)
        except NeonizeError as exc:
            failure = classify_failure(str(exc), still_connected=client.is_connected, after_send=True)
            logger.warning("user=%s send to %s failed (%s): %s", self.user_id, jid, type(failure).__name__, exc)
            raise failure from exc
        logger.debug("user=%s sent to %s whatsapp_id=%s our_id=%s", self.user_id, jid, response.ID, message_id)
        return SendReceipt(message_id=response.ID or message_id, timestamp=float(response.Timestamp or time.time()))

    @staticmethod
    def _image_message(client: NewClient, data: bytes, mimetype: str, caption: str) -> Any:
        try:
            message = client.build_image_message(data, caption=caption or None)
        except (OSError, ValueError) as exc:  # Pillow cannot read it
            raise SendRejected(f"not a readable image: {exc}") from exc
        if mimetype:
            message.imageMessage.mimetype = mimetype
        return message

    def _lookup_sync(self, digits: Sequence[str]) -> dict[str, str]:
        from neonize.exc import NeonizeError
        from neonize.utils.jid import Jid2String, JIDToNonAD

        client = self._require_session()
        try:
            answers = client.is_on_whatsapp(*(f"+{number}" for number in digits))
        except NeonizeError as exc:
            if _EMPTY_ANSWER.search(str(exc)):  # WhatsApp answered, with no entry: none of them has an account
                return {}
            failure = classify_failure(str(exc), still_connected=client.is_connected, after_send=False)
            if isinstance(failure, SendRejected):  # nothing was sent: a passing error, counted and retried
                raise WhatsAppError(f"number lookup failed: {exc}") from exc
            raise failure from exc
        found: dict[str, str] = {}
        for answer in answers:
            query = _digits(answer.Query)
            if not answer.IsIn or query not in digits:
                continue
            jid = self._phone_jid(client, answer.JID) if answer.JID.Server == "lid" else answer.JID
            found[query] = Jid2String(JIDToNonAD(jid))
        return found

    def _phone_jid(self, client: NewClient, lid: JID) -> JID:
        """The phone-number JID behind a LID, when the session can say; else the LID itself."""
        from neonize.exc import NeonizeError

        with self._lock:
            if not self._running() or not client.is_logged_in:
                return lid
            try:
                phone = client.get_pn_from_lid(lid)
            except NeonizeError as exc:
                logger.info("user=%s no phone number known for a LID: %s", self.user_id, exc)
                return lid
        return phone if phone.User else lid

    def _chat_presence_sync(self, target: JID, composing: bool) -> None:
        from neonize.exc import NeonizeError
        from neonize.utils.enum import ChatPresence, ChatPresenceMedia, Presence

        client = self._require_session()
        state = ChatPresence.CHAT_PRESENCE_COMPOSING if composing else ChatPresence.CHAT_PRESENCE_PAUSED
        try:
            if composing and not self._available_sent:
                # WhatsApp passes "typing…" on only from an account that said it is online
                # (whatsmeow's SendPresence); once per connection.
                client.send_presence(Presence.AVAILABLE)
                self._available_sent = True
            client.send_chat_presence(target, state, ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT)
        except NeonizeError as exc:
            logger.warning("user=%s typing indicator failed: %s", self.user_id, exc)

    def _logout_sync(self) -> None:
        from neonize.exc import NeonizeError

        client = self._require_session()
        with self._lock:
            self._ended = True  # whatsmeow may report the logout too: report it once, below
        try:
            client.logout()
        except NeonizeError as exc:
            with self._lock:
                self._ended = False
            raise WhatsAppError(f"logout failed: {exc}") from exc
        logger.info("user=%s logged out at WhatsApp", self.user_id)
        self._stop_sync()
        for suffix in ("", "-journal", "-wal", "-shm"):  # the database and SQLite's side files
            Path(self.auth_path + suffix).unlink(missing_ok=True)
        self._emit_event(LoggedOut(reason="logged out"))

    def _pair_phone_sync(self, digits: str) -> str:
        from neonize.exc import NeonizeError
        from neonize.utils.enum import ClientName, ClientType

        with self._lock:
            if not self._running():
                raise NotConnected("the session is not started")
            if self._paired:
                raise WhatsAppError("this session is already paired")
            client = self._client
        if not client.is_connected:
            raise NotConnected("not connected to WhatsApp")
        if client.is_logged_in:
            raise WhatsAppError("this session is already paired")
        try:
            code = client.PairPhone(digits, True, client_name=ClientName.LINUX, client_type=ClientType.CHROME)
        except NeonizeError as exc:
            raise WhatsAppError(f"pairing by phone code failed: {exc}") from exc
        logger.info("user=%s pairing code issued", self.user_id)
        return code

    # -- neonize's events (called from Go threads) -------------------------------------------------

    def _new_neonize_client(self) -> NewClient:
        client_class = load_neonize()
        from neonize.events import (
            ClientOutdatedEv,
            ConnectedEv,
            ConnectFailureEv,
            DisconnectedEv,
            LoggedOutEv,
            PairStatusEv,
            QREv,
            StreamErrorEv,
            StreamReplacedEv,
            TemporaryBanEv,
        )
        from neonize.proto.waCompanionReg.WAWebProtobufsCompanionReg_pb2 import DeviceProps

        props = DeviceProps(os="zapgate", platformType=DeviceProps.CHROME)
        # A unique id per neonize client: neonize stops the Go client by this id when the Python
        # object is collected, which must never hit a newer client of the same account.
        client = client_class(self.auth_path, props=props, uuid=f"{self.user_id}-{uuid.uuid4().hex[:12]}")
        client.qr(self._on_qr_callback)
        client.event.paircode(_ignore_pair_code)  # neonize's default logs the code
        handlers: dict[Any, Callable[[Any, Any], None]] = {
            QREv: self._on_qr,
            PairStatusEv: self._on_pair_status,
            ConnectedEv: self._on_connected,
            DisconnectedEv: self._on_disconnected,
            LoggedOutEv: self._on_logged_out,
            StreamReplacedEv: self._on_stream_replaced,
            TemporaryBanEv: self._on_temporary_ban,
            ConnectFailureEv: self._on_connect_failure,
            ClientOutdatedEv: self._on_client_outdated,
            StreamErrorEv: self._on_stream_error,
        }
        for event_type, handler in handlers.items():
            client.event(event_type)(handler)
        return client

    def _on_qr_callback(self, _client: NewClient, code: bytes) -> None:
        """neonize's per-code QR callback: one call for each code, as whatsmeow rotates them."""
        payload = code.decode(errors="replace")
        with self._lock:
            if self._paired or self._stopping or not payload:
                return
            self._qr_shown += 1
            index = self._qr_shown
            timeout = self._qr_first_timeout if index == 1 else self._qr_next_timeout
            if self._qr_watch is None:
                self._qr_watch = QrWatch(self._qr_expired)
            watch = self._qr_watch
            # Shown under the lock, so that no code is reported after the pairing that ends them.
            self._show_qr(QrCode(code=payload, timeout=timeout, index=index, total=max(QR_CODES, index)))
        self._first_qr.set()
        watch.arm(timeout + self._qr_grace)

    def _on_qr(self, _client: NewClient, event: Any) -> None:
        """neonize's QR event (the whole batch) only arrives once its Go side drains its event
        channel, that is after pairing: the codes come from ``_on_qr_callback``."""
        logger.debug("user=%s QR batch event of %d codes ignored", self.user_id, len(event.Codes))

    def _show_qr(self, qr: QrCode) -> None:
        logger.info("user=%s QR code %d of %d, valid %.0f s", self.user_id, qr.index, qr.total, qr.timeout)
        self._emit_event(qr)

    def _qr_expired(self) -> None:
        with self._lock:
            if self._paired:
                return
        self._end(QrExpired(), "the QR codes expired unscanned")

    def _on_pair_status(self, _client: NewClient, event: Any) -> None:
        from neonize.proto.Neonize_pb2 import PairStatus
        from neonize.utils.jid import Jid2String, JIDToNonAD

        if event.Status != PairStatus.SUCCESS:
            reason = f"pairing failed: {event.Error or 'unknown error'}"
            self._end(Disconnected(reason=reason, final=True), reason)
            return
        with self._lock:
            self._paired = True  # whatsmeow now restarts the connection: no new QR from here on
            self._paired_jid = Jid2String(JIDToNonAD(event.ID)) if event.ID.User else ""
            watch, self._qr_watch = self._qr_watch, None
        if watch is not None:
            watch.cancel()
        logger.info("user=%s paired jid=%s platform=%s", self.user_id, self._paired_jid, event.Platform)
        self._emit_event(AuthChanged())

    def _on_connected(self, client: NewClient, _event: Any) -> None:
        with self._lock:
            self._paired = True
            watch, self._qr_watch = self._qr_watch, None
            first = not self._connected_once
            self._connected_once = True
            self._available_sent = False  # a new connection: say it again before typing
        if watch is not None:
            watch.cancel()
        jid = self._own_jid(client)
        logger.info("user=%s connected jid=%s", self.user_id, jid)
        self._emit_event(Connected(jid=jid))
        if first:
            self._emit_event(AuthChanged())  # whatsmeow stores keys on the first connect

    def _own_jid(self, client: NewClient) -> str:
        from neonize.utils.jid import Jid2String, JIDToNonAD

        me = client.me  # set by neonize's Device event, when Go sends one
        if me is None:
            with self._lock:
                if self._running() and client is self._client and client.is_logged_in:
                    me = client.get_me()
        if me is not None and me.JID.User:
            return Jid2String(JIDToNonAD(me.JID))
        with self._lock:
            return self._paired_jid

    def _on_disconnected(self, _client: NewClient, _event: Any) -> None:
        with self._lock:
            if self._stopping or self._ended:
                return
        logger.warning("user=%s connection lost; whatsmeow reconnects", self.user_id)
        self._emit_event(Disconnected(reason="connection lost; reconnecting"))

    def _on_logged_out(self, _client: NewClient, event: Any) -> None:
        reason = _failure_reason(event.Reason, "logged out")
        self._end(LoggedOut(reason=reason), reason)

    def _on_stream_replaced(self, _client: NewClient, _event: Any) -> None:
        self._end(StreamReplaced(), "another connection took this session over")

    def _on_temporary_ban(self, _client: NewClient, event: Any) -> None:
        from neonize.proto.Neonize_pb2 import TemporaryBan as TemporaryBanProto

        code = TemporaryBanProto.TempBanReason.Name(event.Code) if event.Code else "UNKNOWN"
        reason = _TEMP_BAN_REASONS.get(code, code.lower().replace("_", " "))
        self._end(TemporaryBan(reason=reason, expires_in=float(event.Expire)), f"temporary ban: {reason}")

    def _on_connect_failure(self, _client: NewClient, event: Any) -> None:
        from neonize.proto.Neonize_pb2 import ConnectFailureReason

        name = ConnectFailureReason.Name(event.Reason) if event.Reason else "GENERIC"
        reason = _failure_reason(event.Reason, "connection refused")
        if event.Message:
            reason = f"{reason}: {event.Message}"
        if name in _LOGGED_OUT_REASONS:
            self._end(LoggedOut(reason=reason), reason)
        else:
            self._end(Disconnected(reason=f"WhatsApp refused the connection: {reason}", final=True), reason)

    def _on_client_outdated(self, _client: NewClient, _event: Any) -> None:
        reason = "WhatsApp rejects this client version as outdated; update neonize"
        self._end(Disconnected(reason=reason, final=True), reason)

    def _on_stream_error(self, _client: NewClient, event: Any) -> None:
        logger.warning("user=%s unknown stream error code=%s", self.user_id, event.Code)

    def _end(self, event: Event, reason: str) -> None:
        """Report an event after which this connection is over, then stop the client."""
        with self._lock:
            if self._stopping or self._ended:
                return
            self._ended = True
            watch, self._qr_watch = self._qr_watch, None
        if watch is not None:
            watch.cancel()
        logger.warning("user=%s session over: %s", self.user_id, reason)
        self._emit_event(event)
        self._stop_in_background()

    def _emit_event(self, event: Event) -> None:
        try:
            self._emit(event)
        except Exception:
            logger.exception("user=%s emitting %s failed", self.user_id, type(event).__name__)

    # -- helpers -----------------------------------------------------------------------------------

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, function, *args)


# -- reading neonize's errors ----------------------------------------------------------------------

_RATE_LIMITED = re.compile(r"rate-overlimit|rate.?limit|too many requests|\b429\b|resource-limit", re.I)
# whatsmeow's words once the message node went out: no answer, or the socket dropped meanwhile.
_LEFT_UNCONFIRMED = re.compile(r"message send", re.I)
# Failures that happen before anything is sent because the link is missing or not ready.
_NOT_SENT = re.compile(
    r"websocket not connected|client is nil|device JID|not logged in|info query timed out"
    r"|info query was interrupted|before info query",
    re.I,
)


# neonize's Go side reports an IsOnWhatsApp answer without entries as an error of this text.
_EMPTY_ANSWER = re.compile(r"returned nothing", re.I)


def classify_failure(text: str, *, still_connected: bool, after_send: bool) -> WhatsAppError:
    """Turn one of neonize's error messages into the boundary's error.

    ``after_send``: the message may have left (the send call itself failed, not a preparation
    step). ``still_connected``: whether the client was connected right after the failure."""
    if _RATE_LIMITED.search(text):
        return RateLimited(RATE_LIMIT_BACKOFF, reason=f"WhatsApp rate limit ({text})")
    if after_send and _LEFT_UNCONFIRMED.search(text):
        return OutcomeUnknown(f"no confirmation from WhatsApp: {text}")
    if _NOT_SENT.search(text):
        return NotConnected(text)
    if not still_connected:
        return OutcomeUnknown(f"the connection broke during the send: {text}") if after_send else NotConnected(text)
    return SendRejected(text)


def readable_connect_error(text: str) -> str:
    """A short reason for why neonize's ``connect()`` gave up."""
    lowered = text.lower()
    if "no such host" in lowered or "lookup " in lowered:
        return "cannot resolve WhatsApp's address (offline, or DNS is failing)"
    if "timeout" in lowered or "timed out" in lowered or "deadline exceeded" in lowered:
        return "timed out connecting to WhatsApp (the network drops the traffic)"
    if "connection refused" in lowered:
        return "the connection to WhatsApp was refused (a firewall or proxy?)"
    if "network is unreachable" in lowered:
        return "no network route to WhatsApp"
    if "database" in lowered:
        return f"cannot use the credentials file: {text[:200]}"
    return f"cannot connect to WhatsApp: {text[:200]}"


_LOGGED_OUT_REASONS = frozenset({"LOGGED_OUT", "MAIN_DEVICE_GONE", "UNKNOWN_LOGOUT"})
_FAILURE_REASONS = {
    "GENERIC": "connection refused",
    "LOGGED_OUT": "the device was logged out (unlinked on the phone?)",
    "TEMP_BANNED": "the account is temporarily banned",
    "MAIN_DEVICE_GONE": "the phone's WhatsApp account is gone",
    "UNKNOWN_LOGOUT": "logged out for an unknown reason",
    "CLIENT_OUTDATED": "this client version is outdated",
    "BAD_USER_AGENT": "WhatsApp rejected the client's user agent",
    "INTERNAL_SERVER_ERROR": "WhatsApp internal server error",
    "EXPERIMENTAL": "WhatsApp experimental-feature failure",
    "SERVICE_UNAVAILABLE": "WhatsApp is unavailable",
}
_TEMP_BAN_REASONS = {
    "SEND_TO_TOO_MANY_PEOPLE": "sent to too many people who do not have this number saved",
    "BLOCKED_BY_USERS": "blocked by too many users",
    "CREATED_TOO_MANY_GROUPS": "created too many groups",
    "SENT_TOO_MANY_SAME_MESSAGE": "sent the same message too many times",
    "BROADCAST_LIST": "broadcast list abuse",
}


def _failure_reason(value: int, default: str) -> str:
    from neonize.proto.Neonize_pb2 import ConnectFailureReason

    if not value:
        return default
    name = ConnectFailureReason.Name(value)
    return _FAILURE_REASONS.get(name, name.lower().replace("_", " "))


# -- small helpers ---------------------------------------------------------------------------------


def _digits(number: str) -> str:
    return re.sub(r"\D", "", number)


def _parse_jid(jid: str) -> JID:
    """``"5511999999999@s.whatsapp.net"`` as neonize's JID (a bare number means a phone JID)."""
    from neonize.utils.jid import build_jid

    user, _, server = jid.partition("@")
    user = user.split(":", 1)[0]
    if not user:
        raise ValueError(f"not a JID: {jid!r}")
    return build_jid(user, server or "s.whatsapp.net")


def _ignore_pair_code(_client: Any, _code: str, _connected: bool) -> None:
    return None


# -- stopping at interpreter exit ------------------------------------------------------------------

_live_clients: weakref.WeakSet[NeonizeClient] = weakref.WeakSet()
_exit_hook_installed = False


def _stop_clients_at_exit() -> None:
    """neonize's ``connect()`` runs Go in a non-daemon thread that only returns when stopped; the
    interpreter joins such threads before ``atexit`` runs, so stop running clients just before.
    ``threading._register_atexit`` is the hook concurrent.futures uses for the same reason."""
    global _exit_hook_installed
    register = getattr(threading, "_register_atexit", None)
    if _exit_hook_installed or register is None:
        return
    try:
        register(_stop_live_clients)
        _exit_hook_installed = True
    except RuntimeError:  # the interpreter is already shutting down
        pass


def _stop_live_clients() -> None:
    for client in list(_live_clients):
        try:
            client._stop_sync()
        except Exception:
            logger.exception("user=%s stopping at exit failed", client.user_id)

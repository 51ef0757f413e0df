"""One account's WhatsApp session as the host keeps it: start from stored credentials, follow the
client's events, write the status for the API, save the credentials whenever they change.

A session's ``ready`` event is set while it is connected and sending is not paused; the account's
sender waits on it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from infra import layout
from infra.documents import SessionState, SessionStatus, utcnow
from infra.settings import HostSettings
from session_host.auth import CredentialsUnreadable, CredentialVault, remove_local_copy
from session_host.storage import Storage
from session_host.whatsapp import (
    AuthChanged,
    Connected,
    Disconnected,
    Event,
    LoggedOut,
    PairCode,
    QrCode,
    QrExpired,
    StreamReplaced,
    TemporaryBan,
    WhatsAppBackend,
    WhatsAppClient,
)

logger = logging.getLogger(__name__)

ACTIVE_STATES = frozenset({"starting", "qr", "connected", "reconnecting", "paused"})
RETRY_BACKOFF = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0)  # seconds before the next try after a failed connect


class Session:
    def __init__(
        self,
        user_id: str,
        backend: WhatsAppBackend,
        storage: Storage,
        settings: HostSettings,
        still_mine: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.user_id = user_id
        self.still_mine = still_mine  # whether this host still holds the account's lease
        self.backend = backend
        self.storage = storage
        self.settings = settings
        self.vault = CredentialVault.for_host(storage, settings)
        self.status = SessionStatus(userId=user_id, state="disconnected", backend=backend.name, host=settings.id)
        self.ready = asyncio.Event()
        self.client: WhatsAppClient | None = None
        self.auth_path = Path(settings.work_dir) / user_id / "auth.db"
        self._tasks: list[asyncio.Task[None]] = []
        self._status_loaded = False
        self._saved_digest: str | None = None
        self._connected = False
        self._paused_until = 0.0
        self._started_at = 0.0
        self._failures = 0
        self._lock = asyncio.Lock()  # one start, stop or close at a time: two starts would make two clients
        self._retry: asyncio.TimerHandle | None = None
        self._resume_timer: asyncio.TimerHandle | None = None
        self.released = False  # another host serves the account: this object starts and writes nothing more

    @property
    def active(self) -> bool:
        return self.client is not None and self.status.state in ACTIVE_STATES

    async def start(self) -> None:
        """Connect: with the stored credentials if there are any, else by showing QR codes."""
        async with self._lock:
            if not self.active and not self.released:
                await self._start()

    async def _start(self) -> None:
        try:
            paired = await self._restore_auth()
        except CredentialsUnreadable:
            return  # the status says "failed" and why; no new pairing may overwrite the stored credentials
        if paired and self.status.pairedAt is None:  # a new host: keep when the account was paired (warm-up)
            previous = await self.storage.read(layout.session_status(self.user_id), SessionStatus)
            self.status.pairedAt = previous.pairedAt if previous else None
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()  # one per client: a closed one's late events stay out

        def emit(event: Event) -> None:  # called from the client's threads too
            loop.call_soon_threadsafe(events.put_nowait, event)

        self.client = self.backend.new_client(self.user_id, str(self.auth_path), emit)
        self._started_at = time.monotonic()
        await self._set("starting", paired=paired, detail=None, qr=None, qrExpiresAt=None, pairCode=None)
        logger.info("user=%s session starting (%s)", self.user_id, "stored credentials" if paired else "new pairing")
        self._tasks = [
            asyncio.create_task(self._follow_events(events, self.client), name=f"events-{self.user_id}"),
            asyncio.create_task(self._save_periodically(), name=f"autosave-{self.user_id}"),
        ]
        try:
            await self.client.start()
        except Exception as exc:  # not left "starting" with a client that never started: closed, and said
            await self._shut()
            if paired:
                delay = self._retry_later()
                await self._set("reconnecting", detail=f"the session could not start: {exc}; again in {delay:.0f} s")
            else:
                await self._set("failed", detail=f"the session could not start: {exc}")
            raise

    async def stop(self, state: SessionState = "disconnected", detail: str | None = None) -> None:
        """Close the connection and keep the credentials (saved once more first)."""
        async with self._lock:
            if self.released:
                return
            if self.client is not None and self._connected:
                await self.save_auth()
            await self._shut()
            await self._set(state, detail=detail, qr=None, qrExpiresAt=None, pairCode=None)
        logger.info("user=%s session stopped: %s", self.user_id, state)

    async def release(self) -> None:
        """Another host serves the account now: close the connection and write nothing more, now or
        from a timer set earlier (a retry, the end of a pause)."""
        self.released = True
        for timer in (self._retry, self._resume_timer):
            if timer is not None:
                timer.cancel()
        async with self._lock:
            await self._shut()
        logger.info("user=%s session released to another host", self.user_id)

    async def logout(self) -> None:
        """Unlink the device and delete the credentials everywhere."""
        async with self._lock:
            if self.released:
                return
            if self.client is not None:
                try:
                    await self.client.logout()
                except Exception:
                    logger.exception(
                        "user=%s logout at WhatsApp failed; forgetting the credentials anyway", self.user_id
                    )
            await self._shut()
            await self._forget("logged out through the API")

    async def pair_phone(self, phone: str) -> None:
        if self.client is None or self.status.state not in ("starting", "qr"):
            await self.start()
        if self.client is None:  # the session could not start; its status says why
            logger.warning("user=%s pairing by phone code not possible: %s", self.user_id, self.status.detail)
            return
        code = await self.client.pair_phone(phone)
        await self._set(self.status.state, pairCode=code)

    async def save_auth(self) -> None:
        """Store the credentials if they changed since the last save."""
        if self.client is None or self.released:
            return
        if self.still_mine is not None and not await self.still_mine():
            logger.warning("user=%s credentials not saved: another host serves the account now", self.user_id)
            return
        blob = await self.client.export_auth()
        if blob is None:
            return
        digest = hashlib.sha256(blob).hexdigest()
        if digest == self._saved_digest:
            return
        await self.vault.save(self.user_id, blob)
        self._saved_digest = digest
        encrypted = ", encrypted" if self.vault.encrypts else ""
        logger.info("user=%s credentials saved (%d bytes%s)", self.user_id, len(blob), encrypted)

    def pause(self, seconds: float, reason: str) -> None:
        """Hold sending for ``seconds`` (rate limit, temporary ban); the connection stays."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
        self.ready.clear()
        until = utcnow() + dt.timedelta(seconds=seconds)
        self._schedule(self._set("paused", detail=f"sending paused until {until:%H:%M:%S} UTC: {reason}"))
        if self._resume_timer is not None:
            self._resume_timer.cancel()
        self._resume_timer = asyncio.get_running_loop().call_later(
            self._paused_until - time.monotonic(), lambda: self._schedule(self._resume())
        )
        logger.warning("user=%s sending paused for %.0f s: %s", self.user_id, seconds, reason)

    # -- events --------------------------------------------------------------------------------------

    async def _follow_events(self, events: asyncio.Queue[Event], client: WhatsAppClient) -> None:
        while True:
            event = await events.get()
            if self.client is not client:  # closed, and maybe started again: not this client's session now
                return
            try:
                await self._handle(event)
            except Exception:
                logger.exception("user=%s handling %s failed", self.user_id, type(event).__name__)
            if self.client is not client:  # the event closed the session
                return

    async def _handle(self, event: Event) -> None:
        match event:
            case QrCode(timeout=timeout, index=index, total=total):
                expires = utcnow() + dt.timedelta(seconds=timeout)
                await self._set("qr", qr=event.code, qrExpiresAt=expires, detail=f"QR code {index} of {total}")
                logger.info("user=%s QR code %d of %d shown", self.user_id, index, total)
            case QrExpired():
                await self._close()
                await self._set(
                    "qr_expired",
                    qr=None,
                    qrExpiresAt=None,
                    pairCode=None,
                    detail="nobody scanned the QR code in time; open /connect again for new codes",
                )
                logger.info("user=%s QR codes expired unscanned", self.user_id)
            case PairCode(code=code):
                await self._set(self.status.state, pairCode=code)
            case Connected(jid=jid):
                self._connected = True
                self._failures = 0
                await self._resume()
                paired_at = self.status.pairedAt or utcnow()
                await self._set(
                    "connected",
                    jid=jid,
                    paired=True,
                    pairedAt=paired_at,
                    qr=None,
                    qrExpiresAt=None,
                    pairCode=None,
                    detail=None,
                )
                logger.info("user=%s connected jid=%s after %.1f s", self.user_id, jid, self._elapsed())
                await self.save_auth()
            case Disconnected(reason=reason, final=False):
                self._connected = False
                self.ready.clear()
                await self._set("reconnecting", detail=reason)
                logger.warning("user=%s connection lost: %s", self.user_id, reason)
            case Disconnected(reason=reason, final=True):
                await self._save_then_close()
                if self.status.paired:
                    delay = self._retry_later()
                    await self._set("reconnecting", detail=f"{reason}; trying again in {delay:.0f} s")
                else:
                    await self._set("failed", qr=None, qrExpiresAt=None, detail=reason)
                logger.warning("user=%s connection failed: %s", self.user_id, reason)
            case LoggedOut(reason=reason):
                await self._close()
                await self._forget(reason)
            case StreamReplaced():
                if self.still_mine is not None and not await self.still_mine():
                    await self._close()  # the credentials are the new host's to save now
                    logger.info("user=%s stream replaced by the host that now serves the account", self.user_id)
                    return
                await self._save_then_close()
                await self._set(
                    "disconnected",
                    detail="another connection took this session over; "
                    "not reconnecting (open /connect to take it back)",
                )
                logger.warning("user=%s stream replaced by another connection", self.user_id)
            case TemporaryBan(reason=reason, expires_in=expires_in):
                await self._save_then_close()  # WhatsApp closed the connection; start again once the ban is over
                self._retry_later(expires_in)
                until = utcnow() + dt.timedelta(seconds=expires_in)
                await self._set("paused", detail=f"temporary ban until {until:%Y-%m-%d %H:%M} UTC: {reason}")
                logger.warning("user=%s temporarily banned for %.0f s: %s", self.user_id, expires_in, reason)
            case AuthChanged():
                await self.save_auth()

    async def _forget(self, reason: str) -> None:
        """The pairing is gone (the connection closed): delete the credentials so the next connect
        shows a fresh QR."""
        if self.released:
            return
        await self.vault.delete(self.user_id)
        remove_local_copy(self.auth_path)
        self._saved_digest = None
        await self._set(
            "logged_out", paired=False, pairedAt=None, jid=None, qr=None, qrExpiresAt=None, pairCode=None, detail=reason
        )
        logger.warning("user=%s logged out: %s; credentials deleted", self.user_id, reason)

    async def _resume(self) -> None:
        if self.released or not self._connected or time.monotonic() < self._paused_until:
            return
        self.ready.set()
        if self.status.state == "paused":
            await self._set("connected", detail=None)

    # -- helpers -------------------------------------------------------------------------------------

    def _retry_later(self, delay: float | None = None) -> float:
        """Start the session again after ``delay``, or after a backoff that grows with each failure."""
        if delay is None:
            delay = RETRY_BACKOFF[min(self._failures, len(RETRY_BACKOFF) - 1)]
            self._failures += 1
        if self._retry is not None:
            self._retry.cancel()

        def fire() -> None:
            if self._retry is timer:  # fired: no retry is set any more, until one is set again
                self._retry = None
            self._schedule(self._start_if_idle())

        timer = self._retry = asyncio.get_running_loop().call_later(delay, fire)
        return delay

    async def _start_if_idle(self) -> None:
        if self.released:
            return
        if self.client is None and self.status.state in ("reconnecting", "paused"):
            try:
                await self.start()
            except Exception:  # a store outage, a worker that did not come up: the next retry may work
                if self._retry is None:  # (a start that failed has set one already)
                    self._retry_later()
                logger.exception("user=%s reconnecting failed; trying again later", self.user_id)

    async def _restore_auth(self) -> bool:
        """Put the stored credentials where the client reads them; False when there are none.

        Raises CredentialsUnreadable, after setting the status to "failed" with the reason."""
        try:
            restored = await self.vault.load(self.user_id)
        except CredentialsUnreadable as exc:
            await self._set("failed", paired=True, qr=None, qrExpiresAt=None, pairCode=None, detail=str(exc))
            logger.error("user=%s cannot read the stored credentials: %s", self.user_id, exc)
            raise
        self.auth_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.auth_path.parent.chmod(0o700)  # the credentials inside are the account itself
        if restored is None:
            remove_local_copy(self.auth_path)
            return False
        remove_local_copy(self.auth_path)
        with open(os.open(self.auth_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
            file.write(restored.blob)
        self._saved_digest = restored.digest if restored.current else None  # not current: re-written at next save
        return True

    async def _close(self) -> None:
        async with self._lock:
            await self._shut()

    async def _save_then_close(self) -> None:
        """The connection ended, but the client can still export what changed since the last save: the
        next start restores from the store, so whatever is not saved now would be rolled back."""
        try:
            await self.save_auth()
        except Exception:
            logger.exception("user=%s credentials not saved before closing", self.user_id)
        await self._close()

    async def _shut(self) -> None:
        """Close the connection; the caller holds the lock."""
        if self._retry is not None:  # a retry set before this close would start a session no one wants
            self._retry.cancel()
            self._retry = None
        self._connected = False
        self.ready.clear()
        client, self.client = self.client, None
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        if client is not None:
            await client.stop()

    async def _save_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.auth_save_interval)
            try:
                await self.save_auth()
            except Exception:
                logger.exception("user=%s periodic credentials save failed", self.user_id)

    async def load_status(self) -> SessionStatus:
        """Start from the stored status (whether the account is paired, its number, since when), once:
        a session new to this host must not write defaults over what an earlier host knew."""
        if not self._status_loaded:
            stored = await self.storage.read(layout.session_status(self.user_id), SessionStatus)
            if stored is not None:
                self.status = msgspec.structs.replace(stored, host=self.status.host, backend=self.status.backend)
            self._status_loaded = True
        return self.status

    async def _set(self, state: SessionState, **changes: Any) -> None:
        if self.released:
            return
        await self.load_status()
        self.status = msgspec.structs.replace(self.status, state=state, updatedAt=utcnow(), **changes)
        await self.storage.write_safely(layout.session_status(self.user_id), self.status)

    def _schedule(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        task.add_done_callback(self._said_if_failed)

    def _said_if_failed(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("user=%s timed session work failed", self.user_id, exc_info=error)

    def _elapsed(self) -> float:
        return time.monotonic() - self._started_at

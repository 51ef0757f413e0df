"""The host's main loop: restore what was running, then poll the store for session commands and
new jobs until told to stop.

Several hosts may share a bucket: each account is served by one host at a time, the one that holds
its lease (``session_host.leases``). A host takes the accounts no living host serves, at start-up
and whenever another host stops beating, and lets go of those another host has taken over. Commands
and inbox jobs are carried out by the host that serves their account.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Coroutine
from typing import Any

import msgspec

from infra import layout
from infra.documents import (
    UNPAIRED_AT_STOP,
    Connect,
    ControlJob,
    Disconnect,
    HostBeat,
    Job,
    JobState,
    Logout,
    PairPhone,
    Rejection,
    ReloadSettings,
    SessionCommand,
    SessionStatus,
    decode,
    encode,
    utcnow,
)
from infra.jobs import InvalidJob, initial_state, prepare_job, read_state, write_state
from infra.settings import Settings
from infra.store import NotFound, ObjectStore, PreconditionFailed, StoreError
from session_host.leases import Leases
from session_host.sender import AccountSender, JobRun
from session_host.sessions import ACTIVE_STATES, Session
from session_host.storage import Storage
from session_host.whatsapp import WhatsAppBackend

logger = logging.getLogger(__name__)

RESTORED_STATES = frozenset({"starting", "qr", "connected", "reconnecting", "paused", "failed"})


class Host:
    def __init__(self, settings: Settings, store: ObjectStore, backend: WhatsAppBackend) -> None:
        self.settings = settings
        self.storage = Storage(store)
        self.backend = backend
        self.sessions: dict[str, Session] = {}
        self.senders: dict[str, AccountSender] = {}
        self.leases = Leases(self.storage, settings.host.id)
        self._held: set[str] = set()  # accounts this host serves (it holds their lease)
        self._sender_tasks: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._jobs_accepted = 0
        self._started_at = utcnow()
        self._last_beat: dt.datetime | None = None

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        started = time.monotonic()
        logger.info(
            "host=%s serving store=%r whatsapp=%s", self.settings.host.id, self.storage.store, self.backend.name
        )
        await self._beat()
        await self._take_over()
        while not self._stopping.is_set():
            try:
                if await self._beat():
                    await self._check_leases()
                    await self._take_over()
                await self._poll_inbox()  # first, so that a command about a new job finds it
                await self._poll_commands()
            except StoreError as exc:
                logger.warning("store unavailable, polling again shortly: %s", exc)
            except Exception:
                logger.exception("polling the store failed; polling again shortly")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.host.poll_interval)
        await self._shutdown()
        with contextlib.suppress(StoreError):
            await self._beat(stopped=True)
        logger.info(
            "host=%s stopped after %.0f s: %d sessions, %d jobs accepted",
            self.settings.host.id,
            time.monotonic() - started,
            len(self.sessions),
            self._jobs_accepted,
        )

    async def _beat(self, stopped: bool = False) -> bool:
        """Tell the API and the other hosts that this host is alive (a beat every ``heartbeat`` s), or that
        it stopped; True when it wrote."""
        now = utcnow()
        if not stopped and self._last_beat and (now - self._last_beat).total_seconds() < self.settings.host.heartbeat:
            return False
        beat = HostBeat(
            hostId=self.settings.host.id,
            startedAt=self._started_at,
            lastSeen=now,
            staleAfter=4 * self.settings.host.heartbeat,
            sessions=sum(session.active for session in self.sessions.values()),
            stoppedAt=now if stopped else None,
        )
        await self.storage.write(layout.host_beat(self.settings.host.id), beat)
        self._last_beat = now
        return True

    # -- which accounts this host serves -------------------------------------------------------------

    async def _take_over(self) -> None:
        """Serve every paired account that should be running and that no living host serves: at
        start-up, all of them; later, those of a host that died."""
        keys = await self.storage.list(layout.SESSIONS)
        users = {layout.user_of(key, layout.SESSIONS) for key in keys if key.endswith("/auth.db")}
        users |= {layout.user_of(key, layout.QUEUE) for key in await self.storage.list(layout.QUEUE)}
        for user_id in sorted(users - self._held):
            await self._mine(user_id)

    async def _mine(self, user_id: str) -> bool:
        """Whether this host serves the account, taking it when no living host does."""
        if user_id in self._held:
            return True
        if not await self.leases.acquire(user_id):
            return False
        self._held.add(user_id)
        status = await self.storage.read(layout.session_status(user_id), SessionStatus)
        paired = await self.storage.get_bytes(layout.session_auth(user_id)) is not None
        if paired and (status is None or status.state in RESTORED_STATES):
            await self._session(user_id).start()
        elif not paired and status is not None and status.state in ACTIVE_STATES:  # its host died mid-pairing
            await self._session(user_id).stop("disconnected", UNPAIRED_AT_STOP)
        for key in await self.storage.list(f"{layout.QUEUE}{user_id}/"):
            await self._resume_job(user_id, key.rsplit("/", 1)[1])
        return True

    async def _check_leases(self) -> None:
        """Let go of the accounts another host has taken over."""
        for user_id in sorted(self._held):
            if not await self.leases.holds(user_id):
                await self._let_go(user_id)

    async def _let_go(self, user_id: str) -> None:
        logger.warning("user=%s now served by another host; letting the session go", user_id)
        self._held.discard(user_id)
        if (task := self._sender_tasks.pop(user_id, None)) is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.senders.pop(user_id, None)
        if (session := self.sessions.pop(user_id, None)) is not None:
            await session.release()

    async def _resume_job(self, user_id: str, job_id: str) -> None:
        job = await self.storage.read(layout.job(job_id), Job)
        try:
            state: JobState | None = await asyncio.to_thread(read_state, self.storage.store, job_id)
        except NotFound:
            state = None
        if job is None or state is None:
            logger.warning("user=%s job=%s queue marker without job or state; removing it", user_id, job_id)
            await self.storage.delete(layout.queue_marker(user_id, job_id))
            return
        run = JobRun(job, state)
        if run.finished:  # ended before the host stopped; only its webhook was still owed
            self._sender(user_id).notify(run)
        else:
            self._sender(user_id).add(run)

    # -- commands ------------------------------------------------------------------------------------

    async def _poll_commands(self) -> None:
        for key in await self.storage.list(layout.COMMANDS):
            user_id = layout.user_of(key, layout.COMMANDS)
            if not await self._mine(user_id):
                continue  # the host that serves the account carries it out
            data = await self.storage.get_bytes(key)
            if data is not None:
                try:
                    await self._carry_out(user_id, decode(data, SessionCommand))  # type: ignore[arg-type]
                except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                    logger.warning("user=%s bad session command %s ignored: %s", user_id, key, exc)
                except Exception:
                    logger.exception("user=%s session command %s failed", user_id, key)
            await self.storage.delete(key)

    async def _carry_out(self, user_id: str, command: SessionCommand) -> None:
        if isinstance(command, Disconnect | Logout) and not await self._known(user_id):
            logger.info("user=%s %s ignored: no such session", user_id, type(command).__name__.lower())
            return
        session = self._session(user_id)
        logger.info("user=%s command %s", user_id, type(command).__name__.lower())
        match command:
            case Connect():
                await session.start()
            case Disconnect():
                status = await session.load_status()
                if status.paired:
                    await session.stop("disconnected", "disconnected through the API; the pairing is kept")
                elif status.state != "logged_out":  # logged out, it stays so: nothing to disconnect
                    await session.stop("disconnected", "disconnected through the API before it was paired")
            case Logout():
                await session.logout()
            case PairPhone(phone=phone):  # waits for the first QR code: not in the polling loop
                self._in_background(session.pair_phone(phone), f"pair-phone-{user_id}")
            case ControlJob(jobId=job_id, action=action):
                await self._sender(user_id).control(job_id, action)
            case ReloadSettings():
                await self._sender(user_id).reload()

    # -- jobs ----------------------------------------------------------------------------------------

    async def _poll_inbox(self) -> None:
        for key in await self.storage.list(layout.INBOX):
            if not key.endswith(".json"):
                continue
            try:
                await self._accept(key)
            except StoreError:
                raise
            except Exception as exc:  # one bad document must never stop the host
                logger.exception("inbox document %s could not be accepted", key)
                await self._reject(key, key[len(layout.INBOX) :], None, f"could not be accepted: {exc}")

    async def _accept(self, key: str) -> None:
        """Take a job from the inbox. Each step can be repeated, so a crash halfway is harmless."""
        name = key[len(layout.INBOX) :]
        data = await self.storage.get_bytes(key)
        if data is None:
            return
        try:
            job = prepare_job(
                decode(data, Job), job_id=name.removesuffix(".json"), default_region=self.settings.default_country
            )
        except (msgspec.ValidationError, msgspec.DecodeError, InvalidJob) as exc:
            await self._reject(key, name, data, str(exc))
            return
        assert job.jobId is not None
        if not await self._mine(job.userId):
            return  # the host that serves the account takes it
        try:
            await self.storage.put(layout.job(job.jobId), encode(job), create_only=True)
            state = initial_state(job)
            await asyncio.to_thread(write_state, self.storage.store, state)
            await self.storage.put(layout.user_job(job.userId, job.jobId), b"")
            await self.storage.put(layout.queue_marker(job.userId, job.jobId), b"")
        except PreconditionFailed:  # accepted before, by a host that stopped halfway: carry on from there
            accepted = await self.storage.read(layout.job(job.jobId), Job)
            if accepted is not None and msgspec.structs.replace(accepted, submittedAt=None) != msgspec.structs.replace(
                job, submittedAt=None
            ):
                await self._reject(key, name, data, f"jobId {job.jobId!r} is already used by another job")
                return
            job = accepted or job
            try:
                state = await asyncio.to_thread(read_state, self.storage.store, job.jobId or "")
            except NotFound:
                state = initial_state(job)
                await asyncio.to_thread(write_state, self.storage.store, state)
            await self.storage.put(layout.user_job(job.userId, job.jobId or ""), b"")
            await self.storage.put(layout.queue_marker(job.userId, job.jobId or ""), b"")
        await self.storage.delete(key)
        self._jobs_accepted += 1
        if state.status not in ("done", "failed", "cancelled"):
            self._sender(job.userId).add(JobRun(job, state))

    async def _reject(self, key: str, name: str, data: bytes | None, reason: str) -> None:
        data = data if data is not None else await self.storage.get_bytes(key)
        if data is not None:
            await self.storage.put(layout.rejected(name), data)
        await self.storage.write(layout.rejection(name), Rejection(key=key, reason=reason, rejectedAt=utcnow()))
        await self.storage.delete(key)
        logger.warning("inbox document %s rejected: %s", key, reason)

    # -- helpers -------------------------------------------------------------------------------------

    def _session(self, user_id: str) -> Session:
        if user_id not in self.sessions:
            self.sessions[user_id] = Session(
                user_id, self.backend, self.storage, self.settings.host, still_mine=lambda: self.leases.holds(user_id)
            )
        return self.sessions[user_id]

    async def _known(self, user_id: str) -> bool:
        return user_id in self.sessions or await self.storage.get_bytes(layout.session_status(user_id)) is not None

    def _in_background(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    def _sender(self, user_id: str) -> AccountSender:
        if user_id not in self.senders:
            sender = AccountSender(
                user_id,
                self.sessions,
                self.storage,
                self.settings.host,
                self.backend.honours_message_ids,
                self.settings.webhook_secret,
            )
            self.senders[user_id] = sender
            self._sender_tasks[user_id] = asyncio.create_task(self._keep_sending(sender), name=f"sender-{user_id}")
        return self.senders[user_id]

    async def _keep_sending(self, sender: AccountSender) -> None:
        while True:
            try:
                await sender.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("user=%s sender crashed; restarting it in 1 s", sender.user_id)
                await asyncio.sleep(1)

    async def _shutdown(self) -> None:
        for task in self._sender_tasks.values():
            task.cancel()
        await asyncio.gather(*self._sender_tasks.values(), return_exceptions=True)
        for session in self.sessions.values():
            if session.active:
                try:
                    if session.status.paired:
                        await session.stop(
                            "reconnecting", "the session host stopped; it reconnects when the host starts again"
                        )
                    else:  # nothing to reconnect with: the QR codes end with the host
                        await session.stop("disconnected", UNPAIRED_AT_STOP)
                except Exception:
                    logger.exception("user=%s clean stop failed", session.user_id)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        logger.error("%s failed: %s", task.get_name(), error)

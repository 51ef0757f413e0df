"""The host's main loop: restore what was running, then poll the store for session commands and
new jobs until told to stop.

Today one host serves every account in the bucket. Several hosts sharing a bucket will each take
a lease per account (create-only lease objects, since If-Match is no lock on every S3 server) and
serve only the accounts they hold; ``_serves`` is where that check goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import msgspec

from infra import layout
from infra.documents import (
    Connect,
    ControlJob,
    Disconnect,
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
from session_host.sender import AccountSender, JobRun
from session_host.sessions import Session
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
        self._sender_tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._jobs_accepted = 0

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        started = time.monotonic()
        logger.info(
            "host=%s serving store=%r whatsapp=%s", self.settings.host.id, self.storage.store, self.backend.name
        )
        await self._restore()
        while not self._stopping.is_set():
            try:
                await self._poll_inbox()  # first, so that a command about a new job finds it
                await self._poll_commands()
            except StoreError as exc:
                logger.warning("store unavailable, polling again shortly: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.host.poll_interval)
        await self._shutdown()
        logger.info(
            "host=%s stopped after %.0f s: %d sessions, %d jobs accepted",
            self.settings.host.id,
            time.monotonic() - started,
            len(self.sessions),
            self._jobs_accepted,
        )

    # -- start-up ------------------------------------------------------------------------------------

    async def _restore(self) -> None:
        """Reconnect every paired account that was not disconnected on purpose; resume its jobs."""
        keys = await self.storage.list(layout.SESSIONS)
        users_with_auth = {layout.user_of(key, layout.SESSIONS) for key in keys if key.endswith("/auth.db")}
        for user_id in sorted(users_with_auth):
            status = await self.storage.read(layout.session_status(user_id), SessionStatus)
            if status is None or status.state in RESTORED_STATES:
                await self._session(user_id).start()
        for key in await self.storage.list(layout.QUEUE):
            user_id, job_id = key[len(layout.QUEUE) :].split("/", 1)
            await self._resume_job(user_id, job_id)

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
        session = self._session(user_id)
        logger.info("user=%s command %s", user_id, type(command).__name__.lower())
        match command:
            case Connect():
                await session.start()
            case Disconnect():
                await session.stop("disconnected", "disconnected through the API; the pairing is kept")
            case Logout():
                await session.logout()
            case PairPhone(phone=phone):
                await session.pair_phone(phone)
            case ControlJob(jobId=job_id, action=action):
                await self._sender(user_id).control(job_id, action)
            case ReloadSettings():
                await self._sender(user_id).reload()

    # -- jobs ----------------------------------------------------------------------------------------

    async def _poll_inbox(self) -> None:
        for key in await self.storage.list(layout.INBOX):
            if key.endswith(".json"):
                await self._accept(key)

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
        try:
            await self.storage.put(layout.job(job.jobId), encode(job), create_only=True)
            state = initial_state(job)
            await asyncio.to_thread(write_state, self.storage.store, state)
            await self.storage.put(layout.user_job(job.userId, job.jobId), b"")
            await self.storage.put(layout.queue_marker(job.userId, job.jobId), b"")
        except PreconditionFailed:  # accepted before, by a host that stopped halfway: carry on from there
            job = await self.storage.read(layout.job(job.jobId), Job) or job
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

    async def _reject(self, key: str, name: str, data: bytes, reason: str) -> None:
        await self.storage.put(layout.rejected(name), data)
        await self.storage.write(layout.rejection(name), Rejection(key=key, reason=reason, rejectedAt=utcnow()))
        await self.storage.delete(key)
        logger.warning("inbox document %s rejected: %s", key, reason)

    # -- helpers -------------------------------------------------------------------------------------

    def _session(self, user_id: str) -> Session:
        if user_id not in self.sessions:
            self.sessions[user_id] = Session(user_id, self.backend, self.storage, self.settings.host)
        return self.sessions[user_id]

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
            task = asyncio.create_task(self._keep_sending(sender), name=f"sender-{user_id}")
            self._sender_tasks.append(task)
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
        for task in self._sender_tasks:
            task.cancel()
        await asyncio.gather(*self._sender_tasks, return_exceptions=True)
        for session in self.sessions.values():
            if session.active:
                try:
                    await session.stop(
                        "reconnecting", "the session host stopped; it reconnects when the host starts again"
                    )
                except Exception:
                    logger.exception("user=%s clean stop failed", session.user_id)

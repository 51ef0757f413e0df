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
import functools
import logging
import time
from collections.abc import Awaitable, Callable

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
JOB_COMMAND_WAIT = 300.0  # seconds a command about a job still in the inbox waits for the job to be accepted


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
        self._session_work: dict[str, asyncio.Task[None]] = {}  # each account's latest session work, run in turn
        self._session_tasks: set[asyncio.Task[None]] = set()  # all of it, the latest's predecessors too
        self._commands_running: set[str] = set()  # keys of the commands carried out off the polling loop
        self._commands_waiting: dict[str, float] = {}  # job commands waiting for their job: since when
        self._lease_check: asyncio.Task[None] | None = None
        self._take_over_due = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stopped_polling = asyncio.Event()
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
        beating = asyncio.create_task(self._keep_beating(), name="heartbeat")
        try:
            while not self._stopping.is_set():
                try:
                    await self._poll()
                except StoreError as exc:
                    logger.warning("store unavailable, polling again shortly: %s", exc)
                except Exception:
                    logger.exception("polling the store failed; polling again shortly")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.settings.host.poll_interval)
            await self._shutdown()  # still beating: its accounts are not taken while their sessions close
        except asyncio.CancelledError:  # dies: with everything it runs, and no goodbye
            for task in (beating, self._lease_check, *self._session_tasks, *self._sender_tasks.values()):
                if task is not None:
                    task.cancel()
            raise
        self._stopped_polling.set()
        await beating  # ends after the beat it may be writing, which must not land after the last one
        if self._lease_check is not None:
            self._lease_check.cancel()
            await asyncio.gather(self._lease_check, return_exceptions=True)
        with contextlib.suppress(StoreError):
            await self._beat(stopped=True)
        logger.info(
            "host=%s stopped after %.0f s: %d sessions, %d jobs accepted",
            self.settings.host.id,
            time.monotonic() - started,
            len(self.sessions),
            self._jobs_accepted,
        )

    async def _poll(self) -> None:
        if self._last_beat is None:
            return  # nothing is taken before the other hosts can see this host alive
        if self._take_over_due.is_set():
            self._take_over_due.clear()
            await self._take_over()
        await self._poll_inbox()  # first, so that a command about a new job finds it
        await self._poll_commands()

    async def _keep_beating(self) -> None:
        """Beat every ``heartbeat`` s whatever the polling loop is busy with, and check the leases after
        each beat, in a task of their own: many accounts take a while to check."""
        while not self._stopped_polling.is_set():
            try:
                await self._beat()
            except StoreError as exc:
                logger.warning("host=%s heartbeat not written: %s", self.settings.host.id, exc)
            except Exception:
                logger.exception("host=%s heartbeat not written", self.settings.host.id)
            else:
                if self._lease_check is None or self._lease_check.done():
                    self._lease_check = asyncio.create_task(self._check_leases(), name="lease-check")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped_polling.wait(), self.settings.host.heartbeat)

    async def _beat(self, stopped: bool = False) -> None:
        """Tell the API and the other hosts that this host is alive, or that it stopped."""
        now = utcnow()
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
        try:
            await self._serve(user_id)
        except Exception as exc:  # held but not served would be for good: the next take-over tries again
            logger.warning(
                "user=%s could not be served; trying again at the next heartbeat: %s",
                user_id,
                exc,
                exc_info=not isinstance(exc, StoreError),
            )
            await self._drop(user_id)
            return False
        return True

    async def _serve(self, user_id: str) -> None:
        """Serve an account just taken: its session as it was left, its queued jobs."""
        status = await self.storage.read(layout.session_status(user_id), SessionStatus)
        paired = await self.storage.get_bytes(layout.session_auth(user_id)) is not None
        if user_id not in self._held:
            return  # let go meanwhile
        session = self._session(user_id)
        if paired and (status is None or status.state in RESTORED_STATES):
            self._in_turn(user_id, functools.partial(self._restore, user_id, session), "restore")
        elif not paired and status is not None and status.state in ACTIVE_STATES:  # its host died mid-pairing
            self._in_turn(user_id, functools.partial(session.stop, "disconnected", UNPAIRED_AT_STOP), "stop")
        for key in await self.storage.list(f"{layout.QUEUE}{user_id}/"):
            await self._resume_job(user_id, key.rsplit("/", 1)[1])

    async def _restore(self, user_id: str, session: Session) -> None:
        try:
            await session.start()
        except Exception as exc:
            logger.warning("user=%s session could not start; trying again at the next heartbeat: %s", user_id, exc)
            if self.sessions.get(user_id) is session:
                await self._drop(user_id)

    async def _check_leases(self) -> None:
        """Let go of the accounts another host has taken over; then look for accounts to take."""
        try:
            for user_id in sorted(self._held):
                if user_id in self._held and not await self.leases.holds(user_id):
                    logger.warning("user=%s now served by another host; letting the session go", user_id)
                    await self._drop(user_id)
        except StoreError as exc:
            logger.warning("host=%s leases not checked: %s", self.settings.host.id, exc)
        finally:
            self._take_over_due.set()

    async def _drop(self, user_id: str) -> None:
        """Stop serving the account, writing nothing more for it."""
        self._held.discard(user_id)
        if (task := self._sender_tasks.pop(user_id, None)) is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if (sender := self.senders.pop(user_id, None)) is not None:
            await sender.close()
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
        if user_id not in self._held:
            return  # let go meanwhile: the host that serves the account resumes it
        run = JobRun(job, state)
        if not run.finished:
            self._sender(user_id).add(run)
        elif run.state.webhook is not None:  # ended before the host stopped; only its webhook was still owed
            self._sender(user_id).notify(run)
        else:  # ended, and the host stopped before it removed the marker
            await self.storage.delete(layout.queue_marker(user_id, job_id))

    # -- commands ------------------------------------------------------------------------------------

    async def _poll_commands(self) -> None:
        for key in await self.storage.list(layout.COMMANDS):
            user_id = layout.user_of(key, layout.COMMANDS)
            if key in self._commands_running or not await self._mine(user_id):
                continue  # under way, or for the host that serves the account
            data = await self.storage.get_bytes(key)
            try:
                command = decode(data, SessionCommand) if data is not None else None  # type: ignore[arg-type]
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                logger.warning("user=%s bad session command %s ignored: %s", user_id, key, exc)
                await self.storage.delete(key)
                continue
            if isinstance(command, ControlJob | ReloadSettings) or command is None:
                await self._command(key, user_id, command)
            else:  # starting or stopping a session may take tens of seconds: off the polling loop
                self._commands_running.add(key)
                self._in_turn(user_id, functools.partial(self._command, key, user_id, command), "command")

    async def _command(self, key: str, user_id: str, command: SessionCommand | None) -> None:
        """Carry a command out and delete it, unless it has to wait for a later poll."""
        try:
            try:
                done = command is None or await self._carry_out(key, user_id, command)
            except Exception:
                logger.exception("user=%s session command %s failed", user_id, key)
                done = True
            if done:
                await self.storage.delete(key)
                self._commands_waiting.pop(key, None)
        finally:
            self._commands_running.discard(key)

    async def _carry_out(self, key: str, user_id: str, command: SessionCommand) -> bool:
        """Carry the command out; False when it has to wait for a later poll."""
        if isinstance(command, ControlJob) and await self._job_still_coming(key, user_id, command.jobId):
            return False
        if isinstance(command, Disconnect | Logout) and not await self._known(user_id):
            logger.info("user=%s %s ignored: no such session", user_id, type(command).__name__.lower())
            return True
        if user_id not in self._held:
            return False  # let go meanwhile: the host that serves the account now carries it out
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
            case PairPhone(phone=phone):
                await session.pair_phone(phone)
            case ControlJob(jobId=job_id, action=action):
                await self._sender(user_id).control(job_id, action)
            case ReloadSettings():
                await self._sender(user_id).reload()
        return True

    async def _job_still_coming(self, key: str, user_id: str, job_id: str) -> bool:
        """Whether a command about a job should wait for the job: read before the job was accepted, it
        finds the job still in the inbox. It waits JOB_COMMAND_WAIT seconds at most."""
        sender = self.senders.get(user_id)
        if sender is not None and any(run.id == job_id for run in sender.runs):
            return False
        if not await asyncio.to_thread(self.storage.store.exists, layout.inbox(job_id)):
            return False
        since = self._commands_waiting.setdefault(key, time.monotonic())
        if time.monotonic() - since < JOB_COMMAND_WAIT:
            return True
        logger.warning(
            "user=%s job=%s still in the inbox after %.0f s; command %s waits no longer",
            user_id,
            job_id,
            JOB_COMMAND_WAIT,
            key,
        )
        return False

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
        try:  # in a thread: templates for 100,000 contacts keep the CPU busy for a while
            job = await asyncio.to_thread(self._prepare, data, name.removesuffix(".json"))
        except (msgspec.ValidationError, msgspec.DecodeError, InvalidJob) as exc:
            await self._reject(key, name, data, str(exc))
            return
        assert job.jobId is not None
        if not await self._mine(job.userId):
            return  # the host that serves the account takes it
        try:
            await self.storage.put(layout.job(job.jobId), encode(job), create_only=True)
            state = await asyncio.to_thread(initial_state, job)
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
        if state.status not in ("done", "failed", "cancelled") and job.userId in self._held:
            self._sender(job.userId).add(JobRun(job, state))

    def _prepare(self, data: bytes, job_id: str) -> Job:
        return prepare_job(decode(data, Job), job_id=job_id, default_region=self.settings.default_country)

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

    def _in_turn(self, user_id: str, work: Callable[[], Awaitable[None]], name: str) -> None:
        """Run ``work`` in a task of its own, after the account's earlier session work: commands keep
        their order, and one account's slow start holds up no other."""
        previous = self._session_work.get(user_id)

        async def after_previous() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            await work()

        task = asyncio.create_task(after_previous(), name=f"{name}-{user_id}")
        self._session_work[user_id] = task
        self._session_tasks.add(task)
        task.add_done_callback(self._session_tasks.discard)
        task.add_done_callback(functools.partial(self._work_done, user_id))
        task.add_done_callback(_log_failure)

    def _work_done(self, user_id: str, task: asyncio.Task[None]) -> None:
        if self._session_work.get(user_id) is task:
            del self._session_work[user_id]

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
        tasks = [*self._session_tasks, *self._sender_tasks.values()]  # unfinished commands stay in the store
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for session in list(self.sessions.values()):
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

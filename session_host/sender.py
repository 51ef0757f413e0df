"""One sending queue per account: every job of a user goes through the account's pace.

Order: single sends before campaigns, campaigns first come first served, one recipient at a time,
so a single send can slip in between two messages of a running campaign (still after the gap).

Pace (the original's antiBanSettings, in ms): after a message, a random pause in
[randomDelayMin, randomDelayMax]; after every batchSize messages of a job, batchDelayMs instead.
The pause is kept per *account*: a second campaign of the same account waits as long as the first
would, and the next message never follows the previous one sooner than its job's randomDelayMin.
A recipient who is not on WhatsApp gets nothing and costs no pause. The pace is kept across a
restart or a takeover too: when the account's last message left and when its next may are written
with its daily count (``session_host.limits.AccountCount``), and a job's place in its batch is worked
out from the messages it has sent.

A pause or a cancel wakes the sender from its pause between messages. Both are written to the job's
state at once: a cancel marks everyone not already on their way ``skipped``, so that a host stopped
before the job's end finishes it cancelled (as it finishes a failed job whose summary it did not
write: the results are written before the summary).

Delivery integrity: each recipient's message id is fixed when the job is accepted. After every
outcome the job's state is written to the store before the next message leaves. When the link
breaks after a message left (OutcomeUnknown) the recipient stays pending and is sent again with
the same id once the session is back, which WhatsApp de-duplicates; a backend that cannot pass our
id (neonize 0.5.2) reports the recipient as ``unknown`` instead of risking a second message. With
such a backend the host also writes ``sendingSince`` before each message leaves, so that a host
killed between the send and its checkpoint leaves a trace: the host that resumes the job reports
that recipient ``unknown`` too (``_settle_interrupted``). That costs one more checkpoint a message.

A checkpoint writes the job's summary and the one chunk of results that changed
(``infra.jobs.write_state``), so its cost does not grow with the size of the campaign.

The account's own limits (daily cap, warm-up, quiet hours: ``session_host.limits``) hold every
job of the account; a job waits, with the reason in its state, while one of them holds.

A failure the backend reports without a kind of its own (a timeout, a server error) is taken as
passing: the recipient is tried again after RETRY_BASE seconds, doubling each time, at most
MAX_ATTEMPTS times in all; then it is ``failed`` with the last reason (``unknown`` when one of the
attempts may have arrived). An unexpected error (a fault in our code or the backend's library) is
taken the same way before the message leaves, and as OutcomeUnknown once it may have left.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import Callable

from infra import layout
from infra.documents import (
    FINAL_JOB_STATUSES,
    AccountSettings,
    AntiBanSettings,
    Job,
    JobState,
    RecipientResult,
    utcnow,
)
from infra.jobs import chunk_of, encode_state, render, write_objects
from infra.settings import HostSettings, Secret
from session_host import webhooks
from session_host.limits import AccountCount, AccountLimits, Block
from session_host.media import MediaError, fetch_image
from session_host.sessions import Session
from session_host.storage import Storage
from session_host.whatsapp import (
    NotConnected,
    OutcomeUnknown,
    RateLimited,
    SendRejected,
    WhatsAppClient,
    WhatsAppError,
)

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
RETRY_BASE = 2.0  # seconds before the second attempt after a passing failure, doubling after each
RETRY_MAX = 120.0
_WAIT_TICK = 0.5
_SESSION_LOOK = 1.0  # seconds between two looks at the session during a long pause
_SAY_PACE_AFTER = 5.0  # a wait for the account's pace at least this long is said in the job's detail
_PACE_DETAIL = "keeping the account's pace"
CANCELLED = "the job was cancelled"  # the reason of a recipient skipped by a cancel
_JOB_FAILED = "not sent: the job failed"  # ... of one skipped because the job failed, then the reason


class JobRun:
    """A job being worked on: the accepted document and its progress."""

    def __init__(self, job: Job, state: JobState) -> None:
        self.job = job
        self.state = state
        self.image: tuple[bytes, str] | None = None
        self.prepared = False
        # Messages the job has sent, for its place in the batch; from the results after a restart.
        self.sent_in_batch = sum(result.status in ("sent", "unknown") for result in state.results)
        self.started = time.monotonic()
        self.writing = asyncio.Lock()
        # A cancel written to the store (control) before a restart is carried out after it.
        self.cancelling = any(result.error == CANCELLED for result in state.results if result.status == "skipped")
        self.retry_at = 0.0  # after a passing failure, no attempt before this (monotonic clock)
        self.sending: RecipientResult | None = None  # the recipient whose message is on its way
        self.uncertain: set[int] = set()  # recipients an attempt may have reached (OutcomeUnknown)
        # WhatsApp accounts already sent to, and at which position: two spellings of one number that
        # the lookup resolves to the same JID get one message.
        self.reached = {r.jid: r.index for r in state.results if r.jid and r.status in ("sent", "unknown")}

    @property
    def id(self) -> str:
        return self.state.jobId

    @property
    def finished(self) -> bool:
        return self.state.status in FINAL_JOB_STATUSES

    @property
    def held(self) -> bool:
        """Paused or cancelled: no new message may leave."""
        return self.cancelling or self.state.status == "paused"

    def next_pending(self) -> RecipientResult | None:
        return next((result for result in self.state.results if result.status == "pending"), None)

    def skip_pending(self, keep: RecipientResult | None = None) -> None:
        """The job was cancelled: no one still pending (but ``keep``) gets a message. One whose message
        may have left (a host died while sending it, or its link broke after it left) is ``unknown``."""
        for result in self.state.results:
            if result.status != "pending" or result is keep:
                continue
            if result.sendingSince is not None or result.index in self.uncertain:
                self.mark_unknown(result, "the job was cancelled after this message may have left; it is not resent")
            else:
                result.status, result.error = "skipped", CANCELLED

    def mark_unknown(self, result: RecipientResult, reason: str) -> None:
        """``result``'s message may have arrived, and is not sent again."""
        result.status, result.error, result.sendingSince = "unknown", reason, None
        if result.jid:
            self.reached.setdefault(result.jid, result.index)


class Pacer:
    """The account's pace across all its jobs."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last_sent: float | None = None
        self.next_at = 0.0

    def wait_before(self, settings: AntiBanSettings) -> float:
        """Seconds to wait before the next message of a job with ``settings``."""
        if self.last_sent is None:
            return 0.0
        earliest = max(self.next_at, self.last_sent + settings.randomDelayMin / 1000)
        return max(0.0, earliest - self.clock())

    def record_sent(self, run: JobRun) -> float:
        """A message of ``run`` left now; the gap, in seconds, before the account's next."""
        settings = run.job.antiBanSettings
        run.sent_in_batch += 1
        if run.sent_in_batch % settings.batchSize == 0:
            gap_ms: float = settings.batchDelayMs
        else:
            gap_ms = random.uniform(settings.randomDelayMin, settings.randomDelayMax)
        self.last_sent = self.clock()
        self.next_at = self.last_sent + gap_ms / 1000
        return gap_ms / 1000

    def restore(self, count: AccountCount, now: dt.datetime) -> None:
        """Go on from the pace kept in the store by an earlier host, unless this one has sent since."""
        if self.last_sent is not None or count.lastSentAt is None:
            return
        self.last_sent = self.clock() - (now - count.lastSentAt).total_seconds()
        self.next_at = self.clock() + ((count.nextAt or count.lastSentAt) - now).total_seconds()


def typing_seconds(settings: AntiBanSettings, text: str) -> float:
    """How long "typing…" shows before a message: longer for longer texts, as a person types
    (half a second plus one for every 40 characters, at most 8 s), and never longer than the
    job's shortest pause, out of which it is taken."""
    if not settings.typing:
        return 0.0
    return min(0.5 + len(text) / 40, 8.0, settings.randomDelayMin / 1000)


class AccountSender:
    def __init__(
        self,
        user_id: str,
        sessions: dict[str, Session],
        storage: Storage,
        settings: HostSettings,
        honours_message_ids: bool,
        webhook_secret: Secret | None = None,
    ) -> None:
        self.user_id = user_id
        self.sessions = sessions
        self.storage = storage
        self.settings = settings
        self.honours_message_ids = honours_message_ids
        self.pacer = Pacer()
        self.webhook_secret = webhook_secret
        self.limits: AccountLimits | None = None
        self.runs: list[JobRun] = []
        self._wakeup = asyncio.Event()
        self._notifying: set[asyncio.Task[None]] = set()

    def add(self, run: JobRun) -> None:
        if any(existing.id == run.id for existing in self.runs):
            return
        self.runs.append(run)
        self._wakeup.set()
        logger.info(
            "user=%s job=%s queued: %d recipients (%s)", self.user_id, run.id, len(run.state.results), run.job.kind
        )

    async def reload(self) -> None:
        """Read the account's settings from the store; the first time, today's count and the pace too.
        Later the count in memory is the newer one: this host alone writes it while it serves the account."""
        settings = await self.storage.read(layout.account_settings(self.user_id), AccountSettings)
        stored = None if self.limits else await self.storage.read(layout.daily_count(self.user_id), AccountCount)
        count: AccountCount | None
        if self.limits is not None:  # loaded before, or by another reload while this one read: newer
            count = self.limits.count
        else:
            count = stored
            if stored is not None:
                self.pacer.restore(stored, utcnow())
        self.limits = AccountLimits(settings or AccountSettings(), count)
        self._wakeup.set()

    async def run(self) -> None:
        if self.limits is None:
            await self.reload()
        while True:
            self._wakeup.clear()  # a change from here on ends the step's wait (_nap) at once
            run = self._next_run()
            if run is None:
                await self._wakeup.wait()
                continue
            await self._step(run)

    async def control(self, job_id: str, action: str) -> None:
        """Pause, resume or cancel one of this account's jobs."""
        run = next((run for run in self.runs if run.id == job_id), None)
        if run is None or run.finished:
            logger.info("user=%s job=%s %s ignored: the job is not running here", self.user_id, job_id, action)
            return
        if action == "pause":
            run.state.status, run.state.detail = "paused", "paused through the API"
            await self._checkpoint(run)
        elif action == "resume" and run.state.status == "paused":
            run.state.status, run.state.detail = "queued", None
            run.state.senderJid = None  # from the number the account has now
            await self._checkpoint(run)
        elif action == "cancel":
            # No one not already on their way gets a message, and the store says so at once, so that a
            # host stopped now finishes the job cancelled; the sending loop ends it (after that message).
            run.cancelling = True
            run.skip_pending(keep=run.sending)
            await self._checkpoint(run, all_results=True)
        logger.info("user=%s job=%s %s", self.user_id, job_id, action)
        self._wakeup.set()

    def _next_run(self) -> JobRun | None:
        self.runs = [run for run in self.runs if not run.finished]
        ready = [run for run in self.runs if run.state.status != "paused" or run.cancelling]
        cancelling = [run for run in ready if run.cancelling]  # finished at once, even behind another job
        singles = [run for run in ready if run.job.kind == "single"]
        return next(iter(cancelling or singles or ready), None)

    # -- one step: prepare, wait, or send to one recipient --------------------------------------------

    async def _step(self, run: JobRun) -> None:
        if run.cancelling:
            await self._cancel(run)
            return
        if (wait := run.retry_at - time.monotonic()) > 0:  # a passing failure: back off, then try again
            await self._nap(min(wait, _WAIT_TICK))
            return
        if not run.prepared:
            await self._prepare(run)
            return
        result = run.next_pending()
        if result is None:
            await self._finish(run, *_outcome(run))
            return
        session = self.sessions.get(self.user_id)
        if session is None or not session.ready.is_set():
            await self._wait_for_session(run, session)
            return
        assert self.limits is not None
        if (block := self.limits.blocked(utcnow(), session.status.pairedAt)) is not None:
            await self._wait_for_limit(run, block)
            return
        if (jid := session.status.jid) and run.state.senderJid is None:
            run.state.senderJid = jid  # written with the next checkpoint
        elif jid and jid != run.state.senderJid:
            await self._pause_for_new_number(run, jid)
            return
        if result.sendingSince is not None:  # a send of this life that ended with no outcome written
            await self._settle_interrupted(run)
            return
        if run.state.status != "running":
            run.state.status, run.state.detail = "running", None
            await self._checkpoint(run)
            await self._queue_the_others(run)
        await self._deliver(run, result, session)

    async def _queue_the_others(self, running: JobRun) -> None:
        """One job of the account sends at a time: the others that said they were running or waiting
        are queued behind it now."""
        for run in self.runs:
            if run is not running and not run.finished and run.state.status in ("running", "waiting"):
                run.state.status, run.state.detail = "queued", f"behind job {running.id} of the same account"
                await self._checkpoint(run)

    async def _pause_for_new_number(self, run: JobRun, jid: str) -> None:
        """The account was paired again, with another phone: its contacts would hear from a number
        they did not hear from before. The job waits for someone to say so (resume)."""
        number, before = jid.split("@")[0], (run.state.senderJid or "").split("@")[0]
        run.state.status = "paused"
        run.state.detail = (
            f"the account is now paired with another number ({number}); this job began sending from {before}. "
            "Resume it to send the rest from the new number"
        )
        logger.warning("user=%s job=%s paused: sender changed from %s to %s", self.user_id, run.id, before, number)
        await self._checkpoint(run)

    async def _cancel(self, run: JobRun) -> None:
        run.skip_pending()
        await self._finish(run, "cancelled", "cancelled through the API", all_results=True)

    async def _settle_interrupted(self, run: JobRun) -> None:
        """A recipient whose send began in an earlier life of the job (the host died before writing
        its outcome) may have got the message: resend it with the same id where the backend honours
        ids, report it ``unknown`` otherwise."""
        interrupted = [r for r in run.state.results if r.status == "pending" and r.sendingSince is not None]
        for result in interrupted:
            began = result.sendingSince
            result.sendingSince = None
            if self.honours_message_ids:
                result.error = "the host stopped while sending; sending again with the same message id"
            else:
                run.mark_unknown(
                    result,
                    f"the host stopped while this message was being sent ({began:%Y-%m-%d %H:%M:%S} UTC);"
                    " it may have arrived, so it is not resent",
                )
            logger.warning("user=%s job=%s recipient %d: %s", self.user_id, run.id, result.index, result.error)
        if interrupted:
            await self._checkpoint(run, all_results=True)

    async def _prepare(self, run: JobRun) -> None:
        """Settle what an earlier life of the job left in flight, then fetch the image once for the
        whole job, before anyone gets anything."""
        await self._settle_interrupted(run)
        if run.job.imageUrl is not None and run.next_pending() is not None:
            try:
                run.image = await fetch_image(
                    run.job.imageUrl, max_bytes=self.settings.image_max_bytes, timeout=self.settings.image_timeout
                )
            except MediaError as exc:
                for result in run.state.results:  # no one is left pending by a job that is over
                    if result.status == "pending":
                        result.status, result.error = "skipped", f"{_JOB_FAILED} (image: {exc})"
                await self._finish(run, "failed", f"image: {exc}", all_results=True)
                return
        run.prepared = True
        if run.state.startedAt is None:
            run.state.startedAt = utcnow()

    async def _wait_for_session(self, run: JobRun, session: Session | None) -> None:
        state = "not started" if session is None else session.status.state
        await self._mark_waiting(f"the session is {state}; sending resumes when it is connected")
        if session is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.ready.wait(), _WAIT_TICK)
        else:
            await asyncio.sleep(_WAIT_TICK)

    async def _wait_for_limit(self, run: JobRun, block: Block) -> None:
        await self._mark_waiting(block.reason, not_before=block.until)
        await self._nap(min((block.until - utcnow()).total_seconds(), 5.0))  # new settings wake it early

    async def _mark_waiting(self, reason: str, not_before: dt.datetime | None = None) -> None:
        """What holds the account holds every job of it that is not paused: each says so, also those
        queued behind the one that would send next."""
        for run in self.runs:
            if run.finished or (run.state.status == "paused" and not run.cancelling):
                continue
            if run.state.status != "waiting" or run.state.detail != reason:
                run.state.status, run.state.detail = "waiting", reason
                await self._checkpoint(run, not_before=not_before)
                logger.info("user=%s job=%s waiting: %s", self.user_id, run.id, reason)

    async def _nap(self, seconds: float) -> None:
        """Wait ``seconds``, or less when something changed since this step began: a job added, paused
        or cancelled, new settings, or the session gone down (looked at every second, so that the jobs
        say so while a long pause runs)."""
        deadline = time.monotonic() + max(seconds, 0.01)
        while (left := deadline - time.monotonic()) > 0:
            try:
                await asyncio.wait_for(self._wakeup.wait(), min(left, _SESSION_LOOK))
                return
            except TimeoutError:
                session = self.sessions.get(self.user_id)
                if session is None or not session.ready.is_set():
                    return

    async def _paced(self, run: JobRun, counted: bool = True) -> None:
        """A message of ``run`` left: keep the account's pace, and write it with the day's count
        (``counted``: the message counts towards the cap), so that a restarted host keeps it too."""
        assert self.limits is not None
        gap = self.pacer.record_sent(run)
        now = utcnow()
        count = self.limits.record_sent(now, now + dt.timedelta(seconds=gap), counted)
        await self.storage.write_safely(layout.daily_count(self.user_id), count)

    async def _deliver(self, run: JobRun, result: RecipientResult, session: Session) -> None:
        client = session.client
        assert client is not None
        leaving = False  # from the send on, the message may have left whatever goes wrong
        paced: bool | None = None  # whether a message left or may have (the pace counts it), and counts to the cap
        try:
            if result.jid is None:
                jid = (await client.lookup([result.number])).get(result.number)
                if jid is None:
                    result.status, result.error = "not_on_whatsapp", "this number has no WhatsApp account"
                    await self._checkpoint(run, result)
                    return
                if (first := run.reached.get(jid)) is not None:  # another spelling of a number already reached
                    result.status, result.jid = "duplicate", jid
                    result.error = f"the same WhatsApp account as the contact at position {first}"
                    await self._checkpoint(run, result)
                    return
                result.jid = jid
            if run.held or result.status != "pending":  # paused or cancelled meanwhile
                return
            text = render(run.job, result.index)
            typing = typing_seconds(run.job.antiBanSettings, text)
            if (delay := self.pacer.wait_before(run.job.antiBanSettings) - typing) > 0:
                if delay >= _SAY_PACE_AFTER and run.state.detail is None:  # a batch pause, say: the job says so
                    leaves = utcnow() + dt.timedelta(seconds=delay)
                    run.state.detail = f"{_PACE_DETAIL}: the next message leaves at {leaves:%H:%M:%S} UTC"
                    await self._checkpoint(run)
                await self._nap(delay)
                return  # look again: the session may have dropped, a single send may go first, a cancel come
            run.sending = result
            if typing > 0:
                await client.typing(result.jid, typing)
                if run.held:  # paused or cancelled while typing: nothing has left
                    return
            if not self.honours_message_ids:  # in the store before the message leaves (module docstring)
                result.sendingSince = utcnow()
                await self._checkpoint(run, result)
            leaving = True
            await self._send(run, result, client, text)
            result.attempts += 1
            result.status, result.sentAt, result.error = "sent", utcnow(), None
            run.reached.setdefault(result.jid, result.index)
            paced = True
        except NotConnected:  # nothing left; the session's own events will say more; do not spin meanwhile
            if result.sendingSince is not None:
                result.sendingSince = None
                await self._checkpoint(run, result)
            await asyncio.sleep(_WAIT_TICK / 5)
            return
        except OutcomeUnknown as exc:
            result.attempts += 1
            self._may_have_left(run, result, str(exc))
            paced = True
        except RateLimited as exc:  # refused before it left: no attempt spent
            session.pause(exc.retry_after, str(exc))
        except SendRejected as exc:
            result.attempts += 1
            paced = False
            result.status, result.error = "failed", exc.reason
        except WhatsAppError as exc:  # anything else the backend reports is taken as passing
            result.attempts += 1
            self._retry_later(run, result, str(exc))
        except Exception as exc:  # a fault of ours or of the backend's library, not an answer from WhatsApp
            logger.exception("user=%s job=%s recipient %d: unexpected error", self.user_id, run.id, result.index)
            result.attempts += 1
            if leaving:  # as OutcomeUnknown: it may have left
                self._may_have_left(run, result, f"unexpected error after the message left: {exc!r}")
                paced = True
            else:  # as a passing failure: a lasting one gives up after MAX_ATTEMPTS instead of looping
                self._retry_later(run, result, f"unexpected error: {exc!r}")
        finally:
            run.sending = None
        if (run.state.detail or "").startswith(_PACE_DETAIL):
            run.state.detail = None  # written with the outcome below
        if paced is not None:  # outside the try: a failure to record the pace says nothing of the message
            await self._paced(run, counted=paced)
        result.sendingSince = None  # its outcome is known, and written below
        if result.status == "pending" and result.attempts >= MAX_ATTEMPTS:
            if result.index in run.uncertain:
                reason = f"gave up after {result.attempts} attempts, one of which may have arrived: {result.error}"
                run.mark_unknown(result, reason)
            else:
                result.status, result.error = "failed", f"gave up after {result.attempts} attempts: {result.error}"
        await self._checkpoint(run, result)

    def _may_have_left(self, run: JobRun, result: RecipientResult, reason: str) -> None:
        """The message may have left: sent again with the same id where the backend keeps our ids (WhatsApp
        de-duplicates it), else ``unknown``, not to risk a second message."""
        run.uncertain.add(result.index)
        if not self.honours_message_ids:
            run.mark_unknown(result, f"{reason}; not resent, to avoid a second message")
        else:
            result.error = f"{reason}; will resend with the same message id"

    def _retry_later(self, run: JobRun, result: RecipientResult, reason: str) -> None:
        delay = min(RETRY_BASE * 2 ** (result.attempts - 1), RETRY_MAX)
        run.retry_at = time.monotonic() + delay
        result.error = f"{reason}; trying again in {delay:.0f} s"
        logger.warning("user=%s job=%s recipient %d: %s", self.user_id, run.id, result.index, result.error)

    async def _send(self, run: JobRun, result: RecipientResult, client: WhatsAppClient, text: str) -> None:
        assert result.jid is not None
        if run.image is not None:
            image, mimetype = run.image
            await client.send_image(result.jid, image, mimetype, text, result.messageId)
        else:
            await client.send_text(result.jid, text, result.messageId)
        logger.debug("user=%s job=%s recipient %d sent", self.user_id, run.id, result.index)

    # -- the completion webhook ---------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the webhook deliveries under way: the account is no longer served here (the host
        that serves it now, or this one when it starts again, delivers what is still owed)."""
        for task in self._notifying:
            task.cancel()
        await asyncio.gather(*self._notifying, return_exceptions=True)

    def notify(self, run: JobRun) -> None:
        """Deliver the finished job's webhook in the background; the account's sending goes on."""
        task = asyncio.create_task(self._notify(run), name=f"webhook-{run.id}")
        self._notifying.add(task)
        task.add_done_callback(self._notifying.discard)

    async def _notify(self, run: JobRun) -> None:
        webhook = run.state.webhook
        assert webhook is not None
        if not webhook.settled:
            await webhooks.deliver(
                webhook.url,
                webhooks.event_for(run.state),
                self.webhook_secret,
                webhook,
                after_failure=lambda: self._checkpoint(run),
            )
            await self._checkpoint(run)
            outcome = "delivered" if webhook.deliveredAt else f"given up: {webhook.lastError}"
            logger.info("user=%s job=%s webhook %s after %d attempts", self.user_id, run.id, outcome, webhook.attempts)
        await self.storage.delete(layout.queue_marker(self.user_id, run.id))

    # -- the store -----------------------------------------------------------------------------------

    async def _checkpoint(
        self,
        run: JobRun,
        changed: RecipientResult | None = None,
        all_results: bool = False,
        not_before: dt.datetime | None = None,
    ) -> None:
        """Write the job's summary, with the chunk of results that holds ``changed``. ``not_before``:
        sending cannot go on before then (a limit holds), which the estimated end counts in."""
        run.state.count()
        run.state.updatedAt = now = utcnow()
        run.state.estimatedEnd = self._estimated_end(run, max(now, not_before or now))
        chunks = None if all_results else [] if changed is None else [chunk_of(changed.index)]
        async with run.writing:  # one write at a time, each a snapshot newer than the last
            objects = encode_state(run.state, chunks)
            await self.storage.safely(f"job {run.id}", write_objects, self.storage.store, objects)

    def _estimated_end(self, run: JobRun, start: dt.datetime) -> dt.datetime | None:
        """When the job's last message should leave at its pace from ``start``, counting only this job."""
        if run.state.status in FINAL_JOB_STATUSES or run.state.totals.pending == 0:
            return None
        settings = run.job.antiBanSettings
        pending = run.state.totals.pending
        mean_gap = (settings.randomDelayMin + settings.randomDelayMax) / 2000
        batches = (run.sent_in_batch + pending) // settings.batchSize - run.sent_in_batch // settings.batchSize
        seconds = pending * mean_gap + batches * (settings.batchDelayMs / 1000 - mean_gap)
        return start + dt.timedelta(seconds=max(0.0, seconds + self.pacer.wait_before(settings)))

    async def _finish(self, run: JobRun, status: str, detail: str | None = None, all_results: bool = False) -> None:
        run.state.status = status  # type: ignore[assignment]
        run.state.detail = detail
        run.state.finishedAt = utcnow()
        await self._checkpoint(run, all_results=all_results)
        if run.state.webhook is not None:
            self.notify(run)  # the queue marker goes once the webhook is settled
        else:
            await self.storage.delete(layout.queue_marker(self.user_id, run.id))
        totals = run.state.totals
        logger.info(
            "user=%s job=%s %s in %.1f s: sent=%d not_on_whatsapp=%d failed=%d duplicate=%d unknown=%d%s",
            self.user_id,
            run.id,
            status,
            time.monotonic() - run.started,
            totals.sent,
            totals.not_on_whatsapp,
            totals.failed,
            totals.duplicate,
            totals.unknown,
            f" ({detail})" if detail else "",
        )


def _outcome(run: JobRun) -> tuple[str, str | None]:
    """With no one pending: a job that was cancelled, or failed (the image), says so in its results,
    which are written before the summary; a host stopped in between finishes it so here. Otherwise a
    campaign is done, and a single send has failed unless it was sent."""
    skipped = [result.error or "" for result in run.state.results if result.status == "skipped"]
    if CANCELLED in skipped:
        return "cancelled", "cancelled through the API"
    if failure := next((error for error in skipped if error.startswith(_JOB_FAILED)), None):
        return "failed", failure.removeprefix(f"{_JOB_FAILED} (").removesuffix(")")
    if run.job.kind != "single" or run.state.results[0].status == "sent":
        return "done", None
    result = run.state.results[0]
    reason = "not on WhatsApp" if result.status == "not_on_whatsapp" else result.error or result.status
    return "failed", f"{result.number}: {reason}"

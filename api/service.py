"""What the API does with the store, apart from HTTP: read the host's documents, write orders."""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import time

import msgspec

from api.errors import NotFoundError
from infra import layout
from infra.documents import (
    UNPAIRED_AT_STOP,
    AccountSettings,
    HostBeat,
    Job,
    JobState,
    Rejection,
    SessionCommand,
    SessionStatus,
    Totals,
    decode,
    encode,
    utcnow,
)
from infra.jobs import initial_state, read_state
from infra.store import NotFound, ObjectStore


def read_status(store: ObjectStore, user_id: str) -> SessionStatus | None:
    """The session's status, with ``hostAlive`` saying whether the host that wrote it still runs."""
    try:
        status = decode(store.get(layout.session_status(user_id)).data, SessionStatus)
    except NotFound:
        return None
    return _with_liveness(status, read_host(store, status.host) if status.host else None)


def read_account_settings(store: ObjectStore, user_id: str) -> AccountSettings:
    try:
        return decode(store.get(layout.account_settings(user_id)).data, AccountSettings)
    except NotFound:
        return AccountSettings()


def list_statuses(store: ObjectStore) -> list[SessionStatus]:
    hosts = {beat.hostId: beat for beat in list_hosts(store)}
    statuses = []
    for key in store.list(layout.SESSIONS):
        if key.endswith("/status.json"):
            try:
                status = decode(store.get(key).data, SessionStatus)
            except NotFound:  # deleted between the listing and the read
                continue
            statuses.append(_with_liveness(status, hosts.get(status.host or "")))
    return statuses


def read_host(store: ObjectStore, host_id: str) -> HostBeat | None:
    try:
        return decode(store.get(layout.host_beat(host_id)).data, HostBeat)
    except NotFound:
        return None


def list_hosts(store: ObjectStore) -> list[HostBeat]:
    beats = []
    for key in store.list(layout.HOSTS):
        with contextlib.suppress(NotFound):
            beats.append(decode(store.get(key).data, HostBeat))
    return beats


def _with_liveness(status: SessionStatus, beat: HostBeat | None) -> SessionStatus:
    """Mark a status whose host no longer runs: its "connected" is then only the last word, and
    QR codes it showed died with it."""
    if status.host is None:
        return status
    now = utcnow()
    status.hostAlive = beat is not None and beat.alive(now)
    if status.hostAlive or status.state in ("disconnected", "logged_out", "qr_expired", "failed"):
        return status
    if not status.paired and status.state in ("starting", "qr"):  # nothing for the next host to restore
        status.state, status.qr, status.qrExpiresAt, status.pairCode = "disconnected", None, None, None
        status.detail = UNPAIRED_AT_STOP
    elif beat is None:
        status.detail = f"the session host {status.host} is not running"
    else:
        verb, when = ("stopped", beat.stoppedAt) if beat.stoppedAt else ("was last seen", beat.lastSeen)
        status.detail = f"the session host {status.host} {verb} {(now - when).total_seconds():.0f} s ago"
    return status


def send_command(store: ObjectStore, user_id: str, command: SessionCommand) -> None:
    """Queue a command for the host; names sort by time, so the host carries them out in order."""
    name = f"{time.time_ns():020d}-{secrets.token_hex(4)}"
    store.put(layout.command(user_id, name), encode(command), create_only=True)


def new_job_id() -> str:
    return f"{utcnow():%Y%m%dT%H%M%S%f}-{secrets.token_hex(4)}"  # sorts by time


def submit_job(store: ObjectStore, job: Job) -> None:
    """One create-only write: the job is either wholly in the inbox or not there at all."""
    assert job.jobId is not None
    store.put(layout.inbox(job.jobId), encode(job), create_only=True)


def read_job_state(store: ObjectStore, job_id: str, offset: int = 0, limit: int | None = None) -> JobState:
    """The job's progress; a job still in the inbox is reported as queued, a rejected one as such."""
    try:
        return read_state(store, job_id, offset, limit)
    except NotFound:
        pass
    try:
        job = msgspec.structs.replace(decode(store.get(layout.inbox(job_id)).data, Job), jobId=job_id)
        state = initial_state(job)
        end = len(state.results) if limit is None else offset + limit
        state.results, state.resultsOffset = state.results[offset:end], offset
        return state
    except NotFound:
        pass
    except (msgspec.ValidationError, msgspec.DecodeError):
        return _rejected_state(job_id, "the document in the inbox is not a valid job; the host will set it aside")
    try:
        rejection = decode(store.get(layout.rejection(f"{job_id}.json")).data, Rejection)
    except NotFound:
        raise NotFoundError(f"there is no job {job_id!r}") from None
    return _rejected_state(job_id, rejection.reason, rejection.rejectedAt)


def list_jobs(store: ObjectStore, user_id: str, limit: int) -> list[JobState]:
    """The account's newest jobs first (by id), as summaries without per-recipient results."""
    ids = sorted((key.rsplit("/", 1)[1] for key in store.list(layout.user_jobs(user_id))), reverse=True)
    return [read_job_state(store, job_id, 0, 0) for job_id in ids[:limit]]


def _rejected_state(job_id: str, reason: str, when: dt.datetime | None = None) -> JobState:
    return JobState(
        jobId=job_id, userId="", kind="", status="rejected", totals=Totals(), results=[], detail=reason, finishedAt=when
    )

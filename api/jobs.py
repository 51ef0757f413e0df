"""Jobs: one job's status and results, its report as CSV, pause/resume/cancel, an account's list."""

from __future__ import annotations

import csv
import io
from typing import Annotated, Literal

import msgspec
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, Parameter

from api.auth import Principal
from api.errors import ApiError, InvalidField, NotFoundError
from api.openapi import documented
from api.requests import check_user_id
from api.service import list_jobs, read_job_state, send_command
from infra.documents import FINAL_JOB_STATUSES, ControlJob, JobState, utcnow
from infra.jobs import JOB_ID
from infra.store import ObjectStore

Offset = Annotated[int, Parameter(ge=0, description="the first recipient's position")]
Limit = Annotated[int, Parameter(ge=0, le=10_000, description="how many per-recipient results")]


class JobFinished(ApiError):
    status = 409
    title = "Job finished"


class Controlled(msgspec.Struct):
    success: bool
    jobId: str
    action: str
    message: str


class JobController(Controller):
    path = "/jobs"

    @get("/", sync_to_thread=True, opt=documented())
    def list_account_jobs(
        self,
        store: NamedDependency[ObjectStore],
        principal: NamedDependency[Principal],
        userId: FromQuery[str | None] = None,
        limit: Limit = 20,
    ) -> list[JobState]:
        """An account's jobs, newest first, without their per-recipient results (with a user's key,
        ``userId`` may be left out)."""
        if userId is None and principal.user_id is not None:
            userId = principal.user_id
        return list_jobs(store, principal.require_user(check_user_id(userId)), limit)

    @get("/{job_id:str}", sync_to_thread=True, opt=documented())
    def get_job(
        self,
        job_id: FromPath[str],
        store: NamedDependency[ObjectStore],
        principal: NamedDependency[Principal],
        offset: Offset = 0,
        limit: Limit = 1000,
    ) -> JobState:
        """The job as the host last wrote it (``queued`` while it waits in the inbox), with the
        per-recipient results from ``offset`` (``limit`` of them)."""
        return _owned(read_job_state(store, _checked(job_id), offset, limit), principal)

    @get("/{job_id:str}/report.csv", sync_to_thread=True, media_type="text/csv", opt=documented())
    def get_report(
        self, job_id: FromPath[str], store: NamedDependency[ObjectStore], principal: NamedDependency[Principal]
    ) -> Response[str]:
        """Every recipient's outcome as CSV, for a spreadsheet."""
        state = _owned(read_job_state(store, _checked(job_id)), principal)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["position", "number", "name", "status", "jid", "messageId", "attempts", "sentAt", "error"])
        for r in state.results:
            sent = r.sentAt.isoformat() if r.sentAt else ""
            writer.writerow(
                [r.index, r.number, _cell(r.name), r.status, r.jid or "", r.messageId, r.attempts, sent, _cell(r.error)]
            )
        disposition = f'attachment; filename="zapgate-{state.jobId}.csv"'
        return Response(out.getvalue(), media_type="text/csv", headers={"Content-Disposition": disposition})

    @post("/{job_id:str}/{action:str}", status_code=202, sync_to_thread=True, opt=documented(None, 409))
    def control_job(
        self,
        job_id: FromPath[str],
        action: FromPath[str],
        store: NamedDependency[ObjectStore],
        principal: NamedDependency[Principal],
    ) -> Controlled:
        """``pause``, ``resume`` or ``cancel`` the job; the host carries it out within a poll interval."""
        if action not in ("pause", "resume", "cancel"):
            raise InvalidField("action", "must be pause, resume or cancel")
        state = _owned(read_job_state(store, _checked(job_id), 0, 0), principal)
        if state.status in FINAL_JOB_STATUSES:
            raise JobFinished(f"the job is {state.status}; it can no longer be changed")
        verb: Literal["pause", "resume", "cancel"] = action  # type: ignore[assignment]
        send_command(store, state.userId, ControlJob(issuedAt=utcnow(), jobId=state.jobId, action=verb))
        return Controlled(success=True, jobId=state.jobId, action=action, message=f"{action} requested")


def _owned(state: JobState, principal: Principal) -> JobState:
    """The job if it belongs to an account of ``principal``: the same 404 as for no job at all."""
    if not principal.owns(state.userId):
        raise NotFoundError(f"there is no job {state.jobId!r}")
    return state


def _checked(job_id: str) -> str:
    if not JOB_ID.match(job_id):
        raise InvalidField("jobId", "is not a job id")
    return job_id


def _cell(text: str | None) -> str:
    """Text from the contact list as a spreadsheet cell that is never taken for a formula: one that
    starts with = + - @ (or a tab or carriage return), also after spaces, which spreadsheets skip,
    gets a leading apostrophe, as OWASP advises."""
    if not text:
        return ""
    first = text.lstrip(" ")[:1]
    return f"'{text}" if first and first in "=+-@\t\r" else text

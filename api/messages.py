"""``POST /send`` and ``POST /send-bulk``: validate, write one job to the inbox, answer 202."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import RawBody

from api.errors import InvalidField, NotConnectedError
from api.requests import SendBulkRequest, SendRequest, read_body
from api.service import new_job_id, read_status, submit_job
from infra.documents import AntiBanSettings, Job, Recipient, utcnow
from infra.jobs import InvalidJob, prepare_job
from infra.settings import Settings
from infra.store import ObjectStore


class Accepted(msgspec.Struct):
    success: bool
    jobId: str
    status: str
    statusUrl: str
    total: int
    message: str
    number: str | None = None


class MessageController(Controller):
    @post("/send", status_code=202, sync_to_thread=True)
    def send_message(
        self, body: RawBody, store: NamedDependency[ObjectStore], settings: NamedDependency[Settings]
    ) -> Accepted:
        """Send one message. Answers at once with the job to follow; 409 if the account is not connected."""
        request = read_body(body, SendRequest)
        job = _prepare(
            Job(
                userId=request.userId,
                kind="single",
                recipients=[Recipient(number=str(request.number))],
                message=request.message,
                antiBanSettings=request.antiBanSettings or AntiBanSettings(),
            ),
            settings,
            lambda field: "number" if field.startswith("recipients[") else field,
        )
        number = job.recipients[0].number
        _require_connected(store, request.userId)
        submit_job(store, job)
        return Accepted(
            success=True,
            jobId=job.jobId or "",
            status="queued",
            statusUrl=f"/jobs/{job.jobId}",
            total=1,
            number=number,
            message=f"message to {number} queued",
        )

    @post("/send-bulk", status_code=202, sync_to_thread=True)
    def send_bulk(
        self, body: RawBody, store: NamedDependency[ObjectStore], settings: NamedDependency[Settings]
    ) -> Accepted:
        """Send one template to a contact list, paced. Answers at once with the job to follow."""
        request = read_body(body, SendBulkRequest)
        if not request.contatos:
            raise InvalidField("contatos", "must hold at least one contact")
        if len(request.contatos) > settings.api.max_contacts:
            raise InvalidField(
                "contatos", f"holds {len(request.contatos)} contacts; the limit is {settings.api.max_contacts}"
            )
        job = _prepare(
            Job(
                userId=request.userId,
                kind="bulk",
                recipients=[Recipient(number=str(c.numero), name=c.nome) for c in request.contatos],
                message=request.mensagemBase,
                imageUrl=request.imagemUrl,
                antiBanSettings=request.antiBanSettings or AntiBanSettings(),
            ),
            settings,
            _bulk_field,
        )
        _require_known(store, request.userId)
        submit_job(store, job)
        return Accepted(
            success=True,
            jobId=job.jobId or "",
            status="queued",
            statusUrl=f"/jobs/{job.jobId}",
            total=len(job.recipients),
            message=f"{len(job.recipients)} messages queued",
        )


_BULK_FIELDS = {"message": "mensagemBase", "imageUrl": "imagemUrl"}


def _bulk_field(field: str) -> str:
    """``recipients[3].number`` of the Job is ``contatos[3].numero`` of the request."""
    if field.startswith("recipients["):
        return field.replace("recipients[", "contatos[").replace("].number", "].numero")
    return _BULK_FIELDS.get(field, field)


def _require_connected(store: NamedDependency[ObjectStore], user_id: str) -> None:
    status = read_status(store, user_id)
    if status is None or not status.connected:
        state = "has no session" if status is None else f"is {status.state}"
        raise NotConnectedError(f"{user_id} is not connected ({state}); open /connect?userId={user_id} first")


def _require_known(store: NamedDependency[ObjectStore], user_id: str) -> None:
    """A campaign may wait for a paired account to reconnect, but not for one that was never paired."""
    status = read_status(store, user_id)
    if status is None or not status.paired:
        state = "has no session" if status is None else f"is {status.state} and not paired"
        raise NotConnectedError(f"{user_id} is not connected ({state}); open /connect?userId={user_id} first")


def _prepare(job: Job, settings: Settings, field_name: Callable[[str], str]) -> Job:
    """The checks the host makes again on accepting the job, reported with the request's field names."""
    try:
        return prepare_job(job, job_id=new_job_id(), default_region=settings.default_country, now=utcnow())
    except InvalidJob as exc:
        raise InvalidField(field_name(exc.field), exc.reason) from None

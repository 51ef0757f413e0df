"""``POST /send`` and ``POST /send-bulk``: validate, write one job to the inbox, answer 202."""

from __future__ import annotations

import msgspec
from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import RawBody

from api.errors import InvalidField, NotConnectedError
from api.requests import SendBulkRequest, SendRequest, read_body
from api.service import new_job_id, read_status, submit_job
from infra.documents import AntiBanSettings, Job, Recipient, utcnow
from infra.jobs import InvalidJob, prepare_job
from infra.numbers import InvalidNumber, normalize_number
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
        number = _number("number", request.number, settings)
        job = _prepare(
            Job(
                userId=request.userId,
                kind="single",
                recipients=[Recipient(number=number)],
                message=request.message,
                antiBanSettings=request.antiBanSettings or AntiBanSettings(),
            ),
            settings,
            {"recipients[0].number": "number"},
        )
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
        recipients = [
            Recipient(number=_number(f"contatos[{index}].numero", contact.numero, settings), name=contact.nome)
            for index, contact in enumerate(request.contatos)
        ]
        job = _prepare(
            Job(
                userId=request.userId,
                kind="bulk",
                recipients=recipients,
                message=request.mensagemBase,
                imageUrl=request.imagemUrl,
                antiBanSettings=request.antiBanSettings or AntiBanSettings(),
            ),
            settings,
            {"message": "mensagemBase", "imageUrl": "imagemUrl"},
        )
        _require_known(store, request.userId)
        submit_job(store, job)
        return Accepted(
            success=True,
            jobId=job.jobId or "",
            status="queued",
            statusUrl=f"/jobs/{job.jobId}",
            total=len(recipients),
            message=f"{len(recipients)} messages queued",
        )


def _number(field: str, raw: str | int, settings: NamedDependency[Settings]) -> str:
    try:
        return normalize_number(raw, settings.default_country)
    except InvalidNumber as exc:
        raise InvalidField(field, f"{str(raw)!r} {exc}") from None


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


def _prepare(job: Job, settings: Settings, names: dict[str, str]) -> Job:
    """The checks the host makes again on accepting the job, with the request's field names."""
    try:
        return prepare_job(job, job_id=new_job_id(), default_region=settings.default_country, now=utcnow())
    except InvalidJob as exc:
        raise InvalidField(names.get(exc.field, exc.field), exc.reason) from None

"""``POST /send`` and ``POST /send-bulk``: validate, write one job to the inbox, answer 202."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import msgspec
from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import Parameter, RawBody

from api.auth import Principal
from api.errors import InvalidField, NotConnectedError
from api.openapi import documented
from api.requests import (
    MAX_FIELD_CHARS,
    MAX_FIELD_NAME_CHARS,
    MAX_NUMBER_CHARS,
    Contact,
    SendBulkRequest,
    SendRequest,
    read_body,
    read_bulk_body,
    too_many_contacts,
)
from api.service import new_job_id, read_status, submit_job
from infra.documents import AntiBanSettings, Job, Recipient, SessionStatus, utcnow
from infra.jobs import InvalidJob, initial_state, prepare_job, render
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
    @post("/send", status_code=202, sync_to_thread=True, opt=documented(SendRequest, 409))
    def send_message(
        self,
        body: RawBody,
        store: NamedDependency[ObjectStore],
        settings: NamedDependency[Settings],
        principal: NamedDependency[Principal],
    ) -> Accepted:
        """Send one message. Answers at once with the job to follow; 409 if the account is not connected."""
        request = read_body(body, SendRequest, principal=principal)
        job = _prepare(
            Job(
                userId=request.userId,
                kind="single",
                recipients=[Recipient(number=str(request.number))],
                message=request.message,
                webhookUrl=request.webhookUrl or None,  # "" as older clients send it: none
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

    @post("/send-bulk/preview", status_code=200, sync_to_thread=True, opt=documented(SendBulkRequest))
    def preview_bulk(
        self,
        body: RawBody,
        settings: NamedDependency[Settings],
        principal: NamedDependency[Principal],
        count: Annotated[int, Parameter(description="how many messages (1-50; outside, the nearest)")] = 5,
    ) -> Preview:
        """The first rendered messages of a bulk send, checked like the real one; nothing is sent or stored."""
        job = _bulk_job(read_bulk_body(body, settings.api.max_contacts, principal), settings)
        state = initial_state(job)
        shown = [result for result in state.results if result.status == "pending"][: max(1, min(count, 50))]
        return Preview(
            total=len(job.recipients),
            duplicates=state.totals.duplicate,
            messages=[
                PreviewMessage(numero=result.number, nome=result.name, text=render(job, result.index))
                for result in shown
            ],
        )

    @post("/send-bulk", status_code=202, sync_to_thread=True, opt=documented(SendBulkRequest, 409))
    def send_bulk(
        self,
        body: RawBody,
        store: NamedDependency[ObjectStore],
        settings: NamedDependency[Settings],
        principal: NamedDependency[Principal],
    ) -> Accepted:
        """Send one template to a contact list, paced. Answers at once with the job to follow."""
        request = read_bulk_body(body, settings.api.max_contacts, principal)
        job = _bulk_job(request, settings)
        _require_known(store, request.userId)
        submit_job(store, job)
        return Accepted(
            success=True,
            jobId=job.jobId or "",
            status="queued",
            statusUrl=f"/jobs/{job.jobId}",
            total=len(job.recipients),
            message=f"{len(job.recipients)} message{'' if len(job.recipients) == 1 else 's'} queued",
        )


class PreviewMessage(msgspec.Struct):
    numero: str
    nome: str
    text: str


class Preview(msgspec.Struct):
    total: int
    duplicates: int
    messages: list[PreviewMessage]


def _bulk_job(request: SendBulkRequest, settings: Settings) -> Job:
    if not request.contatos:
        raise InvalidField("contatos", "must hold at least one contact")
    if len(request.contatos) > settings.api.max_contacts:  # a request built in code, not decoded
        raise too_many_contacts(settings.api.max_contacts)
    job = _prepare(
        Job(
            userId=request.userId,
            kind="bulk",
            recipients=[_recipient(index, contact) for index, contact in enumerate(request.contatos)],
            message=request.mensagemBase,
            imageUrl=request.imagemUrl or None,  # "" as older clients send it: no image
            webhookUrl=request.webhookUrl or None,
            antiBanSettings=request.antiBanSettings or AntiBanSettings(),
        ),
        settings,
        _bulk_field,
    )
    _check_field_lengths(request.contatos)  # after the template's checks, which name a long value used in it
    return job


def _check_field_lengths(contacts: list[Contact]) -> None:
    for index, contact in enumerate(contacts):
        for key, value in contact.items():
            if len(key) > MAX_FIELD_NAME_CHARS:
                raise InvalidField(f"contatos[{index}]", f"has a field name longer than {MAX_FIELD_NAME_CHARS}")
            if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
                raise InvalidField(
                    f"contatos[{index}].{key}", f"is {len(value)} characters; the limit is {MAX_FIELD_CHARS}"
                )


_BULK_FIELDS = {"message": "mensagemBase", "imageUrl": "imagemUrl"}


def _recipient(index: int, contact: Contact) -> Recipient:
    """A contact of the request as a Recipient: ``numero``, ``nome`` and the template's other fields."""
    numero = contact.get("numero")
    if numero is None or numero == "":
        raise InvalidField(f"contatos[{index}].numero", "is required")
    if isinstance(numero, float):
        raise InvalidField(f"contatos[{index}].numero", "must be text or a whole number")
    nome = contact.get("nome")
    if nome is not None and not isinstance(nome, str):
        raise InvalidField(f"contatos[{index}].nome", "must be text")
    if not isinstance(numero, str | int) or isinstance(numero, bool):
        raise InvalidField(f"contatos[{index}].numero", "must be text or a whole number")
    if len(str(numero)) > MAX_NUMBER_CHARS:
        raise InvalidField(f"contatos[{index}].numero", f"is longer than {MAX_NUMBER_CHARS} characters")
    fields = {}
    for key, value in contact.items():
        if key in ("numero", "nome") or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise InvalidField(f"contatos[{index}].{key}", "must be text or a number")
        fields[key] = value if isinstance(value, str) else _number_text(value)
    return Recipient(number=str(numero), name=nome or "", fields=fields)


def _number_text(value: int | float) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _bulk_field(field: str) -> str:
    """``recipients[3].number`` of the Job is ``contatos[3].numero`` of the request."""
    if field.startswith("recipients["):
        field = field.replace("recipients[", "contatos[", 1)
        return field.replace("].number", "].numero").replace("].name", "].nome").replace("].fields.", "].")
    return _BULK_FIELDS.get(field, field)


def _require_connected(store: ObjectStore, user_id: str) -> None:
    status = read_status(store, user_id)
    if status is None or not status.connected:
        raise NotConnectedError(f"{user_id} is not connected ({_why(status)}); open /connect?userId={user_id} first")


def _require_known(store: ObjectStore, user_id: str) -> None:
    """A campaign may wait for a paired account to reconnect, but not for one without a pairing: never
    paired, or logged out (its credentials are gone; only a new QR code brings it back)."""
    status = read_status(store, user_id)
    if status is None or not status.paired:
        what = (
            "was never paired"
            if status is None
            else "is logged out"
            if status.state == "logged_out"
            else "is not paired"
        )
        raise NotConnectedError(f"{user_id} {what} ({_why(status)}); pair it at /connect?userId={user_id} first")


def _why(status: SessionStatus | None) -> str:
    if status is None:
        return "no session"
    return f"state: {status.state}" + (f"; {status.detail}" if status.detail else "")


def _prepare(job: Job, settings: Settings, field_name: Callable[[str], str]) -> Job:
    """The checks the host makes again on accepting the job, reported with the request's field names."""
    try:
        return prepare_job(job, job_id=new_job_id(), default_region=settings.default_country, now=utcnow())
    except InvalidJob as exc:
        raise InvalidField(field_name(exc.field), exc.reason) from None

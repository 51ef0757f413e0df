"""The request bodies of the original contract, and how the API reads them.

The userId is checked before anything else, as the original's validateUserId did: a body with a
bad userId and other faults is answered about the userId; then whether the caller's key may act for
that account (``Principal.require_user``: the same 404 whether the account exists or not).

Every field has a limit, named in the 400 that enforces it: ``LIMITS`` lists them for the README
and the OpenAPI document. The body as a whole is capped by ``ZAPGATE_API_MAX_BODY_BYTES`` (413) and
the contacts of a bulk send by ``ZAPGATE_API_MAX_CONTACTS`` (413).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

import msgspec

from api.auth import Principal
from api.errors import FieldError, InvalidField, PayloadTooLarge, from_msgspec
from infra.documents import MAX_MESSAGE_CHARS, USER_ID_PATTERN, AntiBanSettings, Input, UserId
from infra.templates import MAX_TOKENS

T = TypeVar("T")
_USER_ID = re.compile(USER_ID_PATTERN)
USER_ID_RULE = "must be 1-64 letters, digits, '.', '_', '@' or '-', start with a letter or digit, without '..'"

MAX_URL_CHARS = 2048
MAX_NUMBER_CHARS = 32
MAX_CONTACT_FIELDS = 64
MAX_FIELD_NAME_CHARS = 64
MAX_FIELD_CHARS = MAX_MESSAGE_CHARS  # a longer value could not be sent anyway
MAX_LABEL_CHARS = 100
LIMITS = {
    "userId": "1-64 characters",
    "message, mensagemBase": f"{MAX_MESSAGE_CHARS} characters, also as filled in for each contact",
    "placeholders and variations in mensagemBase": f"{MAX_TOKENS}",
    "number, numero, phone": f"{MAX_NUMBER_CHARS} characters",
    "imagemUrl, webhookUrl": f"{MAX_URL_CHARS} characters",
    "a contact": f"{MAX_CONTACT_FIELDS} fields, names of {MAX_FIELD_NAME_CHARS} and values of {MAX_FIELD_CHARS} chars",
    "label (of a key)": f"{MAX_LABEL_CHARS} characters",
}

Message = Annotated[str, msgspec.Meta(max_length=MAX_MESSAGE_CHARS)]
Url = Annotated[str, msgspec.Meta(max_length=MAX_URL_CHARS, description="an http:// or https:// URL")]
PhoneNumber = Annotated[str, msgspec.Meta(max_length=MAX_NUMBER_CHARS)] | int

_TEXT_OR_NUMBER = {"anyOf": [{"type": "string", "maxLength": MAX_FIELD_CHARS}, {"type": "number"}, {"type": "null"}]}
# A contact of a bulk send: "numero" (required), "nome", and any other field a template may use
# ("empresa", "cupom"); values are text or numbers. Values are checked one by one (api/messages.py),
# so that an error names the contact's field; the schema below is what the OpenAPI document shows.
Contact = Annotated[
    dict[str, Any],
    msgspec.Meta(
        max_length=MAX_CONTACT_FIELDS,
        extra_json_schema={
            "required": ["numero"],
            "properties": {
                "numero": {"anyOf": [{"type": "string", "maxLength": MAX_NUMBER_CHARS}, {"type": "integer"}]},
                "nome": {"type": "string", "maxLength": MAX_FIELD_CHARS},
            },
            "additionalProperties": _TEXT_OR_NUMBER,
            "propertyNames": {"maxLength": MAX_FIELD_NAME_CHARS},
        },
    ),
]


class SendRequest(Input, frozen=True):
    userId: UserId
    number: PhoneNumber
    message: Message
    antiBanSettings: AntiBanSettings | None = None
    webhookUrl: Url | None = None


class SendBulkRequest(Input, frozen=True):
    userId: UserId
    contatos: Annotated[list[Contact], msgspec.Meta(extra_json_schema={"minItems": 1})]  # 400 below one
    mensagemBase: Message
    imagemUrl: Url | None = None
    antiBanSettings: AntiBanSettings | None = None
    webhookUrl: Url | None = None


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def too_many_contacts(limit: int) -> PayloadTooLarge:
    """The 413 for a contact list over ``ZAPGATE_API_MAX_CONTACTS``."""
    return PayloadTooLarge(
        f"contatos holds more than {limit} contacts; the limit is {limit}",
        [FieldError("contatos", f"holds more than {limit} contacts")],
    )


def read_bulk_body(body: bytes, max_contacts: int, principal: Principal | None = None) -> SendBulkRequest:
    """``read_body`` for ``POST /send-bulk``, refusing more than ``max_contacts`` contacts (a 413)
    before they are decoded: a body of millions of tiny contacts (``{}``) would otherwise become
    millions of dicts, about 30 times its size in memory. The objects in the whole body are counted,
    strings taken out (C-speed scans): besides the contacts it holds two at most (the body and its
    ``antiBanSettings``), so neither a second ``contatos`` key nor objects hidden in a contact's
    values slip past the count."""
    if body.count(b"{") > max_contacts + 2 and _JSON_STRING.sub(b"", body).count(b"{") > max_contacts + 2:
        try:
            user_id = check_user_id(msgspec.json.decode(body, type=_UserIdProbe).userId)  # the userId first
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            return read_body(body, SendBulkRequest, principal=principal)  # not JSON: read_body says what is wrong
        if principal is not None:
            principal.require_user(user_id)
        raise too_many_contacts(max_contacts)
    request = read_body(body, SendBulkRequest, principal=principal)
    if len(request.contatos) > max_contacts:  # one or two over: the count above lets them through
        raise too_many_contacts(max_contacts)
    return request


class UserRequest(Input, frozen=True):
    userId: UserId


class PairPhoneRequest(Input, frozen=True):
    phone: PhoneNumber


class KeyRequest(Input, frozen=True):
    """``POST /keys``: a key for one account; ``label`` says what it is for (shown in the list)."""

    userId: UserId
    label: Annotated[str, msgspec.Meta(max_length=MAX_LABEL_CHARS)] = ""


class _UserIdProbe(msgspec.Struct):
    userId: Any = None


def check_user_id(value: Any) -> str:
    if value is None or value == "":
        raise InvalidField("userId", "is required")
    if not isinstance(value, str) or not _USER_ID.match(value):
        raise InvalidField("userId", USER_ID_RULE)
    return value


def read_body(body: bytes, type_: type[T], *, with_user: bool = True, principal: Principal | None = None) -> T:
    """Decode and validate a JSON body: the userId first (and whether ``principal`` may act for
    it), then the rest."""
    try:
        if with_user:
            probe = msgspec.json.decode(body, type=_UserIdProbe)
            user_id = check_user_id(probe.userId)
            if principal is not None:
                principal.require_user(user_id)
        return msgspec.json.decode(body, type=type_)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise from_msgspec(exc) from None
    except RecursionError:
        raise InvalidField("body", "is nested too deeply") from None

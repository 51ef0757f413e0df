"""The request bodies of the original contract, and how the API reads them.

The userId is checked before anything else, as the original's validateUserId did: a body with a
bad userId and other faults is answered about the userId.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

import msgspec

from api.errors import InvalidField, from_msgspec
from infra.documents import MAX_MESSAGE_CHARS, USER_ID_PATTERN, AntiBanSettings, Input

T = TypeVar("T")
_USER_ID = re.compile(USER_ID_PATTERN)
USER_ID_RULE = "must be 1-64 letters, digits, '.', '_', '@' or '-', start with a letter or digit, without '..'"

Message = Annotated[str, msgspec.Meta(max_length=MAX_MESSAGE_CHARS)]
PhoneNumber = str | int


# A contact of a bulk send: "numero" (required), "nome", and any other field a template may use
# ("empresa", "cupom"); values are text or numbers.
Contact = dict[str, Any]  # values are checked one by one, so that an error names the contact's field


class SendRequest(Input):
    userId: str
    number: PhoneNumber
    message: Message
    antiBanSettings: AntiBanSettings | None = None
    webhookUrl: str | None = None


class SendBulkRequest(Input):
    userId: str
    contatos: list[Contact]
    mensagemBase: Message
    imagemUrl: str | None = None
    antiBanSettings: AntiBanSettings | None = None
    webhookUrl: str | None = None


class UserRequest(Input):
    userId: str


class PairPhoneRequest(Input):
    phone: PhoneNumber


class _UserIdProbe(msgspec.Struct):
    userId: Any = None


def check_user_id(value: Any) -> str:
    if value is None or value == "":
        raise InvalidField("userId", "is required")
    if not isinstance(value, str) or not _USER_ID.match(value):
        raise InvalidField("userId", USER_ID_RULE)
    return value


def read_body(body: bytes, type_: type[T], *, with_user: bool = True) -> T:
    """Decode and validate a JSON body: the userId first, then the rest."""
    try:
        if with_user:
            probe = msgspec.json.decode(body, type=_UserIdProbe)
            check_user_id(probe.userId)
        return msgspec.json.decode(body, type=type_)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise from_msgspec(exc) from None
    except RecursionError:
        raise InvalidField("body", "is nested too deeply") from None

"""The API's errors and the one place that turns every error into an HTTP answer.

Every error answer is a problem document (RFC 9457, ``application/problem+json``) with no stack
trace, no internal path and no secret. Validation problems list each field and the reason::

    {"type": "about:blank", "title": "Invalid request", "status": 400,
     "detail": "number: may only hold digits, ... but has 'O'",
     "errors": [{"field": "number", "reason": "may only hold digits, ... but has 'O'"}]}

``error`` repeats ``detail``, as the original's error answers carried ``error``.
"""

from __future__ import annotations

import logging
import re

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

from infra.store import StoreUnavailable

logger = logging.getLogger(__name__)


class FieldError(msgspec.Struct):
    field: str
    reason: str


class Problem(msgspec.Struct, omit_defaults=True):
    title: str
    status: int
    detail: str
    type: str = "about:blank"
    error: str = ""
    errors: list[FieldError] = []


class ApiError(Exception):
    """An answer other than success; ``status`` is the HTTP status."""

    status = 400
    title = "Invalid request"

    def __init__(self, detail: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class InvalidField(ApiError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}", [FieldError(field, reason)])


class NotFoundError(ApiError):
    status = 404
    title = "Not found"


class NotConnectedError(ApiError):
    status = 409
    title = "Not connected"


class PayloadTooLarge(ApiError):
    status = 413
    title = "Request too large"


_MSGSPEC_PATH = re.compile(r"^(?P<reason>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_NAMED_FIELD = re.compile(r"(?:required|unknown) field `(?P<name>[^`]+)`")


def from_msgspec(exc: msgspec.ValidationError | msgspec.DecodeError) -> ApiError:
    """Name the field msgspec complains about, in the request's own terms (``contatos[1].numero``)."""
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        return InvalidField("body", f"is not valid JSON ({exc})")
    match = _MSGSPEC_PATH.match(str(exc))
    assert match is not None
    reason, path = match["reason"], (match["path"] or "").lstrip(".")
    if named := _NAMED_FIELD.search(reason):
        path = f"{path}.{named['name']}" if path else named["name"]
        reason = "is required" if "required" in reason else "is not a known field"
    return InvalidField(path or "body", reason)


def problem_response(status: int, title: str, detail: str, errors: list[FieldError] | None = None) -> Response[bytes]:
    problem = Problem(title=title, status=status, detail=detail, error=detail, errors=errors or [])
    return Response(content=msgspec.json.encode(problem), status_code=status, media_type="application/problem+json")


def handle_api_error(_: Request, exc: ApiError) -> Response[bytes]:
    return problem_response(exc.status, exc.title, exc.detail, exc.errors)


def handle_store_unavailable(request: Request, exc: StoreUnavailable) -> Response[bytes]:
    logger.error("%s %s: store unavailable: %s", request.method, request.url.path, exc)
    return problem_response(503, "Storage unavailable", "the object store cannot be reached; try again shortly")


def handle_http_exception(request: Request, exc: HTTPException) -> Response[bytes]:
    if exc.status_code >= 500:
        logger.error("%s %s failed: %s", request.method, request.url.path, exc)
    detail = exc.detail if exc.status_code < 500 else "internal error"
    return problem_response(exc.status_code, _title(exc.status_code), detail)


def handle_unexpected(request: Request, exc: Exception) -> Response[bytes]:
    logger.exception("%s %s failed", request.method, request.url.path)
    return problem_response(500, "Internal error", "internal error; the log of the API says more")


def _title(status: int) -> str:
    return {
        400: "Invalid request",
        404: "Not found",
        405: "Method not allowed",
        413: "Request too large",
        415: "Unsupported media type",
        429: "Too many requests",
    }.get(status, "Error")


EXCEPTION_HANDLERS = {
    ApiError: handle_api_error,
    StoreUnavailable: handle_store_unavailable,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}

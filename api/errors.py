"""The API's errors and the one place that turns every error into an HTTP answer.

Every error answer is a problem document (RFC 9457, ``application/problem+json``) with no stack
trace, no internal path and no secret. Validation problems list each field and the reason::

    {"type": "about:blank", "title": "Invalid request", "status": 400,
     "detail": "number: may only hold digits, ... but has 'O'",
     "errors": [{"field": "number", "reason": "may only hold digits, ... but has 'O'"}]}

``error`` repeats ``detail``, as the original's error answers carried ``error``. A missing or bad
key is a 401 (with ``WWW-Authenticate``), a call for the admin key only a 403, too many requests a
429 (with ``Retry-After``); Litestar's own errors (unknown route, wrong method, a query value of the
wrong type, a body over the limit) become problem documents here too.
"""

from __future__ import annotations

import logging
import re

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from infra.documents import PATTERN_WORDS
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

    def __init__(
        self, detail: str, errors: list[FieldError] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.headers = headers or {}


class InvalidField(ApiError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}", [FieldError(field, reason)])


class NotFoundError(ApiError):
    status = 404
    title = "Not found"


class Unauthorized(ApiError):
    """No key, or one that is not valid; the same answer whatever was wrong with it."""

    status = 401
    title = "Unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="zapgate"'})


class Forbidden(ApiError):
    status = 403
    title = "Forbidden"


class RateLimited(ApiError):
    status = 429
    title = "Too many requests"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class NotConnectedError(ApiError):
    status = 409
    title = "Not connected"


class PayloadTooLarge(ApiError):
    status = 413
    title = "Request too large"


_MSGSPEC_PATH = re.compile(r"^(?P<reason>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_NAMED_FIELD = re.compile(r"(?:required|unknown) field `(?P<name>[^`]+)`")
# Our own checks (a Struct's __post_init__) start their message with the field they are about, in
# lower camel case ("timezone 'X' is not…"); msgspec's own messages start with a capital.
_PATTERN = re.compile(r"^Expected `str` matching regex (?P<regex>.*)$", re.DOTALL)
_PATTERN_WORDS = {repr(pattern): words for pattern, words in PATTERN_WORDS.items()}  # as msgspec prints them
_LEADING_FIELD = re.compile(r"^(?P<name>[a-z][A-Za-z]*) ")


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
    if pattern := _PATTERN.match(reason):  # msgspec shows the regex: say what it asks for instead
        reason = _PATTERN_WORDS.get(pattern["regex"], "is not in the expected form")
    if not path and (lead := _LEADING_FIELD.match(reason)):  # a check of the whole body's own fields
        path = lead["name"]
    return InvalidField(path or "body", reason)


def problem_response(
    status: int,
    title: str,
    detail: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    problem = Problem(title=title, status=status, detail=detail, error=detail, errors=errors or [])
    return Response(
        content=msgspec.json.encode(problem),
        status_code=status,
        media_type="application/problem+json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def handle_api_error(_: Request, exc: ApiError) -> Response[bytes]:
    return problem_response(exc.status, exc.title, exc.detail, exc.errors, exc.headers)


def handle_store_unavailable(request: Request, exc: StoreUnavailable) -> Response[bytes]:
    logger.error("%s %s: store unavailable: %s", request.method, request.url.path, exc)
    return problem_response(503, "Storage unavailable", "the object store cannot be reached; try again shortly")


def handle_http_exception(request: Request, exc: HTTPException) -> Response[bytes]:
    if exc.status_code >= 500:
        logger.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
    detail = exc.detail if exc.status_code < 500 else "internal error"
    if isinstance(exc, ValidationException):  # its detail repeats the URL, query (and a page token) included
        errors = [
            FieldError(str(item.get("key") or "request"), str(item.get("message") or "is not valid"))
            for item in (exc.extra if isinstance(exc.extra, list) else [])
            if isinstance(item, dict)
        ] or [FieldError("request", "is not valid")]
        return problem_response(400, "Invalid request", f"{errors[0].field}: {errors[0].reason}", errors)
    if exc.status_code == 413:
        limit = _body_limit(request)
        detail = f"the request body is larger than the limit of {limit} bytes (ZAPGATE_API_MAX_BODY_BYTES)"
        return problem_response(413, "Request too large", detail, [FieldError("body", f"is over {limit} bytes")])
    allowed = {k.lower(): v for k, v in (exc.headers or {}).items()}.get("allow")
    headers = {"Allow": allowed} if exc.status_code == 405 and allowed else {}
    return problem_response(exc.status_code, _title(exc.status_code), detail, headers=headers)


def _body_limit(request: Request) -> int | None:
    try:
        return request.route_handler.resolve_request_max_body_size()
    except Exception:  # no route: the app's limit is not at hand
        return None


def handle_unexpected(request: Request, exc: Exception) -> Response[bytes]:
    logger.exception("%s %s failed", request.method, request.url.path)
    return problem_response(500, "Internal error", "internal error; the log of the API says more")


def _title(status: int) -> str:
    return {
        400: "Invalid request",
        401: "Unauthorized",
        403: "Forbidden",
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

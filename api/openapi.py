"""The OpenAPI document (``/schema/openapi.json``): what Litestar derives, completed with what it cannot see.

Several handlers take the raw body and decode it themselves (to check the userId first and to name
fields in the request's own terms), so Litestar cannot know their body: each says it in its
``opt`` (``documented(SendRequest, 409)``) and ``describe`` writes it in, with msgspec's JSON Schema
of the type. Every operation also lists the problem documents it can answer with
(``application/problem+json``, ``Problem``) and the keys it takes.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar
from litestar.openapi.spec import (
    Components,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Reference,
    RequestBody,
    Schema,
    SecurityScheme,
)
from litestar.routes import HTTPRoute

from api.errors import Problem

PROBLEMS = {
    400: "Invalid request: `errors` names each field and the reason",
    401: "No API key, or one that is not valid (or a page link that has expired)",
    403: "Only the admin key may do this",
    404: "Not found; also what a key gets for another account or its jobs (the same answer either way)",
    409: "The account or the job is not in a state that allows this",
    413: "The body (ZAPGATE_API_MAX_BODY_BYTES) or the contact list (ZAPGATE_API_MAX_CONTACTS) is over its limit",
    429: "Too many requests with this key (ZAPGATE_API_RATE_LIMIT); Retry-After says when to try again",
    503: "The object store cannot be reached; try again shortly",
}
# What any route that takes a key can answer; a body adds 413; handlers add theirs.
COMMON = (400, 401, 404, 429, 503)
SECURITY_SCHEMES = {
    "apiKey": SecurityScheme(type="apiKey", name="X-Api-Key", security_scheme_in="header"),
    "bearer": SecurityScheme(type="http", scheme="bearer", description="Authorization: Bearer <key>"),
    "pageLink": SecurityScheme(
        type="apiKey",
        name="token",
        security_scheme_in="query",
        description="a short-lived page link's token, from POST /sessions/{userId}/link",
    ),
    "pageCookie": SecurityScheme(
        type="apiKey", name="zapgate_page", security_scheme_in="cookie", description="set by a page opened by its link"
    ),
}
KEYS: list[dict[str, list[str]]] = [{"apiKey": []}, {"bearer": []}]
PAGE = [*KEYS, {"pageLink": []}, {"pageCookie": []}]


def documented(body: type | None = None, *problems: int, link: bool = False, public: bool = False) -> dict[str, Any]:
    """A handler's ``opt``: its body type, the problems it adds to ``COMMON``, who may call it."""
    opt: dict[str, Any] = {"problems": problems, "link": link, "public": public}
    if body is not None:
        opt["body"] = body
    return opt


def describe(app: Litestar) -> None:
    """Complete ``app``'s OpenAPI document in place (it is built once, then served as it is)."""
    openapi = app.openapi_schema
    if openapi.components is None:  # pragma: no cover - Litestar always makes one
        openapi.components = Components()
    components = openapi.components
    bodies = {
        handler.opt["body"]
        for route in app.routes
        if isinstance(route, HTTPRoute)
        for handler in route.route_handlers
        if "body" in (handler.opt or {})
    }
    _, schemas = msgspec.json.schema_components(
        [Problem, *sorted(bodies, key=lambda t: t.__name__)], ref_template="#/components/schemas/{name}"
    )
    components.schemas = dict(components.schemas or {})
    for name, schema in schemas.items():
        components.schemas.setdefault(name, schema)  # type: ignore[arg-type]  # a JSON Schema as a dict
    components.security_schemes = {**(components.security_schemes or {}), **SECURITY_SCHEMES}
    openapi.security = KEYS  # type: ignore[assignment]
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or openapi.paths is None:
            continue
        path_item = openapi.paths.get(route.path_format or "/")
        if path_item is None:
            continue
        for handler in route.route_handlers:
            for method in handler.http_methods:
                operation = getattr(path_item, method.lower(), None)
                if operation is None:
                    continue
                opt = handler.opt or {}
                body = opt.get("body")
                if body is not None:
                    operation.request_body = RequestBody(
                        required=True,
                        content={"application/json": OpenAPIMediaType(schema=_ref(body.__name__))},
                    )
                if opt.get("public"):
                    codes = {503}
                    operation.security = []
                else:
                    codes = {*COMMON, *opt.get("problems", ()), *((413,) if body is not None else ())}
                    operation.security = PAGE if opt.get("link") else KEYS  # type: ignore[assignment]
                responses = dict(operation.responses or {})
                for code in sorted(codes):
                    responses[str(code)] = _problem_response(code)
                operation.responses = responses


def _ref(name: str) -> Reference:
    return Reference(ref=f"#/components/schemas/{name}")


def _problem_response(code: int) -> OpenAPIResponse:
    headers: dict[str, OpenAPIHeader | Reference] | None = None
    if code == 429:
        headers = {"Retry-After": OpenAPIHeader(schema=Schema(type=OpenAPIType.INTEGER), description="seconds to wait")}
    elif code == 401:
        headers = {"WWW-Authenticate": OpenAPIHeader(schema=Schema(type=OpenAPIType.STRING), description="Bearer")}
    return OpenAPIResponse(
        description=PROBLEMS[code],
        content={"application/problem+json": OpenAPIMediaType(schema=_ref("Problem"))},
        headers=headers,
    )

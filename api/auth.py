"""Who is asking, and which accounts they may touch.

Keys
    The admin key (``ZAPGATE_API_ADMIN_KEY``) opens every account, ``/sessions``, ``/keys`` and the
    pages. A user key opens one account's sessions, jobs and pages. User keys are made with the
    admin key (``POST /keys``) and look like ``zg_<keyId>_<secret>``: the id finds the key's record
    with one GET (``keys/<keyId>.json``), which holds a SHA-256 of the secret (never the secret), the
    userId and when it was made and revoked. Either kind goes in ``X-Api-Key: <key>`` or
    ``Authorization: Bearer <key>``; a wrong key of any kind gets a 401 that never says whether a key id exists.

Page links
    A browser opens the pages without a long-lived key in its URL: ``POST /sessions/{userId}/link``
    (with a key) returns ``/connect?userId=…&token=…``, a token HMAC-signed over the userId and an
    expiry (``ZAPGATE_API_LINK_TTL``, 10 minutes) with ``ZAPGATE_API_LINK_SECRET`` (derived from the
    admin key when unset). The page then sets an HttpOnly, SameSite=Strict cookie holding a token of
    its own (``COOKIE_TTL``) for that one account, so that its polling, QR image and phone-code form
    keep working. Tokens and cookies open only the routes marked ``opt={"link": True}`` (the pages,
    the session's status and QR code, the phone code), never sends, jobs or keys.

Open mode
    With no admin key the API is open, as in development: every request acts as the admin. It then
    refuses to start on an address other than loopback (``check_startup``), unless
    ``ZAPGATE_API_INSECURE_OPEN`` says that something in front of it authenticates.

Isolation
    A key for one account naming another gets the same 404 as for an account that does not exist
    (``Principal.require_user``); the answer never depends on whether the other account exists.

Rate limit
    A token bucket per key (``ZAPGATE_API_RATE_LIMIT`` requests a minute, that many at once), kept in
    each API process: see ``RateLimiter`` for why.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import math
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import anyio.to_thread
import msgspec
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from api.errors import Forbidden, NotFoundError, RateLimited, Unauthorized
from infra import layout
from infra.documents import USER_ID_PATTERN, decode, encode, utcnow
from infra.settings import ApiSettings, SettingsError
from infra.store import NotFound, ObjectStore, PreconditionFailed

KEY_PREFIX = "zg_"
KEY_FORMAT = re.compile(r"^zg_(?P<id>[0-9a-f]{16})_(?P<secret>[A-Za-z0-9_-]{43})$")
COOKIE = "zapgate_page"
COOKIE_TTL = 3600  # seconds a page keeps working after its link was opened
MIN_SECRET_CHARS = 16
SCHEMA_PATH = "/schema"
STATE_KEY = "zapgate.principal"
_USER_ID = re.compile(USER_ID_PATTERN)
_INVALID_KEY = "the API key is not valid, or was revoked"
_ISSUER = re.compile(r"^(admin|[0-9a-f]{16})$")


@dataclass(frozen=True)
class Principal:
    """Who made the request: the admin (``user_id`` None) or one account's key, link or page."""

    via: Literal["open", "admin", "key", "link", "cookie", "anonymous"]
    user_id: str | None = None
    key_id: str | None = None  # its rate-limit bucket; never the secret
    link_token: str | None = None  # the page link's token, when it came in the URL
    issuer: str | None = None  # a link's or cookie's: the key that asked for the link ("admin")

    @property
    def link_issuer(self) -> str:
        """Who a link made by this principal comes from: its key, or the admin."""
        if self.via in ("link", "cookie") and self.issuer is not None:
            return self.issuer
        return self.key_id if self.via == "key" and self.key_id else "admin"

    @property
    def is_admin(self) -> bool:
        return self.via in ("open", "admin")

    def owns(self, user_id: str) -> bool:
        return self.is_admin or self.user_id == user_id

    def require_user(self, user_id: str) -> str:
        """``user_id`` if this principal may touch it; the same 404 whether it exists or not."""
        if not self.owns(user_id):
            raise NotFoundError(f"there is no account {user_id!r}")
        return user_id

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("this needs the admin key")


OPEN = Principal(via="open")
ADMIN = Principal(via="admin", key_id="admin")
ANONYMOUS = Principal(via="anonymous")


# -- user keys in the store ------------------------------------------------------------------------


class ApiKey(msgspec.Struct, omit_defaults=False):
    """``keys/<keyId>.json``: a user key's record. ``hash`` is ``sha256:<hex>`` of the secret."""

    keyId: str
    userId: str
    hash: str
    createdAt: dt.datetime
    revokedAt: dt.datetime | None = None
    label: str = ""


def key_hash(key_id: str, secret: str) -> str:
    # The secret is 256 random bits: a plain SHA-256 cannot be reversed, and needs no slow hash.
    return "sha256:" + hashlib.sha256(f"zapgate-key:{key_id}:{secret}".encode()).hexdigest()


def create_key(store: ObjectStore, user_id: str, label: str = "") -> tuple[ApiKey, str]:
    """Make a key for ``user_id``; returns its record and the key itself (shown once, never stored)."""
    while True:
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        record = ApiKey(keyId=key_id, userId=user_id, hash=key_hash(key_id, secret), createdAt=utcnow(), label=label)
        try:
            store.put(layout.api_key(key_id), encode(record), create_only=True)
        except PreconditionFailed:  # pragma: no cover - 64 random bits
            continue
        return record, f"{KEY_PREFIX}{key_id}_{secret}"


def find_key(store: ObjectStore, key_id: str) -> ApiKey | None:
    try:
        return decode(store.get(layout.api_key(key_id)).data, ApiKey)
    except NotFound:
        return None


def list_keys(store: ObjectStore, user_id: str | None = None) -> list[ApiKey]:
    keys = []
    for name in store.list(layout.KEYS):
        record = find_key(store, name[len(layout.KEYS) :].removesuffix(".json"))
        if record is not None and (user_id is None or record.userId == user_id):
            keys.append(record)
    return sorted(keys, key=lambda record: record.createdAt)


def revoke_key(store: ObjectStore, key_id: str) -> ApiKey:
    record = find_key(store, key_id)
    if record is None:
        raise NotFoundError(f"there is no key {key_id!r}")
    if record.revokedAt is None:
        record.revokedAt = utcnow()
        store.put(layout.api_key(key_id), encode(record))
    return record


# -- page links ------------------------------------------------------------------------------------


class LinkSigner:
    """Tokens ``<expiry>.<userId in base64url>.<issuer>.<HMAC-SHA256>``, for one purpose each (link,
    cookie). The issuer is the id of the user key that asked for the link, or ``admin``: revoking
    that key ends its links and the cookies they left (``Auth.identify`` checks it)."""

    def __init__(self, secret: bytes, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self.ttl = ttl
        self._clock = clock

    def issue(self, user_id: str, purpose: str, issuer: str, ttl: float | None = None) -> tuple[str, dt.datetime]:
        if not _ISSUER.match(issuer):
            raise ValueError(f"not a key id: {issuer!r}")
        expires = int(self._clock() + (self.ttl if ttl is None else ttl))
        body = f"{expires}.{_b64(user_id.encode())}.{issuer}"
        token = f"{body}.{self._sign(purpose, body)}"
        return token, dt.datetime.fromtimestamp(expires, dt.UTC)

    def verify(self, token: str, purpose: str) -> tuple[str, str] | None:
        """The userId the token was made for and its issuer, or None if it is not one of ours or has
        expired."""
        parts = token.split(".")
        if not token.isascii() or len(parts) != 4 or not parts[0].isdigit() or len(token) > 256:
            return None  # ascii first: compare_digest refuses other text, and int() reads other digits
        if not _ISSUER.match(parts[2]):
            return None
        body = ".".join(parts[:3])
        if not hmac.compare_digest(parts[3], self._sign(purpose, body)) or int(parts[0]) < self._clock():
            return None
        try:
            user_id = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        return (user_id, parts[2]) if _USER_ID.match(user_id) else None

    def _sign(self, purpose: str, body: str) -> str:
        return _b64(hmac.new(self._secret, f"zapgate-{purpose}\n{body}".encode(), hashlib.sha256).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


# -- rate limit ------------------------------------------------------------------------------------


class RateLimiter:
    """A token bucket per key: ``per_minute`` requests a minute, up to ``per_minute`` at once.

    Kept in the API process, not in the store. Counting in the store would cost a write (and a
    read) to S3 on every request and add their latency to each answer, for a limit whose job is to
    stop a runaway client, not to meter. The price: with N copies of the API behind a balancer a
    key may make up to N times the limit. Put a limit at the balancer when that matters.
    """

    MAX_BUCKETS = 10_000

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Take one request from ``key``'s bucket: 0 if it may go ahead, else the seconds to wait."""
        if self.capacity <= 0:
            return 0.0
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self._buckets[key] = (tokens - 1 if wait == 0 else tokens, now)
            if len(self._buckets) > self.MAX_BUCKETS:
                self._forget_full(now)
            return wait

    def _forget_full(self, now: float) -> None:
        full_after = self.capacity / self.rate
        for key, (_, last) in list(self._buckets.items()):
            if now - last >= full_after:
                del self._buckets[key]


# -- start-up --------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host.strip().lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_startup(settings: ApiSettings) -> str:
    """Refuse settings that would expose every account; return what to log about keys at start."""
    for name in ("admin_key", "link_secret"):
        value = getattr(settings, name)
        if value is not None and len(value.reveal()) < MIN_SECRET_CHARS:
            raise SettingsError(
                f"ZAPGATE_API_{name.upper()}: must be at least {MIN_SECRET_CHARS} characters "
                "(`openssl rand -base64 32` prints a good one)"
            )
    if settings.admin_key is not None:
        return "API keys required: the admin key is set; user keys are checked in the store"
    if not is_loopback(settings.host) and not settings.insecure_open:
        raise SettingsError(
            f"ZAPGATE_API_ADMIN_KEY: required when the API listens on {settings.host!r}, which is not a loopback "
            "address: without it anyone who reaches the API can use every account. Set ZAPGATE_API_ADMIN_KEY "
            "(`openssl rand -base64 32`), listen on 127.0.0.1, or set ZAPGATE_API_INSECURE_OPEN=true if "
            "something in front of the API authenticates every request"
        )
    return (
        "API OPEN: no ZAPGATE_API_ADMIN_KEY, so every request acts as the admin "
        f"(development mode, listening on {settings.host}); set ZAPGATE_API_ADMIN_KEY to require keys"
    )


# -- the guard -------------------------------------------------------------------------------------


class Auth:
    """Identifies every request (an app-wide guard) and keeps the result for the handlers."""

    def __init__(self, settings: ApiSettings, store: ObjectStore) -> None:
        self.store = store
        self.admin_key = settings.admin_key
        self.open = settings.admin_key is None
        self.links = LinkSigner(_link_secret(settings), settings.link_ttl)
        self.limiter = RateLimiter(settings.rate_limit)
        self.rate_limit = settings.rate_limit

    async def guard(self, connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        opt = handler.opt or {}
        public = bool(opt.get("public")) or connection.scope["path"].startswith(SCHEMA_PATH)
        principal = await self.identify(connection, linkable=bool(opt.get("link")), public=public)
        connection.scope.setdefault("state", {})[STATE_KEY] = principal  # type: ignore[typeddict-unknown-key]
        if not public and principal.via != "open" and (wait := self.limiter.take(principal.key_id or "")):
            raise RateLimited(
                f"more than {self.rate_limit} requests a minute with this key (ZAPGATE_API_RATE_LIMIT); "
                f"try again in {math.ceil(wait)} s",
                retry_after=math.ceil(wait),
            )

    async def identify(
        self, connection: ASGIConnection[Any, Any, Any, Any], *, linkable: bool, public: bool
    ) -> Principal:
        try:
            presented = _presented_key(connection.headers)
            if presented is not None:
                return await self.principal_for_key(presented)
        except Unauthorized:
            if public:
                return ANONYMOUS
            raise
        if self.open:
            return OPEN
        if linkable:
            if (token := connection.query_params.get("token")) is not None:
                link = self.links.verify(token, "link")
                if link is None or not await self._issuer_holds(*link):
                    raise Unauthorized(
                        "the page link is not valid, has expired or its key was revoked; ask for a new one"
                    )
                user_id, issuer = link
                return Principal(via="link", user_id=user_id, key_id=f"page:{user_id}", link_token=token, issuer=issuer)
            cookie = connection.cookies.get(COOKIE)
            if cookie and (page := self.links.verify(cookie, "cookie")) is not None and await self._issuer_holds(*page):
                return Principal(via="cookie", user_id=page[0], key_id=f"page:{page[0]}", issuer=page[1])
        if public:
            return ANONYMOUS
        raise Unauthorized("an API key is required: send it as X-Api-Key: <key> or Authorization: Bearer <key>")

    async def principal_for_key(self, presented: str) -> Principal:
        if self.admin_key is not None and hmac.compare_digest(_digest(presented), _digest(self.admin_key.reveal())):
            return ADMIN
        match = KEY_FORMAT.match(presented)
        if match is None:
            raise Unauthorized(_INVALID_KEY)
        key_id = match["id"]
        record = await anyio.to_thread.run_sync(find_key, self.store, key_id)
        if (
            record is None
            or record.revokedAt is not None
            or not hmac.compare_digest(record.hash, key_hash(key_id, match["secret"]))
        ):
            raise Unauthorized(_INVALID_KEY)
        return Principal(via="key", user_id=record.userId, key_id=key_id)

    async def _issuer_holds(self, user_id: str, issuer: str) -> bool:
        """Whether the key that asked for a link still exists, unrevoked, for that account (one GET)."""
        if issuer == "admin":
            return True
        record = await anyio.to_thread.run_sync(find_key, self.store, issuer)
        return record is not None and record.revokedAt is None and record.userId == user_id

    def page_cookie(self, principal: Principal) -> str:
        """The cookie a page opened by its link leaves: the link's account and issuer, for an hour."""
        assert principal.user_id is not None
        return self.links.issue(principal.user_id, "cookie", principal.link_issuer, COOKIE_TTL)[0]


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The principal the guard found (the ``principal`` dependency of every handler)."""
    return connection.scope.get("state", {}).get(STATE_KEY, ANONYMOUS)  # type: ignore[return-value]


def _presented_key(headers: Any) -> str | None:
    if (key := headers.get("x-api-key")) is not None:
        return key.strip()
    if (authorization := headers.get("authorization")) is not None:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise Unauthorized("the Authorization header must be: Bearer <key>")
        return credentials.strip()
    return None


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _link_secret(settings: ApiSettings) -> bytes:
    if settings.link_secret is not None:
        return settings.link_secret.reveal().encode()
    if settings.admin_key is not None:  # every copy of the API with this admin key agrees
        return hmac.new(settings.admin_key.reveal().encode(), b"zapgate page links", hashlib.sha256).digest()
    return secrets.token_bytes(32)  # open mode: links are not needed, and last as long as the process

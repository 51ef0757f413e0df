"""Sessions: the list, one account's status and QR code, and the orders the host carries out."""

from __future__ import annotations

import datetime as dt
import io
from urllib.parse import urlencode

import msgspec
import qrcode
import qrcode.image.svg
from litestar import Controller, Response, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, RawBody

from api.auth import Auth, Principal
from api.errors import ApiError, InvalidField, NotFoundError
from api.openapi import documented
from api.requests import PairPhoneRequest, UserRequest, check_user_id, read_body
from api.service import list_statuses, read_account_settings, read_status, send_command
from infra import layout
from infra.documents import (
    AccountSettings,
    Connect,
    Disconnect,
    Logout,
    PairPhone,
    ReloadSettings,
    SessionStatus,
    encode,
    utcnow,
)
from infra.numbers import InvalidNumber, normalize_number
from infra.settings import Settings
from infra.store import ObjectStore

# States in which the host is already working on the session: /connect leaves them alone.
BUSY_STATES = frozenset({"starting", "qr", "connected", "reconnecting", "paused"})


class SessionSummary(msgspec.Struct):
    """An entry of ``GET /sessions``: the original's three fields, then zapgate's."""

    userId: str
    isConnected: bool
    hasQrCode: bool
    state: str
    detail: str | None
    jid: str | None
    updatedAt: str | None
    hostAlive: bool | None


class AlreadyConnected(ApiError):
    status = 409
    title = "Already connected"


class Done(msgspec.Struct):
    success: bool
    message: str


class PageLink(msgspec.Struct):
    """Links to the account's pages that work in a browser without a key, until ``expiresAt``."""

    userId: str
    url: str
    statusUrl: str
    expiresAt: dt.datetime


def summary(status: SessionStatus) -> SessionSummary:
    return SessionSummary(
        userId=status.userId,
        isConnected=status.connected,
        hasQrCode=has_qr(status),
        state=status.state,
        detail=status.detail,
        jid=status.jid,
        updatedAt=status.updatedAt.isoformat() if status.updatedAt else None,
        hostAlive=status.hostAlive,
    )


def has_qr(status: SessionStatus) -> bool:
    return (
        status.state == "qr" and status.qr is not None and (status.qrExpiresAt is None or status.qrExpiresAt > utcnow())
    )


def ensure_started(store: ObjectStore, user_id: str) -> SessionStatus | None:
    """Ask the host to start the session unless it is already at work on it."""
    status = read_status(store, user_id)
    if status is None or status.state not in BUSY_STATES:
        send_command(store, user_id, Connect(issuedAt=utcnow()))
    return status


class SessionController(Controller):
    @get("/sessions", sync_to_thread=True, opt=documented())
    def list_sessions(
        self, store: NamedDependency[ObjectStore], principal: NamedDependency[Principal]
    ) -> list[SessionSummary]:
        """Every account the host has a status for (with a user's key: that account only)."""
        if principal.is_admin:
            return [summary(status) for status in list_statuses(store)]
        assert principal.user_id is not None
        own = read_status(store, principal.user_id)
        return [summary(own)] if own is not None else []

    @get("/sessions/{user_id:str}", sync_to_thread=True, opt=documented(link=True))
    def get_session(
        self, user_id: FromPath[str], store: NamedDependency[ObjectStore], principal: NamedDependency[Principal]
    ) -> SessionStatus:
        """One account's full status, with the current QR payload while one is showing."""
        principal.require_user(check_user_id(user_id))
        status = read_status(store, user_id)
        if status is None:
            return SessionStatus(userId=user_id, state="disconnected", detail="never connected")
        if not has_qr(status):
            status = msgspec.structs.replace(status, qr=None, qrExpiresAt=None)
        return status

    @get("/sessions/{user_id:str}/qr.svg", sync_to_thread=True, media_type="image/svg+xml", opt=documented(link=True))
    def get_qr_svg(
        self, user_id: FromPath[str], store: NamedDependency[ObjectStore], principal: NamedDependency[Principal]
    ) -> Response[bytes]:
        """The current QR code as SVG."""
        qr = _current_qr(store, user_id, principal)
        return _image(qrcode.make(qr, image_factory=qrcode.image.svg.SvgPathImage, box_size=12), "image/svg+xml")

    @get("/sessions/{user_id:str}/qr.png", sync_to_thread=True, media_type="image/png", opt=documented(link=True))
    def get_qr_png(
        self, user_id: FromPath[str], store: NamedDependency[ObjectStore], principal: NamedDependency[Principal]
    ) -> Response[bytes]:
        """The current QR code as PNG."""
        return _image(qrcode.make(_current_qr(store, user_id, principal), box_size=8, border=2), "image/png")

    @post(
        "/sessions/{user_id:str}/pair-phone",
        status_code=202,
        sync_to_thread=True,
        opt=documented(PairPhoneRequest, 409, link=True),
    )
    def pair_by_phone(
        self,
        user_id: FromPath[str],
        body: RawBody,
        store: NamedDependency[ObjectStore],
        settings: NamedDependency[Settings],
        principal: NamedDependency[Principal],
    ) -> Done:
        """Pair by a code typed on the phone instead of the QR; the code appears in the status."""
        principal.require_user(check_user_id(user_id))
        request = read_body(body, PairPhoneRequest, with_user=False)
        try:
            phone = normalize_number(request.phone, settings.default_country)
        except InvalidNumber as exc:
            raise InvalidField("phone", str(exc)) from None
        status = read_status(store, user_id)
        if status is not None and status.connected:
            raise AlreadyConnected(f"{user_id} is already connected; disconnect or log out first")
        send_command(store, user_id, PairPhone(issuedAt=utcnow(), phone=phone))
        return Done(success=True, message=f"pairing code requested; it appears in /sessions/{user_id}")

    @get("/sessions/{user_id:str}/settings", sync_to_thread=True, opt=documented())
    def get_settings(
        self, user_id: FromPath[str], store: NamedDependency[ObjectStore], principal: NamedDependency[Principal]
    ) -> AccountSettings:
        """The account's limits across all its jobs: daily cap, quiet hours, time zone, warm-up."""
        return read_account_settings(store, principal.require_user(check_user_id(user_id)))

    @put("/sessions/{user_id:str}/settings", status_code=200, sync_to_thread=True, opt=documented(AccountSettings))
    def put_settings(
        self,
        user_id: FromPath[str],
        body: RawBody,
        store: NamedDependency[ObjectStore],
        principal: NamedDependency[Principal],
    ) -> AccountSettings:
        """Replace the account's limits; the host applies them before the next message."""
        principal.require_user(check_user_id(user_id))
        settings = read_body(body, AccountSettings, with_user=False)
        store.put(layout.account_settings(user_id), encode(settings))
        send_command(store, user_id, ReloadSettings(issuedAt=utcnow()))
        return settings

    @post("/sessions/{user_id:str}/link", status_code=201, sync_to_thread=True, opt=documented())
    def page_link(
        self, user_id: FromPath[str], auth: NamedDependency[Auth], principal: NamedDependency[Principal]
    ) -> PageLink:
        """Links to the account's pages for a browser, valid for ZAPGATE_API_LINK_TTL seconds (10 min):
        no key in the URL, only a signed token for this account; the page then keeps working by a cookie."""
        principal.require_user(check_user_id(user_id))
        token, expires_at = auth.links.issue(user_id, "link", principal.link_issuer)
        query = urlencode({"userId": user_id, "token": token})
        return PageLink(userId=user_id, url=f"/connect?{query}", statusUrl=f"/?{query}", expiresAt=expires_at)

    @post("/disconnect", status_code=200, sync_to_thread=True, opt=documented(UserRequest))
    def disconnect(
        self, body: RawBody, store: NamedDependency[ObjectStore], principal: NamedDependency[Principal]
    ) -> Done:
        """Close the account's connection and keep its pairing."""
        request = read_body(body, UserRequest, principal=principal)
        _require_session(store, request.userId)
        send_command(store, request.userId, Disconnect(issuedAt=utcnow()))
        return Done(success=True, message=f"{request.userId} is being disconnected; a pairing is kept")

    @post("/logout", status_code=200, sync_to_thread=True, opt=documented(UserRequest))
    def logout(self, body: RawBody, store: NamedDependency[ObjectStore], principal: NamedDependency[Principal]) -> Done:
        """Unlink the device from the account and delete its stored credentials."""
        request = read_body(body, UserRequest, principal=principal)
        _require_session(store, request.userId)
        send_command(store, request.userId, Logout(issuedAt=utcnow()))
        return Done(success=True, message=f"{request.userId} is being logged out; the next connect shows a new QR")


def _require_session(store: ObjectStore, user_id: str) -> None:
    if read_status(store, user_id) is None:
        raise NotFoundError(f"there is no session for {user_id}")


def _current_qr(store: ObjectStore, user_id: str, principal: Principal) -> str:
    principal.require_user(check_user_id(user_id))
    status = read_status(store, user_id)
    if status is None or not has_qr(status):
        raise NotFoundError(f"{user_id} has no QR code to show now")
    assert status.qr is not None
    return status.qr


def _image(image: object, media_type: str) -> Response[bytes]:
    buffer = io.BytesIO()
    image.save(buffer)  # type: ignore[attr-defined]
    return Response(buffer.getvalue(), media_type=media_type, headers={"Cache-Control": "no-store"})

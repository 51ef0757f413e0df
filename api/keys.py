"""``/keys``: the admin makes, lists and revokes the per-account API keys (see api/auth.py)."""

from __future__ import annotations

import datetime as dt
import re

import msgspec
from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, RawBody

from api.auth import ApiKey, Principal, create_key, list_keys, revoke_key
from api.errors import InvalidField
from api.openapi import documented
from api.requests import KeyRequest, check_user_id, read_body
from infra.store import ObjectStore

_KEY_ID = re.compile(r"^[0-9a-f]{16}$")


class KeyInfo(msgspec.Struct):
    """A key as listed: never its secret, which only ``POST /keys`` shows, once."""

    keyId: str
    userId: str
    label: str
    createdAt: dt.datetime
    revokedAt: dt.datetime | None


class NewKey(msgspec.Struct):
    """A key just made. ``key`` is shown this once: the store keeps only its hash."""

    keyId: str
    userId: str
    label: str
    createdAt: dt.datetime
    key: str


def info(record: ApiKey) -> KeyInfo:
    return KeyInfo(
        keyId=record.keyId,
        userId=record.userId,
        label=record.label,
        createdAt=record.createdAt,
        revokedAt=record.revokedAt,
    )


class KeyController(Controller):
    path = "/keys"

    @post("/", status_code=201, sync_to_thread=True, opt=documented(KeyRequest, 403))
    def create(
        self, body: RawBody, store: NamedDependency[ObjectStore], principal: NamedDependency[Principal]
    ) -> NewKey:
        """Make a key that opens one account (its sessions, jobs and pages); admin key only."""
        principal.require_admin()
        request = read_body(body, KeyRequest)
        record, key = create_key(store, request.userId, request.label)
        return NewKey(keyId=record.keyId, userId=record.userId, label=record.label, createdAt=record.createdAt, key=key)

    @get("/", sync_to_thread=True, opt=documented(None, 403))
    def list(
        self,
        store: NamedDependency[ObjectStore],
        principal: NamedDependency[Principal],
        userId: FromQuery[str | None] = None,
    ) -> list[KeyInfo]:
        """The keys (of one account with ``userId``), revoked ones included, oldest first; admin key only."""
        principal.require_admin()
        return [info(record) for record in list_keys(store, None if userId is None else check_user_id(userId))]

    @delete("/{key_id:str}", status_code=200, sync_to_thread=True, opt=documented(None, 403))
    def revoke(
        self, key_id: FromPath[str], store: NamedDependency[ObjectStore], principal: NamedDependency[Principal]
    ) -> KeyInfo:
        """Revoke a key: it stops working at once, on every copy of the API; admin key only."""
        principal.require_admin()
        if not _KEY_ID.match(key_id):
            raise InvalidField("keyId", "is not a key id (16 hexadecimal digits)")
        return info(revoke_key(store, key_id))

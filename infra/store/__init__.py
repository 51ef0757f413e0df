"""The object store: one small interface, an S3 backend and a local-directory backend.

Coordination between processes rests on create-only writes (``put(..., create_only=True)``), which
every S3 server tried was atomic about. ``if_match`` protects a single writer from overwriting a
newer version it has not read, but it is no lock: on Ceph RGW 16.2 two concurrent writers with the
same If-Match both won about one round in ten.

Errors::

    StoreError
    ├── NotFound            the key does not exist
    ├── PreconditionFailed  create_only found the key, or if_match found another version
    └── StoreUnavailable    the store could not be reached or answered with a server error
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable

import msgspec

from infra.settings import Settings

logger = logging.getLogger(__name__)


class StoreError(Exception):
    """Base of the store's errors."""


class NotFound(StoreError):
    pass


class PreconditionFailed(StoreError):
    pass


class StoreUnavailable(StoreError):
    pass


class StoredObject(msgspec.Struct, frozen=True):
    data: bytes
    etag: str


@runtime_checkable
class ObjectStore(Protocol):
    """Keys are ``/``-separated relative paths of printable characters, with no ``..`` segment."""

    def get(self, key: str) -> StoredObject: ...

    def put(self, key: str, data: bytes, *, create_only: bool = False, if_match: str | None = None) -> str:
        """Write ``data`` and return the new ETag."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""
        ...

    def list(self, prefix: str) -> Iterator[str]:
        """Yield the keys under ``prefix`` in lexicographic order."""
        ...

    def exists(self, key: str) -> bool: ...

    def check(self) -> None:
        """Raise StoreUnavailable with a readable reason if the store cannot be used."""
        ...


def check_key(key: str) -> str:
    if not key or key.startswith("/") or key.endswith("/") or "//" in key:
        raise ValueError(f"bad store key {key!r}")
    if any(part in (".", "..") for part in key.split("/")) or not key.isprintable():
        raise ValueError(f"bad store key {key!r}")
    return key


_unusable_said: set[str] = set()


def usable_keys(keys: Iterable[str]) -> Iterator[str]:
    """The listed keys that ``check_key`` accepts. An object that another system dropped under a name
    zapgate cannot use (a control character, a ``..`` segment) is left where it is and said once in
    the log: listing it would make every reader of that folder fail on it."""
    for key in keys:
        try:
            yield check_key(key)
        except ValueError:
            if key not in _unusable_said and len(_unusable_said) < 1000:
                _unusable_said.add(key)
                logger.warning("store: the object %r has a name zapgate cannot use; it is left as it is", key)


def open_store(settings: Settings) -> ObjectStore:
    """Build the backend that ``settings.store`` names: ``s3://bucket/prefix`` or a directory."""
    if settings.store_is_s3:
        from infra.store.s3 import S3Store

        bucket, _, prefix = settings.store[len("s3://") :].partition("/")
        return S3Store.from_settings(settings.s3, bucket, prefix)
    from infra.store.local import LocalStore

    return LocalStore(settings.store)

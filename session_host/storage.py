"""The host's async view of the object store: typed documents, and writes that wait out outages.

The store's calls block (boto3), so each runs in a worker thread. A checkpoint that cannot be
written is retried with backoff instead of being skipped: the host sends nothing more for that
account until its progress is safe in the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from infra.documents import decode, encode
from infra.store import NotFound, ObjectStore, StoreUnavailable

logger = logging.getLogger(__name__)
T = TypeVar("T")

_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)


class Storage:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    async def read(self, key: str, type_: type[T]) -> T | None:
        try:
            stored = await asyncio.to_thread(self.store.get, key)
        except NotFound:
            return None
        return decode(stored.data, type_)

    async def get_bytes(self, key: str) -> bytes | None:
        try:
            return (await asyncio.to_thread(self.store.get, key)).data
        except NotFound:
            return None

    async def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        await asyncio.to_thread(self.store.put, key, data, create_only=create_only)

    async def write(self, key: str, document: Any) -> None:
        await self.put(key, encode(document))

    async def write_safely(self, key: str, document: Any) -> None:
        """Write, retrying through store outages until it is done."""
        data = encode(document)
        await self.safely(key, self.store.put, key, data)

    async def safely(self, what: str, write: Callable[..., Any], *args: Any) -> None:
        """Run the blocking ``write(*args)`` in a thread, retrying through store outages until done."""
        attempt = 0
        while True:
            try:
                await asyncio.to_thread(write, *args)
                return
            except StoreUnavailable as exc:
                delay = _BACKOFF[min(attempt, len(_BACKOFF) - 1)]
                attempt += 1
                logger.warning("store write of %s failed (%s); retrying in %.1f s", what, exc, delay)
                await asyncio.sleep(delay)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.store.delete, key)

    async def list(self, prefix: str) -> list[str]:
        return await asyncio.to_thread(lambda: list(self.store.list(prefix)))

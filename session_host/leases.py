"""Which session host serves which account: one lease per account, kept in the store.

::

    leases/<userId>/<epoch>.json    {"hostId": ..., "takenAt": ...}, written create-only

An account belongs to the host named in its highest epoch, for as long as that host is alive (its
``HostBeat`` is fresh and does not say it stopped). Another host takes an account over by creating
the next epoch; the write is create-only, so of two hosts racing for it exactly one wins. The host
that held it notices the higher epoch at its next check (at every heartbeat) and lets the
session go without writing anything more for it.

Leases rest on create-only writes only: If-Match was not atomic under concurrent writers on every
S3 server tried, so no compare-and-swap is used. What this does not cover: a host that stops
beating but is still running (a long store outage, a frozen process) keeps its sessions until its
next check after it wakes; meanwhile the new owner may connect too, and WhatsApp then replaces the
older connection ("stream replaced"), which the older host answers by letting the session go.
"""

from __future__ import annotations

import logging

import msgspec

from infra import layout
from infra.documents import HostBeat, utcnow
from infra.store import PreconditionFailed
from session_host.storage import Storage

logger = logging.getLogger(__name__)


class Lease(msgspec.Struct):
    hostId: str
    takenAt: str


class Leases:
    def __init__(self, storage: Storage, host_id: str) -> None:
        self.storage = storage
        self.host_id = host_id

    async def holder(self, user_id: str) -> tuple[int, str | None]:
        """The account's current epoch and the host named in it (0 and None: never leased)."""
        keys = await self.storage.list(layout.leases(user_id))
        if not keys:
            return 0, None
        last = keys[-1]
        lease = await self.storage.read(last, Lease)
        return int(last.rsplit("/", 1)[1].removesuffix(".json")), lease.hostId if lease else None

    async def holds(self, user_id: str) -> bool:
        return (await self.holder(user_id))[1] == self.host_id

    async def acquire(self, user_id: str) -> bool:
        """True when this host serves the account now: it held it, or took it over from no one or a dead host."""
        epoch, holder = await self.holder(user_id)
        if holder == self.host_id:
            return True
        if holder is not None and await self._alive(holder):
            return False
        lease = Lease(hostId=self.host_id, takenAt=utcnow().isoformat())
        try:
            await self.storage.put(layout.lease(user_id, epoch + 1), msgspec.json.encode(lease), create_only=True)
        except PreconditionFailed:
            logger.info("user=%s another host took the account first", user_id)
            return False
        if holder is not None:
            logger.warning("user=%s taken over from host %s, which stopped answering", user_id, holder)
        if epoch > 0:  # keep the last two epochs: the one taken over says who held it before
            for old in range(max(1, epoch - 5), epoch):
                await self.storage.delete(layout.lease(user_id, old))
        return True

    async def _alive(self, host_id: str) -> bool:
        beat = await self.storage.read(layout.host_beat(host_id), HostBeat)
        return beat is not None and beat.alive(utcnow())

"""The accounts' WhatsApp credentials at rest: ``sessions/<userId>/auth.db`` in the store.

With ``ZAPGATE_HOST_AUTH_KEY`` set (32 random bytes in base64, as ``openssl rand -base64 32``
prints), each credentials blob is encrypted with AES-256-GCM before it leaves the host, in a small
self-describing envelope::

    offset  size  field
    0       12    magic b"zapgate-auth"
    12      1     envelope version (1)
    13      8     key id: the first 8 bytes of SHA-256("zapgate auth key id\\0" + key); names the key,
                  reveals nothing of it
    21      12    nonce, random for every write
    33      ...   ciphertext, then GCM's 16-byte tag

The associated data is the first 21 bytes (magic, version, key id) followed by the userId, so a
blob copied to another account's folder, or with a changed header, fails to decrypt.

Reading (``CredentialVault.load``):

* An envelope is decrypted with the key its id names: ``ZAPGATE_HOST_AUTH_KEY``, or
  ``ZAPGATE_HOST_AUTH_KEY_PREVIOUS`` while a key is rotated out. No such key, a key that does not
  decrypt it, a cut-short envelope or an unknown version raise ``CredentialsUnreadable``, whose
  message says what is wrong and how to fix it. The session then goes to ``failed`` with that
  message and starts no new pairing, so the blob is never overwritten; after fixing the keys, a
  restart of the host (or a connect) picks the account up again.
* Anything without the magic is a blob from before encryption (neonize's SQLite file, or the
  simulator's JSON). It is read as it is, and re-written encrypted at the next save (on the next
  connect): configuring a key migrates every account as it connects, without losing a pairing.
* After a rotation, blobs under the previous key are re-written under the new one at the next
  save. Setting only ``ZAPGATE_HOST_AUTH_KEY_PREVIOUS`` turns encryption off the same way: the
  blobs are read with it and written back in plaintext.

What this protects, and what it does not:

* Protected: the copies in the store and its backups. Whoever reads the bucket without the key
  cannot read the credentials, and cannot alter a blob or move it to another account unnoticed.
* Not protected: while a session runs (and after it stops) the host keeps a plaintext copy in its
  work directory (``ZAPGATE_HOST_WORK_DIR``/<userId>/auth.db), which neonize needs as a file; keep
  that directory private to the host's user. The key itself is in the host's environment.
* Not protected: a plaintext blob is still accepted (that is the migration), so whoever can write
  to the bucket can plant credentials of their own in plaintext. The key keeps the credentials
  secret; it does not make the bucket's write access harmless.
* Without a key, the blobs are neonize's database as it is: anyone who can read the bucket can act
  as those WhatsApp accounts.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from infra import layout
from infra.settings import PREFIX, HostSettings, Secret, decode_key
from session_host.storage import Storage

logger = logging.getLogger(__name__)

MAGIC = b"zapgate-auth"
VERSION = 1
KEY_ID_SIZE = 8
NONCE_SIZE = 12
TAG_SIZE = 16
_HEADER = struct.Struct(f">{len(MAGIC)}sB{KEY_ID_SIZE}s")  # magic, version, key id
ENVELOPE_OVERHEAD = _HEADER.size + NONCE_SIZE + TAG_SIZE

KEY_VARIABLE = f"{PREFIX}HOST_AUTH_KEY"
PREVIOUS_KEY_VARIABLE = f"{PREFIX}HOST_AUTH_KEY_PREVIOUS"
_LEFT_ALONE = "The stored credentials were left as they are."


def remove_local_copy(path: str | os.PathLike[str]) -> None:
    """Delete the working copy of an account's credentials with SQLite's side files. A journal left
    by a worker killed mid-transaction would otherwise be taken as hot by the next database written
    at that path, and rolled back into it: the restored credentials mixed with stale pages."""
    for suffix in ("", "-journal", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{os.fspath(path)}{suffix}")


class CredentialsUnreadable(Exception):
    """The stored credentials cannot be read with the configured keys; the message says why and
    what to do. It never holds a key or any of the blob's content."""


class EncryptionKey:
    """An AES-256-GCM key and its public id."""

    def __init__(self, raw: bytes, source: str) -> None:
        self.id = key_id(raw)
        self.source = source  # the variable it came from, for messages
        self._aead = AESGCM(raw)

    @classmethod
    def from_setting(cls, value: Secret, variable: str) -> EncryptionKey:
        return cls(decode_key(value, variable), variable)

    def __repr__(self) -> str:
        return f"EncryptionKey(id={self.id.hex()}, from {self.source})"

    def encrypt(self, nonce: bytes, data: bytes, associated: bytes) -> bytes:
        return self._aead.encrypt(nonce, data, associated)

    def decrypt(self, nonce: bytes, data: bytes, associated: bytes) -> bytes:
        return self._aead.decrypt(nonce, data, associated)


def key_id(raw: bytes) -> bytes:
    return hashlib.sha256(b"zapgate auth key id\0" + raw).digest()[:KEY_ID_SIZE]


@dataclass(frozen=True)
class Restored:
    """Credentials read from the store. ``current``: stored as a save would store them now (under
    the current key, or in plaintext when there is none); if not, the next save re-writes them."""

    blob: bytes
    current: bool
    encrypted: bool

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.blob).hexdigest()


class CredentialVault:
    """Loads, saves and deletes the per-account credentials blob, encrypting when a key is set."""

    def __init__(self, storage: Storage, key: EncryptionKey | None, previous: EncryptionKey | None = None) -> None:
        self.storage = storage
        self.key = key
        self.previous = previous

    @classmethod
    def for_host(cls, storage: Storage, settings: HostSettings) -> CredentialVault:
        key = previous = None
        if settings.auth_key is not None:
            key = EncryptionKey.from_setting(settings.auth_key, KEY_VARIABLE)
        if settings.auth_key_previous is not None:
            previous = EncryptionKey.from_setting(settings.auth_key_previous, PREVIOUS_KEY_VARIABLE)
        return cls(storage, key, previous)

    @property
    def encrypts(self) -> bool:
        return self.key is not None

    async def load(self, user_id: str) -> Restored | None:
        """The account's credentials, or None when it has none. Raises CredentialsUnreadable."""
        stored = await self.storage.get_bytes(layout.session_auth(user_id))
        if stored is None:
            return None
        restored = self.open(user_id, stored)
        if not restored.current:
            logger.warning(
                "user=%s credentials are stored %s; they are re-written %s at the next save",
                user_id,
                "under the previous key" if restored.encrypted else "unencrypted",
                "under the current key" if self.encrypts else "unencrypted",
            )
        return restored

    async def save(self, user_id: str, blob: bytes) -> None:
        await self.storage.put(layout.session_auth(user_id), self.seal(user_id, blob))

    async def delete(self, user_id: str) -> None:
        await self.storage.delete(layout.session_auth(user_id))

    # -- the envelope --------------------------------------------------------------------------------

    def seal(self, user_id: str, blob: bytes) -> bytes:
        """``blob`` as stored: in an envelope under the current key, or as it is without a key."""
        if self.key is None:
            return blob
        header = _HEADER.pack(MAGIC, VERSION, self.key.id)
        nonce = os.urandom(NONCE_SIZE)
        return header + nonce + self.key.encrypt(nonce, blob, header + user_id.encode())

    def open(self, user_id: str, stored: bytes) -> Restored:
        if not stored.startswith(MAGIC):
            return Restored(stored, current=self.key is None, encrypted=False)
        if len(stored) < ENVELOPE_OVERHEAD:
            raise CredentialsUnreadable(
                f"the stored WhatsApp credentials are cut short ({len(stored)} bytes, an encrypted envelope has "
                f"at least {ENVELOPE_OVERHEAD}); restore sessions/{user_id}/auth.db from a backup, or log out "
                f"to pair again. {_LEFT_ALONE}"
            )
        header = stored[: _HEADER.size]
        _, version, stored_key_id = _HEADER.unpack(header)
        if version != VERSION:
            raise CredentialsUnreadable(
                f"the stored WhatsApp credentials are in envelope version {version}, which this zapgate does not "
                f"know (only {VERSION}); run the zapgate version that wrote them. {_LEFT_ALONE}"
            )
        key = self._key_with_id(stored_key_id)
        nonce, ciphertext = stored[_HEADER.size : _HEADER.size + NONCE_SIZE], stored[_HEADER.size + NONCE_SIZE :]
        try:
            blob = key.decrypt(nonce, ciphertext, header + user_id.encode())
        except InvalidTag:
            raise CredentialsUnreadable(
                f"the stored WhatsApp credentials do not decrypt with the key they name ({key.source}, key id "
                f"{key.id.hex()}): they were written for another account (copied from another userId's folder), "
                f"or altered or damaged; put this account's own auth.db back, or log out to pair again. "
                f"{_LEFT_ALONE}"
            ) from None
        return Restored(blob, current=key is self.key, encrypted=True)

    def _key_with_id(self, wanted: bytes) -> EncryptionKey:
        for key in (self.key, self.previous):
            if key is not None and key.id == wanted:
                return key
        raise CredentialsUnreadable(f"{self._missing_key(wanted)}. {_LEFT_ALONE}")

    def _missing_key(self, wanted: bytes) -> str:
        problem = f"the stored WhatsApp credentials are encrypted with key id {wanted.hex()}"
        fix = f"set {KEY_VARIABLE} (or {PREVIOUS_KEY_VARIABLE} while rotating keys) to that key and restart the host"
        configured = [f"{key.source} has key id {key.id.hex()}" for key in (self.key, self.previous) if key]
        if not configured:
            return f"{problem}, but no key is configured ({KEY_VARIABLE} is not set); {fix}"
        return f"{problem}, but that is not the configured key ({', '.join(configured)}); {fix}"

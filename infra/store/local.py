"""The embedded default store: a directory on the local disk.

Writes go to a temporary file first and are moved into place, so a reader never sees half an
object. Create-only writes use ``link()``, which fails atomically when the name exists; if_match
writes hold an exclusive ``flock`` on a lock file beside the object while they compare and replace.
Several processes on one machine may share a directory; a network filesystem is not supported.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from infra.store import NotFound, PreconditionFailed, StoredObject, StoreUnavailable, check_key, usable_keys

_LOCK_SUFFIX = ".zg-lock"
_TEMP_PREFIX = ".zg-tmp-"


def etag_of(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class LocalStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def get(self, key: str) -> StoredObject:
        try:
            data = self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(key) from None
        return StoredObject(data=data, etag=etag_of(data))

    def put(self, key: str, data: bytes, *, create_only: bool = False, if_match: str | None = None) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = self._write_temp(path.parent, data)
        try:
            if create_only:
                try:
                    os.link(temp, path)
                except FileExistsError:
                    raise PreconditionFailed(key) from None
            elif if_match is not None:
                with self._locked(path):
                    if self._current_etag(path) != if_match.strip('"'):
                        raise PreconditionFailed(key)
                    os.replace(temp, path)
            else:
                os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
        return etag_of(data)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        path.with_name(path.name + _LOCK_SUFFIX).unlink(missing_ok=True)

    def list(self, prefix: str) -> Iterator[str]:
        keys = []
        start = self.root / prefix.rpartition("/")[0]  # walk only the folder the prefix names
        for dirpath, _, filenames in os.walk(start):
            base = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(_TEMP_PREFIX) or name.endswith(_LOCK_SUFFIX):
                    continue
                key = name if base == "." else f"{base}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        yield from usable_keys(sorted(keys))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise StoreUnavailable(f"the store directory {self.root} is not writable")

    def _write_temp(self, directory: Path, data: bytes) -> Path:
        fd, name = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=directory)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        return Path(name)

    def _current_etag(self, path: Path) -> str | None:
        try:
            return etag_of(path.read_bytes())
        except FileNotFoundError:
            return None

    @contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        with open(path.with_name(path.name + _LOCK_SUFFIX), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

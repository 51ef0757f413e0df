"""A consistent copy of a session's SQLite credentials, taken in a process of its own.

neonize's Go library carries a copy of SQLite of its own. Two copies of SQLite in one process do
not see each other's locks: POSIX locks belong to the process, and closing a file through either
copy drops both copies' locks on it. A backup taken by Python's SQLite inside the worker could so
mix pages of two of whatsmeow's transactions, and would leave the Go side unlocked. The worker
therefore takes it with ``python -m session_host.whatsapp.snapshot PATH``, in a process whose
locks the Go side's SQLite honours; that process writes the copy to its standard output.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

NO_DEVICE = 3  # exit status: no file, or no paired device in it
TIMEOUT = 60.0  # seconds; SQLite itself waits up to 30 s for whatsmeow's write to end


class SnapshotFailed(RuntimeError):
    pass


def snapshot_auth(path: str) -> bytes | None:
    """SQLite's online backup of the credentials (never a raw file copy), or None when there is no
    file or no paired device in it. In this process: only where no other SQLite writes the file."""
    source_path = Path(path)
    if not source_path.is_file():
        return None
    source = sqlite3.connect(f"{source_path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        if not _has_paired_device(source):
            return None
        fd, temp = tempfile.mkstemp(prefix=".snapshot-", suffix=".db", dir=source_path.resolve().parent)
        os.close(fd)
        try:
            target = sqlite3.connect(temp)
            try:
                source.backup(target)
            finally:
                target.close()
            return Path(temp).read_bytes()
        finally:
            os.unlink(temp)
    finally:
        source.close()


def snapshot_in_own_process(path: str, timeout: float = TIMEOUT) -> bytes | None:
    """``snapshot_auth`` run in a new process (see the module docstring); raises SnapshotFailed."""
    try:
        done = subprocess.run([sys.executable, "-m", __name__, path], capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise SnapshotFailed(f"the credentials snapshot took more than {timeout:.0f} s") from None
    if done.returncode == NO_DEVICE:
        return None
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        raise SnapshotFailed(f"the credentials snapshot failed: {said[-1] if said else done.returncode}")
    return done.stdout


def _has_paired_device(connection: sqlite3.Connection) -> bool:
    try:
        return connection.execute("SELECT 1 FROM whatsmeow_device LIMIT 1").fetchone() is not None
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # neonize never connected with this file
            return False
        raise


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m session_host.whatsapp.snapshot PATH", file=sys.stderr)
        return 2
    try:
        data = snapshot_auth(argv[0])
    except sqlite3.Error as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if data is None:
        return NO_DEVICE
    sys.stdout.buffer.write(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

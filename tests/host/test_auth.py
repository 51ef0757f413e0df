"""The credentials at rest (session_host/auth.py), on the real S3 server.

The vault's own round trips and refusals; a real neonize database (its schema created by neonize
itself, offline) through ``export_auth``, encryption, S3 and back; and whole hosts with the
simulated WhatsApp that restart with the right key, no key, a wrong key and a key configured late.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from infra import layout
from infra.settings import HostSettings, Secret, SettingsError, load_settings
from infra.store import ObjectStore
from infra.store.s3 import S3Store
from session_host.auth import MAGIC, CredentialsUnreadable, CredentialVault, EncryptionKey, Restored, key_id
from session_host.storage import Storage
from session_host.whatsapp.neonize_client import NeonizeClient
from tests.host.harness import HostHarness, until

SQLITE_HEADER = b"SQLite format 3\x00"


def new_key() -> Secret:
    return Secret(base64.b64encode(os.urandom(32)).decode())


def vault_for(store: ObjectStore, key: Secret | None = None, previous: Secret | None = None) -> CredentialVault:
    return CredentialVault.for_host(Storage(store), HostSettings(auth_key=key, auth_key_previous=previous))


def stored(store: ObjectStore, user_id: str) -> bytes:
    return store.get(layout.session_auth(user_id)).data


def sqlite_blob(path: Path, marker: str) -> bytes:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE whatsmeow_device (jid TEXT PRIMARY KEY, push_name TEXT)")
    db.execute("INSERT INTO whatsmeow_device VALUES (?, ?)", ("5511977770000.0:7@s.whatsapp.net", marker))
    db.commit()
    db.close()
    return path.read_bytes()


def load(vault: CredentialVault, user_id: str) -> Restored | None:
    return asyncio.run(vault.load(user_id))


def save(vault: CredentialVault, user_id: str, blob: bytes) -> None:
    asyncio.run(vault.save(user_id, blob))


def unreadable(vault: CredentialVault, user_id: str) -> str:
    with pytest.raises(CredentialsUnreadable) as caught:
        load(vault, user_id)
    return str(caught.value)


# -- (a) round trip ----------------------------------------------------------------------------------


def test_encrypted_round_trip_and_the_stored_object_is_not_plaintext(s3_store: S3Store, tmp_path: Path) -> None:
    key = new_key()
    blob = sqlite_blob(tmp_path / "auth.db", marker="Ana-Row-Marker")
    vault = vault_for(s3_store, key)
    save(vault, "user1", blob)

    raw = stored(s3_store, "user1")
    assert raw.startswith(MAGIC) and raw[len(MAGIC)] == 1
    assert SQLITE_HEADER not in raw and b"SQLite format 3" not in raw
    assert b"Ana-Row-Marker" not in raw and b"5511977770000" not in raw and b"whatsmeow_device" not in raw

    restored = load(vault_for(s3_store, key), "user1")  # a fresh vault: nothing cached
    assert restored == Restored(blob, current=True, encrypted=True)

    save(vault, "user1", blob)  # the same blob again: a fresh nonce, another ciphertext
    again = stored(s3_store, "user1")
    assert again != raw and again[21:33] != raw[21:33]  # bytes 21-32: the nonce
    assert load(vault, "user1") == restored


def test_without_a_key_the_blob_is_stored_as_it_is(s3_store: S3Store, tmp_path: Path) -> None:
    blob = sqlite_blob(tmp_path / "auth.db", marker="Bia")
    vault = vault_for(s3_store)
    save(vault, "user1", blob)
    assert stored(s3_store, "user1") == blob
    assert load(vault, "user1") == Restored(blob, current=True, encrypted=False)
    assert load(vault, "nobody") is None


# -- (b) refusals ------------------------------------------------------------------------------------


def test_unreadable_without_the_key_or_with_a_wrong_key(s3_store: S3Store, tmp_path: Path) -> None:
    key, wrong = new_key(), new_key()
    save(vault_for(s3_store, key), "user1", sqlite_blob(tmp_path / "auth.db", marker="Cid"))
    written_with = key_id(base64.b64decode(key.reveal())).hex()

    without = unreadable(vault_for(s3_store), "user1")
    assert f"encrypted with key id {written_with}" in without
    assert "no key is configured (ZAPGATE_HOST_AUTH_KEY is not set)" in without
    assert "set ZAPGATE_HOST_AUTH_KEY" in without and "left as they are" in without

    mistaken = unreadable(vault_for(s3_store, wrong), "user1")
    wrong_id = key_id(base64.b64decode(wrong.reveal())).hex()
    assert f"encrypted with key id {written_with}" in mistaken
    assert f"not the configured key (ZAPGATE_HOST_AUTH_KEY has key id {wrong_id})" in mistaken

    for message in (without, mistaken):
        assert key.reveal() not in message and wrong.reveal() not in message and "Cid" not in message


def test_a_blob_of_one_user_cannot_be_read_as_another(s3_store: S3Store, tmp_path: Path) -> None:
    key = new_key()
    vault = vault_for(s3_store, key)
    save(vault, "userA", sqlite_blob(tmp_path / "auth.db", marker="Dora"))
    s3_store.put(layout.session_auth("userB"), stored(s3_store, "userA"))  # copied into B's folder

    message = unreadable(vault, "userB")
    assert "do not decrypt with the key they name (ZAPGATE_HOST_AUTH_KEY" in message
    assert "written for another account" in message
    assert load(vault, "userA") is not None  # where it belongs, it still reads


def test_altered_cut_short_and_unknown_version_envelopes_are_refused(s3_store: S3Store, tmp_path: Path) -> None:
    key = new_key()
    vault = vault_for(s3_store, key)
    save(vault, "user1", sqlite_blob(tmp_path / "auth.db", marker="Eva"))
    good = stored(s3_store, "user1")
    key_auth = layout.session_auth("user1")

    flipped = bytearray(good)
    flipped[-40] ^= 1
    s3_store.put(key_auth, bytes(flipped))
    assert "altered or damaged" in unreadable(vault, "user1")

    s3_store.put(key_auth, good[:30])
    assert "cut short (30 bytes" in unreadable(vault, "user1")

    s3_store.put(key_auth, good[: len(MAGIC)] + b"\x02" + good[len(MAGIC) + 1 :])
    assert "envelope version 2" in unreadable(vault, "user1")


def test_a_rotated_key_still_reads_and_the_next_save_uses_the_new_one(s3_store: S3Store, tmp_path: Path) -> None:
    old, new = new_key(), new_key()
    blob = sqlite_blob(tmp_path / "auth.db", marker="Fabi")
    save(vault_for(s3_store, old), "user1", blob)

    rotating = vault_for(s3_store, new, previous=old)
    assert load(rotating, "user1") == Restored(blob, current=False, encrypted=True)
    save(rotating, "user1", blob)
    assert stored(s3_store, "user1")[13:21] == key_id(base64.b64decode(new.reveal()))  # bytes 13-20: the key id
    assert load(vault_for(s3_store, new), "user1") == Restored(blob, current=True, encrypted=True)

    # Only the previous key: read with it, written back in plaintext (how encryption is turned off).
    turning_off = vault_for(s3_store, previous=new)
    assert load(turning_off, "user1") == Restored(blob, current=False, encrypted=True)
    save(turning_off, "user1", blob)
    assert stored(s3_store, "user1") == blob


def test_the_key_setting_is_checked_at_start_up_and_never_shown() -> None:
    raw = os.urandom(32)
    for given in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("=")):
        settings = load_settings({"ZAPGATE_HOST_AUTH_KEY": given, "ZAPGATE_HOST_AUTH_KEY_PREVIOUS": given})
        assert settings.host.auth_key is not None and settings.host.auth_key.reveal() == given
        assert given not in repr(settings) and given not in str(settings.host.auth_key)
        assert EncryptionKey.from_setting(settings.host.auth_key, "ZAPGATE_HOST_AUTH_KEY").id == key_id(raw)

    too_short = base64.b64encode(raw[:16]).decode()
    for variable, value in [
        ("ZAPGATE_HOST_AUTH_KEY", too_short),
        ("ZAPGATE_HOST_AUTH_KEY", "not base64 at all!"),
        ("ZAPGATE_HOST_AUTH_KEY", ""),
        ("ZAPGATE_HOST_AUTH_KEY_PREVIOUS", too_short),
    ]:
        with pytest.raises(SettingsError, match=f"^{variable}: must be 32 random bytes in base64") as caught:
            load_settings({variable: value})
        assert too_short not in str(caught.value)


# -- (c) a real neonize database ---------------------------------------------------------------------

MAKE_NEONIZE_DB = """
import sys
from neonize.client import NewClient
NewClient(sys.argv[1]).connect()  # creates the database and whatsmeow's schema, then dials WhatsApp
"""


def neonize_database(path: Path) -> None:
    """Let neonize create its own database: offline, connect() fails within a second (DNS); online,
    it would wait for a QR scan, so it is stopped after a while. Either way the schema is there."""
    with contextlib.suppress(subprocess.TimeoutExpired):  # run() kills the child on its timeout
        subprocess.run([sys.executable, "-c", MAKE_NEONIZE_DB, str(path)], capture_output=True, timeout=30)
    assert path.is_file(), "neonize created no database file"


def add_fake_device(path: Path) -> None:
    """One paired device, as whatsmeow would store it (made-up keys of the right sizes)."""
    jid = "5511977770000.0:7@s.whatsapp.net"
    db = sqlite3.connect(path)
    db.execute(
        "INSERT INTO whatsmeow_device (jid, lid, registration_id, noise_key, identity_key, signed_pre_key,"
        " signed_pre_key_id, signed_pre_key_sig, adv_key, adv_details, adv_account_sig, adv_account_sig_key,"
        " adv_device_sig, platform, push_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (jid, "123456789.0:7@lid", 4242, os.urandom(32), os.urandom(32), os.urandom(32), 1, os.urandom(64),
         os.urandom(32), os.urandom(100), os.urandom(64), os.urandom(32), os.urandom(64), "android", "Gina-Push-Name"),
    )  # fmt: skip
    db.executemany(
        "INSERT INTO whatsmeow_pre_keys VALUES (?, ?, ?, ?)", [(jid, i, os.urandom(32), i % 2) for i in range(1, 101)]
    )
    db.executemany(
        "INSERT INTO whatsmeow_sessions VALUES (?, ?, ?)", [(jid, f"55119{i:08}.0", os.urandom(900)) for i in range(40)]
    )
    db.execute("INSERT INTO whatsmeow_identity_keys VALUES (?, ?, ?)", (jid, "5511900000001.0", os.urandom(32)))
    db.execute("INSERT INTO whatsmeow_lid_map VALUES (?, ?)", ("123456789", "5511977770000"))
    db.commit()
    db.close()


def dump(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return list(db.iterdump())
    finally:
        db.close()


def test_a_real_neonize_database_survives_export_encryption_s3_and_restore(s3_store: S3Store, tmp_path: Path) -> None:
    source = tmp_path / "host1" / "user1" / "auth.db"
    source.parent.mkdir(parents=True)
    neonize_database(source)
    db = sqlite3.connect(source)
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"whatsmeow_device", "whatsmeow_sessions", "whatsmeow_pre_keys", "whatsmeow_version"} <= tables
    assert db.execute("SELECT count(*) FROM whatsmeow_version").fetchone() == (1,)  # whatsmeow's migrations ran
    db.close()
    add_fake_device(source)

    key = new_key()

    async def through_the_vault() -> bytes:
        client = NeonizeClient("user1", str(source), lambda _event: None)
        blob = await client.export_auth()  # SQLite's online backup of neonize's file
        assert blob is not None and blob.startswith(SQLITE_HEADER)
        await vault_for(s3_store, key).save("user1", blob)
        restored = await vault_for(s3_store, key).load("user1")  # as another host would
        assert restored is not None
        return restored.blob

    restored_blob = asyncio.run(through_the_vault())
    raw = stored(s3_store, "user1")
    assert b"SQLite format 3" not in raw and b"Gina-Push-Name" not in raw and b"5511977770000" not in raw

    copy = tmp_path / "host2" / "user1" / "auth.db"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(restored_blob)
    assert dump(copy) == dump(source)  # schema and every row of every table
    db = sqlite3.connect(copy)
    assert db.execute("SELECT push_name, platform FROM whatsmeow_device").fetchall() == [("Gina-Push-Name", "android")]
    assert db.execute("SELECT count(*) FROM whatsmeow_pre_keys").fetchone() == (100,)
    db.close()


# -- (d) whole hosts ---------------------------------------------------------------------------------


async def failed_with(h: HostHarness, user_id: str, phrase: str) -> str:
    async def failed() -> str | None:
        status = await h.status(user_id)
        if status is not None and status.state == "failed" and phrase in (status.detail or ""):
            return status.detail
        return None

    detail: str = await until(failed, 10, f"{user_id} to fail with {phrase!r}")
    await asyncio.sleep(1.0)  # and stay so: no client, no QR, nothing written
    status = await h.status(user_id)
    assert status is not None and status.state == "failed" and status.qr is None and status.pairCode is None
    assert h.host.sessions[user_id].client is None
    return detail


def test_hosts_with_the_key_reconnect_and_without_it_fail_leaving_the_blob(s3_store: S3Store, tmp_path: Path) -> None:
    key, wrong = new_key(), new_key()

    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path, auth_key=key) as h:
            await h.connect("user1", "5511977770000")
        blob = await asyncio.to_thread(stored, s3_store, "user1")
        assert blob.startswith(MAGIC) and b"5511977770000" not in blob and b"jid" not in blob

        shutil.rmtree(tmp_path / "work")  # the next host has only what is in the store
        async with HostHarness(s3_store, tmp_path, auth_key=key) as h:
            status = await h.until_state("user1", "connected")  # no scan: a QR would never get here
            assert status.jid == "5511977770000@s.whatsapp.net"

        async with HostHarness(s3_store, tmp_path) as h:
            detail = await failed_with(h, "user1", "no key is configured")
            assert "set ZAPGATE_HOST_AUTH_KEY" in detail and key.reveal() not in detail

        async with HostHarness(s3_store, tmp_path, auth_key=wrong) as h:
            detail = await failed_with(h, "user1", "not the configured key")
            assert key.reveal() not in detail and wrong.reveal() not in detail

        assert await asyncio.to_thread(stored, s3_store, "user1") == blob  # untouched by both

        async with HostHarness(s3_store, tmp_path, auth_key=key) as h:  # the key is back: so is the account
            await h.until_state("user1", "connected")

    asyncio.run(scenario())


def test_a_key_configured_later_encrypts_plaintext_credentials_at_the_next_connect(
    s3_store: S3Store, tmp_path: Path
) -> None:
    key = new_key()

    async def scenario() -> None:
        async with HostHarness(s3_store, tmp_path) as h:
            await h.connect("user1", "5511977770000")
        plaintext = await asyncio.to_thread(stored, s3_store, "user1")
        assert b"5511977770000@s.whatsapp.net" in plaintext

        async with HostHarness(s3_store, tmp_path, auth_key=key) as h:
            await h.until_state("user1", "connected")  # with the plaintext credentials: no scan

            async def encrypted_now() -> bytes | None:
                data = await asyncio.to_thread(stored, s3_store, "user1")
                return data if data.startswith(MAGIC) else None

            encrypted = await until(encrypted_now, 10, "the credentials to be re-written encrypted")
            assert b"5511977770000" not in encrypted
            assert (await vault_for(s3_store, key).load("user1")) == Restored(plaintext, current=True, encrypted=True)

    asyncio.run(scenario())


def test_a_journal_left_by_a_killed_worker_is_not_rolled_into_the_restored_credentials(
    s3_store: S3Store, tmp_path: Path
) -> None:
    from session_host.sessions import Session
    from session_host.whatsapp.simulated import SimulatedBackend

    settings = HostSettings(id="h1", work_dir=str(tmp_path / "work"))
    work_copy = Path(settings.work_dir) / "user1" / "auth.db"
    work_copy.parent.mkdir(parents=True)
    sqlite_blob(work_copy, "old-device")
    # A writer killed in the middle of a transaction (a worker's kill -9) leaves a hot journal.
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, signal, sqlite3, sys\n"
            "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "db.execute('PRAGMA journal_mode=DELETE'); db.execute('BEGIN')\n"
            "db.execute(\"UPDATE whatsmeow_device SET push_name = 'half-written'\")\n"
            "db.execute('CREATE TABLE filler (x)')\n"
            "db.executemany('INSERT INTO filler VALUES (?)', [('x' * 500,)] * 200)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n",
            str(work_copy),
        ],
        check=False,
    )
    assert killed.returncode == -9 and Path(f"{work_copy}-journal").exists()

    blob = sqlite_blob(tmp_path / "stored.db", "stored-device")
    session = Session("user1", SimulatedBackend(tmp_path / "wa"), Storage(s3_store), settings)
    asyncio.run(session.vault.save("user1", blob))
    assert asyncio.run(session._restore_auth()) is True

    assert not Path(f"{work_copy}-journal").exists()
    db = sqlite3.connect(work_copy)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert db.execute("SELECT push_name FROM whatsmeow_device").fetchall() == [("stored-device",)]
    db.close()
    assert work_copy.read_bytes() == blob

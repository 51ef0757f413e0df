"""A simulated WhatsApp for tests and demos, kept in a directory that any process can drive.

The host's side is ``SimulatedBackend``/``SimulatedClient``; the driver's side is
``SimulatedWorld`` (or ``python -m session_host.whatsapp.simulated``). Several host processes may
share one world, as several hosts share one real WhatsApp. Layout of the directory::

    config.json                  optional: {"qr_timeouts": [60, 20, 20, 20, 20, 20], "message_ids": true}
                                 ("message_ids": false behaves like neonize 0.5.2, which cannot pass
                                 the host's message id: each send gets a fresh id, so a resend is a
                                 second message; read when a host starts)
    directory.json               which numbers have accounts: {"5511900000001": "551100000001@s.whatsapp.net",
                                 "5511900000099": null}; a number not listed exists as itself
    scans/<userId>.json          the driver "scans" the QR shown to userId (or enters the pair code)
    linked/<userId>.json         the phone's linked-device record; removing it logs the device out
    holders/<userId>.json        which connection holds the session (a newer one replaces the older)
    delivered/<messageId>.json   every message delivered, one file each (so a message id is delivered
                                 at most once, as WhatsApp de-duplicates by id)
    typing.jsonl                 every "typing…" shown: sender, to, seconds, time
    faults/<userId>/<kind>.json  faults armed by the driver, consumed by the client

How a test drives it::

    world = SimulatedWorld(tmp_path / "wa")
    world.set_numbers({"5511900000001": "551100000001@s.whatsapp.net", "5511900000099": None})
    world.scan("user1", phone="5511977770000")   # pairs as soon as a QR is showing
    world.drop_after_next_send("user1", down_for=3)  # message leaves, ack is lost, link down 3 s
    world.hang_after_next_send("user1")            # message leaves, the send never returns
    world.rate_limit("user1", seconds=30)
    world.unreachable("user1", seconds=10)         # connecting fails meanwhile
    world.temporary_ban("user1", seconds=60)       # WhatsApp bans the account and closes the link
    world.unlink("user1")                         # the user removes the device on the phone
    world.delivered("user1")                      # what arrived, in order, with timestamps

The simulator only switches on with ZAPGATE_WHATSAPP_BACKEND=simulated and a directory; the host
then logs a warning at start and marks every session status with ``backend: simulated``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from session_host.whatsapp import (
    AuthChanged,
    Connected,
    Disconnected,
    Emit,
    LoggedOut,
    NotConnected,
    OutcomeUnknown,
    PairCode,
    QrCode,
    QrExpired,
    RateLimited,
    SendReceipt,
    SendRejected,
    StreamReplaced,
    TemporaryBan,
    WhatsAppError,
)

WHATSAPP_QR_TIMEOUTS = (60.0, 20.0, 20.0, 20.0, 20.0, 20.0)
_TICK = 0.05


class Delivered(msgspec.Struct, frozen=True):
    messageId: str
    sender: str
    senderJid: str
    to: str
    text: str
    at: float
    imageSha256: str | None = None
    imageMimetype: str | None = None


class SimulatedWorld:
    """The driver's handle on a simulated WhatsApp directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        for folder in ("scans", "linked", "holders", "delivered", "faults"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    # -- configuration ---------------------------------------------------------------------------

    def set_numbers(self, numbers: dict[str, str | None]) -> None:
        """Say which numbers have an account, and under which JID (None: no account)."""
        directory = self._read("directory.json") or {}
        directory.update(numbers)
        self._write("directory.json", directory)

    def set_qr_timeouts(self, timeouts: Sequence[float]) -> None:
        config = self._read("config.json") or {}
        config["qr_timeouts"] = list(timeouts)
        self._write("config.json", config)

    def qr_timeouts(self) -> tuple[float, ...]:
        config = self._read("config.json") or {}
        return tuple(config.get("qr_timeouts", WHATSAPP_QR_TIMEOUTS))

    def set_message_ids(self, honoured: bool) -> None:
        """Whether a send keeps the host's message id (WhatsApp de-duplicates by it) or gets a fresh
        one, as through neonize 0.5.2. Hosts read it when they start."""
        config = self._read("config.json") or {}
        config["message_ids"] = honoured
        self._write("config.json", config)

    def message_ids_honoured(self) -> bool:
        return bool((self._read("config.json") or {}).get("message_ids", True))

    def jid_of(self, number: str) -> str | None:
        directory = self._read("directory.json") or {}
        if number in directory:
            return directory[number]
        return f"{number}@s.whatsapp.net"

    def has_account(self, jid: str) -> bool:
        """Whether a message to ``jid`` reaches someone: a listed number only under its own JID."""
        directory = self._read("directory.json") or {}
        if jid in directory.values():
            return True
        return jid.split("@", 1)[0] not in directory

    # -- the phone's side --------------------------------------------------------------------------

    def scan(self, user_id: str, phone: str | None = None) -> None:
        """Scan the QR shown to ``user_id`` with the phone of number ``phone``."""
        phone = phone or default_phone(user_id)
        self._write(f"scans/{user_id}.json", {"phone": phone})

    def enter_pair_code(self, user_id: str, code: str, phone: str | None = None) -> None:
        self._write(f"scans/{user_id}.json", {"phone": phone or default_phone(user_id), "code": code})

    def unlink(self, user_id: str) -> None:
        """The user removes the linked device on the phone."""
        (self.root / "linked" / f"{user_id}.json").unlink(missing_ok=True)

    def is_linked(self, user_id: str) -> bool:
        return (self.root / "linked" / f"{user_id}.json").exists()

    # -- faults --------------------------------------------------------------------------------------

    def drop_after_next_send(self, user_id: str, down_for: float = 3.0) -> None:
        """The next message leaves, but the connection breaks before WhatsApp acknowledges it."""
        self._write(f"faults/{user_id}/drop_after_send.json", {"down_for": down_for})

    def hang_after_next_send(self, user_id: str) -> None:
        """The next message leaves, and the send never returns (a frozen link, a host about to die)."""
        self._write(f"faults/{user_id}/hang_after_send.json", {})

    def drop(self, user_id: str, down_for: float = 3.0) -> None:
        """The connection breaks now and comes back after ``down_for`` seconds."""
        self._write(f"faults/{user_id}/drop.json", {"down_for": down_for})

    def fail_next_sends(self, user_id: str, count: int, reason: str = "server error 500") -> None:
        """The next ``count`` sends fail with a passing error, before anything leaves."""
        self._write(f"faults/{user_id}/fail_sends.json", {"count": count, "reason": reason})

    def unreachable(self, user_id: str, seconds: float) -> None:
        """Connecting fails for ``seconds``, as when WhatsApp cannot be reached."""
        self._write(f"faults/{user_id}/unreachable.json", {"until": time.time() + seconds})

    def temporary_ban(self, user_id: str, seconds: float, reason: str = "too many messages") -> None:
        """WhatsApp bans the account for ``seconds`` and closes its connection."""
        self._write(
            f"faults/{user_id}/ban.json", {"seconds": seconds, "reason": reason, "until": time.time() + seconds}
        )

    def rate_limit(self, user_id: str, seconds: float, reason: str = "rate limited by WhatsApp") -> None:
        """Sends fail with RateLimited for ``seconds``."""
        self._write(f"faults/{user_id}/rate_limit.json", {"until": time.time() + seconds, "reason": reason})

    def block_new_contacts(self, user_id: str, seconds: float) -> None:
        """WhatsApp's restriction on messaging new contacts, as it tells the sender."""
        self.rate_limit(user_id, seconds, "WhatsApp is blocking messages to new contacts from this account")

    # -- what arrived --------------------------------------------------------------------------------

    def record_typing(self, user_id: str, jid: str, seconds: float) -> None:
        line = json.dumps({"sender": user_id, "to": jid, "seconds": seconds, "at": time.time()})
        with open(self.root / "typing.jsonl", "a") as log:  # one short append: whole lines
            log.write(line + "\n")

    def typing(self, user_id: str | None = None) -> list[dict[str, Any]]:
        """Every "typing…" shown, in order: sender, to, seconds, at."""
        try:
            lines = (self.root / "typing.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        shown = [json.loads(line) for line in lines]
        return [entry for entry in shown if user_id is None or entry["sender"] == user_id]

    def record_once(self, message: Delivered) -> bool:
        """Keep ``message`` unless its id was delivered before (WhatsApp de-duplicates by id)."""
        path = self.root / "delivered" / f"{message.messageId}.json"
        temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        temp.write_bytes(msgspec.json.encode(message))
        try:
            os.link(temp, path)  # atomic and create-only: readers never see half a file
            return True
        except FileExistsError:
            return False
        finally:
            temp.unlink()

    def delivered(self, user_id: str | None = None) -> list[Delivered]:
        messages = []
        for path in (self.root / "delivered").glob("*.json"):
            message = msgspec.json.decode(path.read_bytes(), type=Delivered)
            if user_id is None or message.sender == user_id:
                messages.append(message)
        return sorted(messages, key=lambda message: message.at)

    # -- files ---------------------------------------------------------------------------------------

    def _read(self, name: str) -> Any:
        try:
            return json.loads((self.root / name).read_bytes())
        except FileNotFoundError:
            return None

    def _write(self, name: str, value: Any) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        temp.write_bytes(json.dumps(value).encode())
        os.replace(temp, path)

    def _take(self, name: str) -> Any:
        """Read and remove a one-shot file; None if absent or already taken by another reader."""
        path = self.root / name
        taken = path.with_name(f".taken.{uuid.uuid4().hex}")
        try:
            os.rename(path, taken)
        except FileNotFoundError:
            return None
        try:
            return json.loads(taken.read_bytes())
        finally:
            taken.unlink(missing_ok=True)


def default_phone(user_id: str) -> str:
    return "5500" + str(int(hashlib.sha256(user_id.encode()).hexdigest(), 16))[:9]


class SimulatedBackend:
    name = "simulated"
    honours_message_ids = True  # unless the world says otherwise (``SimulatedWorld.set_message_ids``)

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.world = SimulatedWorld(root)
        self.honours_message_ids = self.world.message_ids_honoured()

    def new_client(self, user_id: str, auth_path: str, emit: Emit) -> SimulatedClient:
        return SimulatedClient(self.world, user_id, Path(auth_path), emit, self.honours_message_ids)


class _Credentials(msgspec.Struct):
    jid: str
    device: str


class SimulatedClient:
    """One account's connection to the simulated world. Credentials live in ``auth_path`` as JSON."""

    def __init__(
        self, world: SimulatedWorld, user_id: str, auth_path: Path, emit: Emit, honours_message_ids: bool = True
    ) -> None:
        self.world = world
        self.honours_message_ids = honours_message_ids
        self.user_id = user_id
        self.auth_path = auth_path
        self.emit = emit
        self.connection = uuid.uuid4().hex
        self.jid: str | None = None
        self.connected = False
        self.showing_qr = False
        self._task: asyncio.Task[None] | None = None
        self._pair_code: str | None = None
        self._hang = False

    async def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"simulated-{self.user_id}")

    async def stop(self) -> None:
        self.connected = False
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def logout(self) -> None:
        self.world.unlink(self.user_id)
        await self.stop()
        self.auth_path.unlink(missing_ok=True)
        self.emit(LoggedOut(reason="logged out"))

    async def pair_phone(self, phone: str) -> str:
        for _ in range(int(10 / _TICK)):
            if self.showing_qr:
                break
            await asyncio.sleep(_TICK)
        else:
            raise NotConnected("no QR has been shown yet; pairing by code needs one")
        self._pair_code = f"{secrets.token_hex(2).upper()}-{secrets.token_hex(2).upper()}"
        self.emit(PairCode(code=self._pair_code))
        return self._pair_code

    async def lookup(self, numbers: Sequence[str]) -> dict[str, str | None]:
        self._check_sendable()
        return {number: self.world.jid_of(number) for number in numbers}

    async def send_text(self, jid: str, text: str, message_id: str) -> SendReceipt:
        return await self._hang_if_told(self._deliver(jid, text, message_id, None, None))

    async def send_image(self, jid: str, image: bytes, mimetype: str, caption: str, message_id: str) -> SendReceipt:
        receipt = self._deliver(jid, caption, message_id, hashlib.sha256(image).hexdigest(), mimetype)
        return await self._hang_if_told(receipt)

    async def _hang_if_told(self, receipt: SendReceipt) -> SendReceipt:
        if self._hang:
            self._hang = False
            await asyncio.Event().wait()  # never set: the send does not return
        return receipt

    async def typing(self, jid: str, seconds: float) -> None:
        self._check_sendable()
        self.world.record_typing(self.user_id, jid, seconds)
        await asyncio.sleep(seconds)

    async def export_auth(self) -> bytes | None:
        try:
            return self.auth_path.read_bytes()
        except FileNotFoundError:
            return None

    # -- sending ---------------------------------------------------------------------------------------

    def _check_sendable(self) -> None:
        if not self.connected:
            raise NotConnected("not connected")
        limit = self.world._read(f"faults/{self.user_id}/rate_limit.json")
        if limit and limit["until"] > time.time():
            raise RateLimited(limit["until"] - time.time(), limit.get("reason", "rate limited by WhatsApp"))

    def _deliver(
        self, jid: str, text: str, message_id: str, image_sha: str | None, mimetype: str | None
    ) -> SendReceipt:
        self._check_sendable()
        if (failing := self.world._take(f"faults/{self.user_id}/fail_sends.json")) is not None:
            if failing["count"] > 1:
                self.world._write(f"faults/{self.user_id}/fail_sends.json", {**failing, "count": failing["count"] - 1})
            raise WhatsAppError(failing["reason"])
        if not self.world.has_account(jid):
            raise SendRejected(f"{jid} has no WhatsApp account")
        assert self.jid is not None
        if not self.honours_message_ids:
            message_id = "3EB0" + secrets.token_hex(10).upper()  # WhatsApp's own, new for every send
        message = Delivered(
            messageId=message_id,
            sender=self.user_id,
            senderJid=self.jid,
            to=jid,
            text=text,
            at=time.time(),
            imageSha256=image_sha,
            imageMimetype=mimetype,
        )
        self.world.record_once(message)
        if self.world._take(f"faults/{self.user_id}/hang_after_send.json") is not None:
            self._hang = True  # the caller awaits forever (until the host stops this client)
        fault = self.world._take(f"faults/{self.user_id}/drop_after_send.json")
        if fault is not None:
            self._go_down(fault["down_for"], "connection lost before the server acknowledged")
            raise OutcomeUnknown("connection lost after the message left")
        return SendReceipt(message_id=message_id, timestamp=message.at)

    def _go_down(self, down_for: float, reason: str) -> None:
        self.connected = False
        self._down_until = time.monotonic() + down_for
        self.emit(Disconnected(reason=reason))

    # -- the connection ----------------------------------------------------------------------------

    async def _run(self) -> None:
        for fault in ("unreachable", "ban"):
            blocked = self.world._read(f"faults/{self.user_id}/{fault}.json")
            if blocked and blocked["until"] > time.time():
                self.emit(Disconnected(reason=f"WhatsApp cannot be reached ({fault}, simulated)", final=True))
                return
        credentials = self._credentials()
        if credentials is None:
            credentials = await self._pair()
            if credentials is None:
                return
        elif not self._linked_as(credentials):
            self.auth_path.unlink(missing_ok=True)
            self.emit(LoggedOut(reason="the device was removed on the phone"))
            return
        self.jid = credentials.jid
        self._down_until = 0.0
        self._hold()
        await self._stay_connected(credentials)

    async def _pair(self) -> _Credentials | None:
        timeouts = self.world.qr_timeouts()
        nonce = secrets.token_hex(8)
        for index, timeout in enumerate(timeouts, start=1):
            self.emit(
                QrCode(code=f"2@sim-{self.user_id}-{nonce}-{index}", timeout=timeout, index=index, total=len(timeouts))
            )
            self.showing_qr = True
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                scan = self.world._take(f"scans/{self.user_id}.json")
                if scan is not None and (scan.get("code") in (None, self._pair_code)):
                    self.showing_qr = False
                    return self._paired(scan["phone"])
                await asyncio.sleep(_TICK)
        self.showing_qr = False
        self.emit(QrExpired())
        return None

    def _paired(self, phone: str) -> _Credentials:
        credentials = _Credentials(jid=f"{phone}@s.whatsapp.net", device=uuid.uuid4().hex)
        self.auth_path.parent.mkdir(parents=True, exist_ok=True)
        self.auth_path.write_bytes(msgspec.json.encode(credentials))
        self.world._write(f"linked/{self.user_id}.json", msgspec.to_builtins(credentials))
        self.emit(AuthChanged())
        return credentials

    async def _stay_connected(self, credentials: _Credentials) -> None:
        self.connected = True
        self.emit(Connected(jid=credentials.jid))
        while True:
            await asyncio.sleep(_TICK)
            if not self._linked_as(credentials):
                self.connected = False
                self.auth_path.unlink(missing_ok=True)
                self.emit(LoggedOut(reason="the device was removed on the phone"))
                return
            if self.world._read(f"holders/{self.user_id}.json") != {"connection": self.connection}:
                self.connected = False
                self.emit(StreamReplaced())
                return
            ban = self.world._read(f"faults/{self.user_id}/ban.json")
            if ban and ban["until"] > time.time():
                self.connected = False
                self.emit(TemporaryBan(reason=ban["reason"], expires_in=ban["seconds"]))
                return
            if (drop := self.world._take(f"faults/{self.user_id}/drop.json")) is not None:
                self._go_down(drop["down_for"], "connection lost")
            if not self.connected and time.monotonic() >= self._down_until:
                unreachable = self.world._read(f"faults/{self.user_id}/unreachable.json")
                if unreachable and unreachable["until"] > time.time():
                    self.emit(Disconnected(reason="WhatsApp cannot be reached (unreachable, simulated)", final=True))
                    return
                self.connected = True
                self.emit(Connected(jid=credentials.jid))

    def _credentials(self) -> _Credentials | None:
        try:
            return msgspec.json.decode(self.auth_path.read_bytes(), type=_Credentials)
        except (FileNotFoundError, msgspec.DecodeError):
            return None

    def _linked_as(self, credentials: _Credentials) -> bool:
        return self.world._read(f"linked/{self.user_id}.json") == msgspec.to_builtins(credentials)

    def _hold(self) -> None:
        self.world._write(f"holders/{self.user_id}.json", {"connection": self.connection})


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m session_host.whatsapp.simulated DIR scan USER [PHONE]`` and friends, for demos."""
    args = list(sys.argv[1:] if argv is None else argv)
    usage = (
        "usage: simulated DIR (scan USER [PHONE] | unlink USER | delivered [USER] | number NUMBER JID|none"
        " | message-ids on|off)"
    )
    if len(args) < 2:
        print(usage, file=sys.stderr)
        return 2
    world, verb, rest = SimulatedWorld(args[0]), args[1], args[2:]
    if verb == "scan" and rest:
        world.scan(rest[0], rest[1] if len(rest) > 1 else None)
        print(f"scanned: {rest[0]} pairs at its next QR code (now, if one is showing)", file=sys.stderr)
    elif verb == "unlink" and rest:
        world.unlink(rest[0])
        print(f"unlinked: {rest[0]}'s device is removed, as from the phone", file=sys.stderr)
    elif verb == "delivered":
        for message in world.delivered(rest[0] if rest else None):
            print(msgspec.json.encode(message).decode())
    elif verb == "number" and len(rest) == 2:
        world.set_numbers({rest[0]: None if rest[1] == "none" else rest[1]})
    elif verb == "message-ids" and rest and rest[0] in ("on", "off"):
        world.set_message_ids(rest[0] == "on")
        print("hosts started from now on read this", file=sys.stderr)
    else:
        print(usage, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

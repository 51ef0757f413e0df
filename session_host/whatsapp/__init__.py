"""The WhatsApp boundary: what the host needs from WhatsApp, and the two sides that provide it.

``neonize`` (real WhatsApp, the default) and ``simulated`` (a world on disk that tests and demos
drive). Both implement ``WhatsAppClient``. A client reports what happens to it as ``Event`` values
through the ``emit`` callback it is given; emit is thread-safe, because neonize calls back from its
own threads. Events are plain msgspec Structs so that they can cross a process boundary unchanged
(one worker process per session, see the neonize issue).

Errors a send can raise::

    WhatsAppError
    ├── NotConnected       the session is not connected now; retry once it is
    ├── OutcomeUnknown     the connection broke after the message left; it may have arrived.
    │                      Retrying with the same message id cannot duplicate it.
    ├── RateLimited        WhatsApp asked to slow down; ``retry_after`` seconds
    └── SendRejected       permanent for this message (``reason``)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

# -- events ----------------------------------------------------------------------------------------


class QrCode(msgspec.Struct, tag="qr"):
    """A QR payload to show; valid for ``timeout`` seconds, the ``index``-th of ``total``."""

    code: str
    timeout: float
    index: int = 1
    total: int = 6


class QrExpired(msgspec.Struct, tag="qr_expired"):
    pass


class PairCode(msgspec.Struct, tag="pair_code"):
    code: str


class Connected(msgspec.Struct, tag="connected"):
    jid: str


class Disconnected(msgspec.Struct, tag="disconnected"):
    """The connection was lost; the client tries again by itself unless ``final``."""

    reason: str
    final: bool = False


class LoggedOut(msgspec.Struct, tag="logged_out"):
    """The pairing is gone (logout, or the linked device removed on the phone)."""

    reason: str


class StreamReplaced(msgspec.Struct, tag="stream_replaced"):
    """Another connection took this session over; do not reconnect at once."""


class TemporaryBan(msgspec.Struct, tag="temporary_ban"):
    reason: str
    expires_in: float


class AuthChanged(msgspec.Struct, tag="auth_changed"):
    """The credentials changed (paired, keys rotated): save a snapshot."""


Event = (
    QrCode | QrExpired | PairCode | Connected | Disconnected | LoggedOut | StreamReplaced | TemporaryBan | AuthChanged
)
Emit = Callable[[Event], None]


# -- errors ----------------------------------------------------------------------------------------


class WhatsAppError(Exception):
    pass


class NotConnected(WhatsAppError):
    pass


class OutcomeUnknown(WhatsAppError):
    pass


class RateLimited(WhatsAppError):
    def __init__(self, retry_after: float, reason: str = "rate limited") -> None:
        super().__init__(f"{reason}; retry after {retry_after:.0f} s")
        self.retry_after = retry_after


class SendRejected(WhatsAppError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- the client --------------------------------------------------------------------------------------


class SendReceipt(msgspec.Struct, frozen=True):
    message_id: str
    timestamp: float


class WhatsAppClient(Protocol):
    """One account's connection. Methods are coroutines; none blocks the event loop."""

    async def start(self) -> None:
        """Begin connecting: from stored credentials if there are any, else by showing QR codes.
        Returns once connecting has started; progress arrives as events."""

    async def stop(self) -> None:
        """Close the connection and keep the credentials."""

    async def logout(self) -> None:
        """Unlink this device from the account and forget the credentials."""

    async def pair_phone(self, phone: str) -> str:
        """Ask for a pairing code to type on the phone, as an alternative to the QR code."""
        ...

    async def lookup(self, numbers: Sequence[str]) -> dict[str, str | None]:
        """Map each number (international digits) to the JID WhatsApp has for it, or None."""
        ...

    async def send_text(self, jid: str, text: str, message_id: str) -> SendReceipt: ...

    async def send_image(self, jid: str, image: bytes, mimetype: str, caption: str, message_id: str) -> SendReceipt: ...

    async def typing(self, jid: str, seconds: float) -> None:
        """Show 'typing…' to ``jid`` for about ``seconds``, then stop."""

    async def export_auth(self) -> bytes | None:
        """A consistent snapshot of the credentials, or None before pairing."""
        ...


class WhatsAppBackend(Protocol):
    """Makes clients. ``auth_path`` is a local file the client owns: the host puts the stored
    credentials there before ``new_client`` and saves ``export_auth()`` when they change."""

    name: str
    # True when WhatsApp receives the message id the host chose, so that resending after
    # OutcomeUnknown cannot make a second message. When False the host reports such a recipient
    # as unknown instead of resending.
    honours_message_ids: bool

    def new_client(self, user_id: str, auth_path: str, emit: Emit) -> WhatsAppClient: ...


def open_backend(backend: str, simulator_dir: str | None, *, isolated: bool = True) -> WhatsAppBackend:
    """The backend named ``backend``. ``isolated`` (the default) runs each session's client in a worker
    process of its own (``session_host.whatsapp.worker``), so that a Go panic, a crash or a hang ends
    one session only; ``isolated=False`` runs the clients in this process (tests, and the workers)."""
    if isolated:
        from session_host.whatsapp.worker import WorkerBackend

        return WorkerBackend(backend, simulator_dir)
    if backend == "simulated":
        from session_host.whatsapp.simulated import SimulatedBackend

        assert simulator_dir, "settings guarantee a simulator directory"
        return SimulatedBackend(simulator_dir)
    from session_host.whatsapp.neonize_client import NeonizeBackend

    return NeonizeBackend()

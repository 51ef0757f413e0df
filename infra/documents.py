"""The documents that pass between the API, the session host and other systems through the store.

Every document is a msgspec Struct, encoded as JSON. Field names follow the original contract
(camelCase, Portuguese where the original had Portuguese). Inputs forbid unknown fields so that a
typo is an error, not a silently ignored option; outputs omit nothing, so readers see every field.

Who writes what (keys in ``infra.layout``):

- ``Job``: written to the inbox by the API, or dropped there by any other system; the host
  validates it with the same Struct and accepts it.
- ``JobState``: written by the host as the job progresses; read by the API.
- ``SessionCommand``: written by the API; the host carries it out and deletes it.
- ``SessionStatus``: written by the host; read by the API.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import zoneinfo
from typing import Annotated, Any, Literal, TypeVar

import msgspec

# Patterns end with END, not "$": Python's "$" also matches before a final newline ("u1\n"),
# and "\Z" is not understood by the JSON Schema readers of the OpenAPI document.
END = r"(?![\s\S])"
# A short identifier: letters, digits and . _ @ -, no "..", so it is safe in keys, paths and URLs.
USER_ID_PATTERN = r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._@-]{0,63}" + END
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}" + END
UserId = Annotated[str, msgspec.Meta(pattern=USER_ID_PATTERN, description="A short account identifier.")]
JobId = Annotated[str, msgspec.Meta(pattern=JOB_ID_PATTERN)]
MAX_MESSAGE_CHARS = 4096
T = TypeVar("T")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Input(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Base of every input document: an unknown field is an error that names it; read-only once read."""


class AntiBanSettings(Input, frozen=True):
    """The original's pacing, in milliseconds: a random pause in [randomDelayMin, randomDelayMax]
    between two messages, and batchDelayMs instead of it after every batchSize messages."""

    randomDelayMin: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)] = 6000
    randomDelayMax: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)] = 9000
    batchSize: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 10
    batchDelayMs: Annotated[int, msgspec.Meta(ge=0, le=86_400_000)] = 60000
    # zapgate's: show "typing…" before each message, for a time that grows with its length,
    # taken out of the pause before it (never longer than randomDelayMin).
    typing: bool = True

    def __post_init__(self) -> None:
        if self.randomDelayMin > self.randomDelayMax:
            raise ValueError("randomDelayMin must not be greater than randomDelayMax")


_CLOCK = r"^([01][0-9]|2[0-3]):[0-5][0-9]" + END
Clock = Annotated[str, msgspec.Meta(pattern=_CLOCK, description="HH:MM, 24-hour clock")]
# What a pattern asks for, in words, for the errors that name a field (api/errors.py).
PATTERN_WORDS = {
    _CLOCK: "must be a time of day as HH:MM, 24-hour clock (08:00, 21:30)",
    JOB_ID_PATTERN: "is not a job id",
}
WARMUP_CAPS = (20, 40, 80, 160, 320)  # messages on the 1st, 2nd, … day after pairing, with warm-up on


class QuietHours(Input, frozen=True):
    """No message leaves between ``start`` and ``end`` (account's time zone; may span midnight)."""

    start: Clock
    end: Clock


class AccountSettings(Input, frozen=True):
    """An account's own limits, across all its jobs (``PUT /sessions/{userId}/settings``).

    ``dailyCap``: messages a day at most (None: no cap). ``quietHours``: hours without messages.
    ``timezone``: the IANA zone those days and hours are in. ``warmup``: a newly paired account
    sends at most ``WARMUP_CAPS[d]`` messages on its d-th day, then ``dailyCap``.
    """

    dailyCap: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = 1000
    quietHours: QuietHours | None = None
    timezone: Annotated[str, msgspec.Meta(max_length=64)] = "America/Sao_Paulo"
    warmup: bool = False

    def __post_init__(self) -> None:
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "America", a folder of zones
            raise ValueError(f"timezone {self.timezone!r} is not an IANA time zone such as America/Sao_Paulo") from None
        if self.quietHours is not None and self.quietHours.start == self.quietHours.end:
            raise ValueError("quietHours start and end must differ")


class DailyCount(msgspec.Struct):
    """How many messages an account sent on ``day`` (in its time zone)."""

    day: str
    sent: int = 0


# -- jobs ------------------------------------------------------------------------------------------


class Recipient(Input, frozen=True):
    """``name`` fills ``[nome]``, ``number`` fills ``[numero]``; ``fields`` fill any other placeholder
    (``[empresa]``, ``[cupom]``)."""

    number: str
    name: str = ""
    fields: dict[str, str] = {}

    def values(self) -> dict[str, str]:
        return {**self.fields, "numero": self.number, **({"nome": self.name} if self.name else {})}


class Job(Input, frozen=True):
    """A send order: one message template to one or more recipients of one account.

    The API writes it; another system may drop one into the inbox too, with ``jobId`` left out
    (the host then takes the object's name). Numbers are validated again when the host accepts it.
    """

    userId: UserId
    recipients: Annotated[list[Recipient], msgspec.Meta(min_length=1)]
    message: Annotated[str, msgspec.Meta(max_length=MAX_MESSAGE_CHARS)]
    kind: Literal["bulk", "single"] = "bulk"
    jobId: JobId | None = None
    imageUrl: str | None = None
    webhookUrl: str | None = None
    antiBanSettings: AntiBanSettings = AntiBanSettings()
    submittedAt: dt.datetime | None = None

    def message_id(self, index: int) -> str:
        """The WhatsApp message id of recipient ``index``, fixed before the first attempt so that
        a retry can never make a second message."""
        digest = hashlib.sha256(f"{self.jobId}:{index}".encode()).hexdigest()
        return "3EB0" + digest[:20].upper()


RecipientStatus = Literal["pending", "sent", "not_on_whatsapp", "failed", "duplicate", "skipped", "unknown"]
JobStatus = Literal["queued", "running", "waiting", "paused", "done", "failed", "cancelled", "rejected"]
FINAL_JOB_STATUSES = frozenset({"done", "failed", "cancelled", "rejected"})


class RecipientResult(msgspec.Struct):
    index: int
    number: str
    name: str
    messageId: str
    status: RecipientStatus = "pending"
    jid: str | None = None
    attempts: int = 0
    sentAt: dt.datetime | None = None
    error: str | None = None
    # Set, and written to the store, just before a message leaves through a backend that cannot pass
    # our message id; cleared with its outcome. A host that finds it set on resuming a job knows the
    # message may have left and reports the recipient ``unknown`` instead of sending it again.
    sendingSince: dt.datetime | None = None


class Totals(msgspec.Struct):
    total: int = 0
    sent: int = 0
    failed: int = 0
    not_on_whatsapp: int = 0
    duplicate: int = 0
    skipped: int = 0
    unknown: int = 0
    pending: int = 0


RESULTS_PER_CHUNK = 500


class WebhookStatus(msgspec.Struct):
    """How the completion webhook went: delivered, still being tried, or given up."""

    url: str
    attempts: int = 0
    deliveredAt: dt.datetime | None = None
    lastError: str | None = None
    gaveUp: bool = False

    @property
    def settled(self) -> bool:
        return self.deliveredAt is not None or self.gaveUp


class JobState(msgspec.Struct):
    """A job's progress, as the host last wrote it.

    The per-recipient results are stored apart, ``RESULTS_PER_CHUNK`` to an object
    (``infra.layout.job_results``), so that a checkpoint rewrites one small chunk and this summary,
    not the whole list. ``results`` holds them in memory and in the API's answer.
    """

    jobId: str
    userId: str
    kind: str
    status: JobStatus
    totals: Totals
    results: list[RecipientResult] = []
    submittedAt: dt.datetime | None = None
    startedAt: dt.datetime | None = None
    finishedAt: dt.datetime | None = None
    updatedAt: dt.datetime | None = None
    estimatedEnd: dt.datetime | None = None
    detail: str | None = None
    webhook: WebhookStatus | None = None
    resultsOffset: int = 0
    # The WhatsApp number (JID) the job's messages leave from; a job paused when the account comes
    # back paired with another number, until resumed (session_host.sender).
    senderJid: str | None = None

    def count(self) -> None:
        """Recompute the totals from the per-recipient results."""
        totals = Totals(total=len(self.results))
        for result in self.results:
            setattr(totals, result.status, getattr(totals, result.status) + 1)
        self.totals = totals


class Rejection(msgspec.Struct):
    """Why a document dropped into the inbox was moved aside."""

    key: str
    reason: str
    rejectedAt: dt.datetime


# -- sessions --------------------------------------------------------------------------------------


class Connect(msgspec.Struct, tag="connect"):
    issuedAt: dt.datetime


class ControlJob(msgspec.Struct, tag="control_job"):
    issuedAt: dt.datetime
    jobId: str
    action: Literal["pause", "resume", "cancel"]


class Disconnect(msgspec.Struct, tag="disconnect"):
    issuedAt: dt.datetime


class Logout(msgspec.Struct, tag="logout"):
    issuedAt: dt.datetime


class ReloadSettings(msgspec.Struct, tag="reload_settings"):
    issuedAt: dt.datetime


class PairPhone(msgspec.Struct, tag="pair_phone"):
    issuedAt: dt.datetime
    phone: str


SessionCommand = Connect | Disconnect | Logout | PairPhone | ControlJob | ReloadSettings

SessionState = Literal[
    "starting",  # the host is opening the connection
    "qr",  # waiting for the QR code (or phone code) to be used
    "connected",
    "reconnecting",  # paired, connection lost, the host is trying again
    "disconnected",  # closed on request; the pairing is kept
    "logged_out",  # the pairing is gone (logout, or the device removed on the phone)
    "qr_expired",  # nobody scanned the codes in time
    "paused",  # connected but sending is paused (rate limit, temporary ban)
    "failed",  # the host could not start the session; ``detail`` says why
]


class SessionStatus(msgspec.Struct):
    userId: str
    state: SessionState
    paired: bool = False
    detail: str | None = None
    qr: str | None = None
    qrExpiresAt: dt.datetime | None = None
    pairCode: str | None = None
    jid: str | None = None
    pairedAt: dt.datetime | None = None
    backend: str | None = None
    host: str | None = None
    updatedAt: dt.datetime | None = None
    hostAlive: bool | None = None  # filled in by the API from the host's HostBeat

    @property
    def connected(self) -> bool:
        return self.state in ("connected", "paused") and self.hostAlive is not False


# -- hosts -----------------------------------------------------------------------------------------


# The state a session that was showing QR codes is left in when its host stops or dies.
UNPAIRED_AT_STOP = "the session host stopped before the QR code was scanned; open /connect again for new codes"


class HostBeat(msgspec.Struct):
    """A session host's sign of life, rewritten every ``ZAPGATE_HOST_HEARTBEAT`` seconds; a host not
    seen for ``staleAfter`` seconds (four beats) is taken for dead, and its accounts for free."""

    hostId: str
    startedAt: dt.datetime
    lastSeen: dt.datetime
    staleAfter: float = 20.0
    sessions: int = 0
    stoppedAt: dt.datetime | None = None

    def alive(self, now: dt.datetime) -> bool:
        return self.stoppedAt is None and (now - self.lastSeen).total_seconds() < self.staleAfter


# -- encoding --------------------------------------------------------------------------------------

encoder = msgspec.json.Encoder()


def encode(document: Any) -> bytes:
    return encoder.encode(document)


_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def decode(data: bytes, type_: type[T]) -> T:
    """Decode and validate ``data`` as ``type_``; raises msgspec.ValidationError or DecodeError."""
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    return decoder.decode(data)

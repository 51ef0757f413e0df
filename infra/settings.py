"""Settings for both processes, read once from ``ZAPGATE_*`` environment variables.

Each section is a frozen Struct; a field ``poll_interval`` of the section ``host`` is read from
``ZAPGATE_HOST_POLL_INTERVAL``; a top-level field ``store`` from ``ZAPGATE_STORE``. Strings are
converted leniently (``"1.5"`` to a float, ``"true"`` to a bool). A bad value stops the process at
start-up with the name of the variable, not at the first request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import socket
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

PREFIX = "ZAPGATE_"


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the environment variable."""


class Secret(str):
    """A string that hides itself when printed or logged; use ``reveal()`` where a client is built."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def reveal(self) -> str:
        return str.__str__(self)


class S3Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How to reach an S3-compatible server; used when ``ZAPGATE_STORE`` is an ``s3://`` URL.

    Unset credentials fall back to boto3's own chain (``AWS_*`` variables, instance roles).
    """

    endpoint: str | None = None
    region: str = "us-east-1"
    access_key: str | None = None
    secret_key: Secret | None = None
    addressing_style: Literal["path", "virtual", "auto"] = "path"
    timeout: float = 10.0


class WhatsAppSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Which WhatsApp the host talks to.

    ``neonize`` is real WhatsApp and the default. ``simulated`` is the test and demo world; it only
    switches on when chosen by name *and* given a directory, and the host then warns loudly.
    """

    backend: Literal["neonize", "simulated"] = "neonize"
    simulator_dir: str | None = None


class HostSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str = ""
    poll_interval: float = msgspec.field(default=1.0)
    heartbeat: Annotated[float, msgspec.Meta(gt=0, le=300)] = 5.0
    work_dir: str = ""
    auth_save_interval: float = 300.0
    image_max_bytes: int = 16 * 1024 * 1024
    image_timeout: float = 20.0
    qr_timeout: float = 180.0
    # Encrypts the stored WhatsApp credentials: 32 random bytes in base64 (see session_host/auth.py).
    auth_key: Secret | None = None
    auth_key_previous: Secret | None = None  # the key being rotated out: still read, never written


class ApiSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8000
    max_contacts: int = 100_000
    # The admin key: every account, /sessions, /keys. Without it the API is open, and then only on
    # a loopback address (see api/auth.py); per-user keys are made with it through POST /keys.
    admin_key: Secret | None = None  # at least 16 characters (checked in api/auth.py)
    # Signs the short-lived page links (POST /sessions/{userId}/link); derived from the admin key
    # when unset, so that every copy of the API with the same admin key accepts the same links.
    link_secret: Secret | None = None
    link_ttl: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 600.0  # seconds a page link is valid
    rate_limit: Annotated[int, msgspec.Meta(ge=0)] = 600  # requests a minute per key, per API process; 0: none
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 32 * 1024 * 1024
    # Serve without keys on a non-loopback address (behind a gateway that authenticates): never by default.
    insecure_open: bool = False


class FetchSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Outbound fetches (images, webhooks; infra/fetch.py). ``allow``: comma-separated CIDRs or
    host names that may be fetched although private, loopback or link-local (ZAPGATE_FETCH_ALLOW)."""

    allow: str = ""

    def __post_init__(self) -> None:
        from infra.fetch import parse_allowlist  # infra.fetch does not import the settings

        parse_allowlist(self.allow)  # a bad entry stops the process at start, naming it


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    store: str = "./data/store"
    default_country: str = "BR"
    webhook_secret: Secret | None = None
    s3: S3Settings = S3Settings()
    whatsapp: WhatsAppSettings = WhatsAppSettings()
    host: HostSettings = HostSettings()
    api: ApiSettings = ApiSettings()
    fetch: FetchSettings = FetchSettings()

    @property
    def store_is_s3(self) -> bool:
        return self.store.startswith("s3://")


_SECTIONS = {
    "s3": S3Settings,
    "whatsapp": WhatsAppSettings,
    "host": HostSettings,
    "api": ApiSettings,
    "fetch": FetchSettings,
}


def _dec_hook(type_: type, value: Any) -> Any:
    if type_ is Secret:
        return Secret(value)
    raise NotImplementedError


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from ``environ`` (the process environment by default)."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    for name in ("store", "default_country", "webhook_secret"):
        if (value := env.get(f"{PREFIX}{name.upper()}")) is not None:
            raw[name] = value
    for section, struct in _SECTIONS.items():
        values = {}
        for field in struct.__struct_fields__:
            if (value := env.get(f"{PREFIX}{section}_{field}".upper())) is not None:
                values[field] = value
        if values:
            raw[section] = values
    try:
        settings = msgspec.convert(raw, Settings, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise SettingsError(_name_variable(str(exc))) from None
    return _complete(settings)


def _name_variable(message: str) -> str:
    """Turn msgspec's ``... - at `$.host.poll_interval``` into the variable's name."""
    reason, _, path = message.partition(" - at `$.")
    variable = PREFIX + path.rstrip("`").replace(".", "_").upper() if path else "a ZAPGATE_* variable"
    return f"{variable}: {reason}"


def _complete(settings: Settings) -> Settings:
    """Fill the defaults that depend on the machine and check what depends on several values."""
    host = settings.host
    if not host.id:
        host = msgspec.structs.replace(host, id=f"{socket.gethostname()}-{os.getpid()}")
    if not host.work_dir:  # one folder per store, so that two stores never share credentials files
        store_key = hashlib.sha256(
            os.path.abspath(settings.store).encode() if not settings.store_is_s3 else settings.store.encode()
        ).hexdigest()[:12]
        host = msgspec.structs.replace(host, work_dir=os.path.join(_local_state_dir(), "work", store_key))
    if host.poll_interval <= 0:
        raise SettingsError("ZAPGATE_HOST_POLL_INTERVAL: must be greater than 0")
    for name in ("auth_key", "auth_key_previous"):
        if (key := getattr(host, name)) is not None:
            decode_key(key, f"{PREFIX}HOST_{name.upper()}")
    wa = settings.whatsapp
    if wa.backend == "simulated" and not wa.simulator_dir:
        raise SettingsError(
            "ZAPGATE_WHATSAPP_SIMULATOR_DIR: required when ZAPGATE_WHATSAPP_BACKEND=simulated "
            "(the simulator never switches on by itself)"
        )
    if settings.store_is_s3 and not settings.store[len("s3://") :].split("/")[0]:
        raise SettingsError("ZAPGATE_STORE: an s3:// URL needs a bucket name, as in s3://zapgate")
    return msgspec.structs.replace(settings, host=host)


def decode_key(key: Secret, variable: str) -> bytes:
    """The 32 bytes of an encryption key given in base64 (standard or URL-safe, padding optional)."""
    text = key.reveal().strip().replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise SettingsError(f"{variable}: must be 32 random bytes in base64, as `openssl rand -base64 32` prints")
    return raw


def _local_state_dir() -> str:
    return os.path.join(os.environ.get("XDG_STATE_HOME", os.path.expanduser("~/.local/state")), "zapgate")

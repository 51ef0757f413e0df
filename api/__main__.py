"""``python -m api``: serve the API with granian on ZAPGATE_API_HOST:ZAPGATE_API_PORT."""

from __future__ import annotations

import sys

from granian.constants import Interfaces
from granian.server import Server

from api.auth import check_startup
from infra.logs import setup_logging
from infra.settings import SettingsError, load_settings


def main() -> int:
    setup_logging()
    try:
        settings = load_settings()
        check_startup(settings.api)  # says why before granian starts: no admin key off loopback
    except SettingsError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 2
    host = settings.api.host
    address = "127.0.0.1" if host.strip().lower().rstrip(".") == "localhost" else host  # granian takes addresses
    app = "api.app:create_app"
    Server(app, address=address, port=settings.api.port, interface=Interfaces.ASGI, factory=True).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m session_host``: run the session host until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from infra.logs import setup_logging
from infra.settings import SettingsError, load_settings
from infra.store import StoreUnavailable, open_store
from session_host.host import Host
from session_host.whatsapp import open_backend

logger = logging.getLogger("session_host")


def main() -> int:
    setup_logging()
    try:
        settings = load_settings()
        store = open_store(settings)
        store.check()
    except (SettingsError, StoreUnavailable) as exc:
        logger.error("cannot start: %s", exc)
        return 2
    if settings.whatsapp.backend == "simulated":
        logger.warning(
            "*** SIMULATED WhatsApp (ZAPGATE_WHATSAPP_BACKEND=simulated, dir %s): no real message leaves this host ***",
            settings.whatsapp.simulator_dir,
        )
    backend = open_backend(settings.whatsapp.backend, settings.whatsapp.simulator_dir)
    setup_logging()  # neonize reconfigures the root logger when it is imported
    asyncio.run(_serve(Host(settings, store, backend)))
    return 0


async def _serve(host: Host) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, host.stop)
    await host.run()


if __name__ == "__main__":
    sys.exit(main())

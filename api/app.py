"""The Litestar application. ``create_app()`` is what granian serves (``--factory``)."""

from __future__ import annotations

import logging

from litestar import Litestar, get
from litestar.di import NamedDependency, Provide
from litestar.openapi import OpenAPIConfig

from api.errors import EXCEPTION_HANDLERS
from api.jobs import JobController
from api.messages import MessageController
from api.pages import PageController
from api.sessions import SessionController
from infra.logs import setup_logging
from infra.settings import Settings, load_settings
from infra.store import ObjectStore, open_store

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 * 1024 * 1024


@get("/healthz", sync_to_thread=True)
def health(store: NamedDependency[ObjectStore]) -> dict[str, str]:
    """Ready when the store answers."""
    store.check()
    return {"status": "ok"}


def create_app(settings: Settings | None = None, store: NamedDependency[ObjectStore] | None = None) -> Litestar:
    """Build the app; settings and the store come from the environment unless given."""
    if settings is None:
        setup_logging()
        settings = load_settings()
    if store is None:
        store = open_store(settings)
        store.check()  # fail at start-up, not at the first request
    logger.info("API ready: store=%r", store)
    return Litestar(
        route_handlers=[SessionController, MessageController, JobController, PageController, health],
        dependencies={
            "store": Provide(lambda: store, use_cache=True, sync_to_thread=False),
            "settings": Provide(lambda: settings, use_cache=True, sync_to_thread=False),
        },
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=OpenAPIConfig(title="zapgate", version="0.1.0"),
    )

"""The Litestar application. ``create_app()`` is what granian serves (``--factory``)."""

from __future__ import annotations

import logging

import msgspec
from litestar import Litestar, get
from litestar.di import NamedDependency, Provide
from litestar.openapi import OpenAPIConfig

from api.errors import EXCEPTION_HANDLERS
from api.jobs import JobController
from api.messages import MessageController
from api.pages import PageController
from api.service import list_hosts
from api.sessions import SessionController
from infra.documents import utcnow
from infra.logs import setup_logging
from infra.settings import Settings, load_settings
from infra.store import ObjectStore, open_store

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 * 1024 * 1024


class HostHealth(msgspec.Struct):
    hostId: str
    alive: bool
    lastSeen: str
    sessions: int


class Health(msgspec.Struct):
    status: str
    hosts: list[HostHealth]


@get("/healthz", sync_to_thread=True)
def health(store: NamedDependency[ObjectStore]) -> Health:
    """The API is ready when the store answers (503 otherwise); ``hosts`` says which session hosts
    are alive, for monitoring. A dead host does not make the API unhealthy."""
    store.check()
    now = utcnow()
    hosts = [
        HostHealth(
            hostId=beat.hostId, alive=beat.alive(now), lastSeen=beat.lastSeen.isoformat(), sessions=beat.sessions
        )
        for beat in list_hosts(store)
    ]
    return Health(status="ok", hosts=hosts)


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

"""The Litestar application. ``create_app()`` is what granian serves (``--factory``)."""

from __future__ import annotations

import datetime as dt
import logging

import msgspec
from litestar import Litestar, Request, get
from litestar.di import NamedDependency, Provide
from litestar.openapi import OpenAPIConfig

from api.auth import Auth, Principal, check_startup, principal_of
from api.errors import EXCEPTION_HANDLERS
from api.jobs import JobController
from api.keys import KeyController
from api.messages import MessageController
from api.openapi import describe, documented
from api.pages import PageController
from api.service import list_hosts
from api.sessions import SessionController
from infra.documents import utcnow
from infra.logs import setup_logging
from infra.settings import Settings, load_settings
from infra.store import ObjectStore, open_store

logger = logging.getLogger(__name__)


class HostHealth(msgspec.Struct):
    hostId: str
    alive: bool
    lastSeen: str
    sessions: int


class Health(msgspec.Struct):
    status: str
    hosts: list[HostHealth]


FORGET_HOSTS_AFTER = dt.timedelta(days=1)


@get("/healthz", sync_to_thread=True, opt=documented(public=True))
def health(store: NamedDependency[ObjectStore], principal: NamedDependency[Principal]) -> Health:
    """The API is ready when the store answers (503 otherwise). It needs no key; with the admin key
    (or when the API is open) ``hosts`` says which session hosts are alive, for monitoring. A dead
    host does not make the API unhealthy."""
    store.check()
    if not principal.is_admin:
        return Health(status="ok", hosts=[])
    now = utcnow()
    hosts = [
        HostHealth(
            hostId=beat.hostId, alive=beat.alive(now), lastSeen=beat.lastSeen.isoformat(), sessions=beat.sessions
        )
        for beat in list_hosts(store)
        if now - beat.lastSeen < FORGET_HOSTS_AFTER  # a host id of each past run (hostname-pid) stays in the store
    ]
    return Health(status="ok", hosts=hosts)


def create_app(settings: Settings | None = None, store: NamedDependency[ObjectStore] | None = None) -> Litestar:
    """Build the app; settings and the store come from the environment unless given.

    Refuses (SettingsError) to serve every account without a key on a non-loopback address."""
    if settings is None:
        setup_logging()
        settings = load_settings()
    keys = check_startup(settings.api)
    if store is None:
        store = open_store(settings)
        store.check()  # fail at start-up, not at the first request
    auth = Auth(settings.api, store)
    (logger.warning if auth.open else logger.info)(keys)
    logger.info("API ready: store=%r", store)
    app = Litestar(
        route_handlers=[SessionController, MessageController, JobController, PageController, KeyController, health],
        dependencies={
            "store": Provide(lambda: store, use_cache=True, sync_to_thread=False),
            "settings": Provide(lambda: settings, use_cache=True, sync_to_thread=False),
            "auth": Provide(lambda: auth, use_cache=True, sync_to_thread=False),
            "principal": Provide(_principal, sync_to_thread=False),
        },
        guards=[auth.guard],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        request_max_body_size=settings.api.max_body_bytes,
        openapi_config=OpenAPIConfig(title="zapgate", version="0.1.0"),
    )
    describe(app)
    return app


def _principal(request: Request) -> Principal:  # type: ignore[type-arg]
    return principal_of(request)

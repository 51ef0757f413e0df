"""A session host run in the test's own event loop, on a real store, with the simulated WhatsApp.

The API's service functions write the commands and jobs, exactly as the API does.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from api.service import read_job_state, read_status, send_command, submit_job
from infra import fetch
from infra.documents import (
    FINAL_JOB_STATUSES,
    AntiBanSettings,
    Connect,
    Job,
    JobState,
    Recipient,
    SessionStatus,
    utcnow,
)
from infra.jobs import prepare_job
from infra.settings import FetchSettings, HostSettings, Secret, Settings
from infra.store import ObjectStore
from session_host.host import Host
from session_host.whatsapp.simulated import SimulatedBackend

FAST = AntiBanSettings(randomDelayMin=200, randomDelayMax=300, batchSize=10, batchDelayMs=1000)


# The harness's image and webhook servers listen on loopback, which infra.fetch refuses by default.
LOCAL_SERVERS = "127.0.0.1/32, ::1/128"


class HostHarness:
    def __init__(
        self,
        store: ObjectStore,
        tmp: Path,
        webhook_secret: str | None = None,
        fetch_allow: str = LOCAL_SERVERS,
        **host_settings: Any,
    ) -> None:
        self.store = store
        self.fetch_allow = fetch_allow
        self.settings = Settings(
            host=HostSettings(
                **{
                    "id": "test-host",
                    "poll_interval": 0.05,
                    "heartbeat": 0.5,
                    "work_dir": str(tmp / "work"),
                    **host_settings,
                }
            ),
            webhook_secret=Secret(webhook_secret) if webhook_secret else None,
            fetch=FetchSettings(allow=fetch_allow),
        )
        self.backend = SimulatedBackend(tmp / "whatsapp")
        self.world = self.backend.world
        self.host = Host(self.settings, store, self.backend)
        self._jobs = 0

    async def __aenter__(self) -> HostHarness:
        # The host's image and webhook fetches use the process's allowlist (infra.fetch.configure),
        # as a real host process reads it from ZAPGATE_FETCH_ALLOW.
        fetch.configure(self.fetch_allow)
        self.task = asyncio.create_task(self.host.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.host.stop()
        try:
            await asyncio.wait_for(self.task, 20)
        finally:
            fetch.configure(None)

    async def status(self, user_id: str) -> SessionStatus | None:
        return await asyncio.to_thread(read_status, self.store, user_id)

    async def until_state(self, user_id: str, *states: str, timeout: float = 10) -> SessionStatus:
        async def reached() -> SessionStatus | None:
            status = await self.status(user_id)
            return status if status is not None and status.state in states else None

        return await until(reached, timeout, f"{user_id} to be {'/'.join(states)}")

    async def connect(self, user_id: str, phone: str) -> None:
        await asyncio.to_thread(send_command, self.store, user_id, Connect(issuedAt=utcnow()))
        await self.until_state(user_id, "qr")
        self.world.scan(user_id, phone=phone)
        await self.until_state(user_id, "connected")

    async def submit(
        self, user_id: str, recipients: list[tuple[str, str]], message: str = "Olá [nome], tudo bem?", **fields: Any
    ) -> str:
        self._jobs += 1
        job = Job(
            userId=user_id,
            recipients=[Recipient(number=number, name=name) for name, number in recipients],
            message=message,
            **{"antiBanSettings": FAST, **fields},
        )
        job = prepare_job(job, job_id=f"job-{self._jobs}-{time.time_ns()}", default_region="BR")
        await asyncio.to_thread(submit_job, self.store, job)
        assert job.jobId is not None
        return job.jobId

    async def job(self, job_id: str) -> JobState:
        return await asyncio.to_thread(read_job_state, self.store, job_id)

    async def final(self, job_id: str, timeout: float = 20) -> JobState:
        async def done() -> JobState | None:
            state = await self.job(job_id)
            return state if state.status in FINAL_JOB_STATUSES else None

        return await until(done, timeout, f"job {job_id} to finish")


async def until(probe: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if value := await probe():
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


async def holds(value: bool) -> bool:
    """``value`` as a probe for ``until``, for conditions that need no await."""
    return value

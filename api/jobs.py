"""``GET /jobs/{jobId}``: a job's status, totals and per-recipient results."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from api.errors import InvalidField
from api.service import read_job_state
from infra.documents import JobState
from infra.jobs import JOB_ID
from infra.store import ObjectStore


class JobController(Controller):
    path = "/jobs"

    @get("/{job_id:str}", sync_to_thread=True)
    def get_job(self, job_id: FromPath[str], store: NamedDependency[ObjectStore]) -> JobState:
        """The job as the host last wrote it (``queued`` while it waits in the inbox)."""
        if not JOB_ID.match(job_id):
            raise InvalidField("jobId", "is not a job id")
        return read_job_state(store, job_id)

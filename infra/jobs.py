"""Checks a Job before it is stored or sent, the same way in the API and in the host.

The API runs it on every request and answers 400 with the field it names; the host runs it again
on every document it takes from the inbox, because other systems may drop jobs there directly.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

import httpx
import msgspec

from infra import layout, templates
from infra.documents import (
    JOB_ID_PATTERN,
    MAX_MESSAGE_CHARS,
    RESULTS_PER_CHUNK,
    Job,
    JobState,
    RecipientResult,
    Totals,
    WebhookStatus,
    decode,
    encode,
    utcnow,
)
from infra.numbers import InvalidNumber, normalize_number
from infra.store import ObjectStore

JOB_ID = re.compile(JOB_ID_PATTERN)
# Control characters other than tab and line breaks: invisible in WhatsApp, and a NUL cuts text short.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class InvalidJob(ValueError):
    """What is wrong with a job, as a field path (``recipients[3].number``) and a reason."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def prepare_job(job: Job, *, job_id: str, default_region: str | None, now: dt.datetime | None = None) -> Job:
    """Return ``job`` with its id fixed and every number normalised, or raise InvalidJob."""
    job_id = job.jobId or job_id
    if not JOB_ID.match(job_id):
        raise InvalidJob("jobId", "must be 1-80 letters, digits, '.', '_' or '-', starting with a letter or digit")
    if not job.message.strip() and job.imageUrl is None:
        raise InvalidJob("message", "must not be empty")
    for field in ("imageUrl", "webhookUrl"):
        if (url := getattr(job, field)) is not None and (reason := _url_problem(url)):
            raise InvalidJob(field, reason)
    _refuse_control("message", job.message)
    recipients = []
    for index, recipient in enumerate(job.recipients):
        try:
            number = normalize_number(recipient.number, default_region)
        except InvalidNumber as exc:
            raise InvalidJob(f"recipients[{index}].number", f"{recipient.number!r} {exc}") from None
        _refuse_control(f"recipients[{index}].name", recipient.name)
        for name, value in recipient.fields.items():
            _refuse_control(f"recipients[{index}].fields.{name}", value)
        recipients.append(msgspec.structs.replace(recipient, number=number))
    prepared = msgspec.structs.replace(
        job, jobId=job_id, recipients=recipients, submittedAt=job.submittedAt or now or utcnow()
    )
    if job.kind == "bulk":
        _check_template(prepared)
    return prepared


def _refuse_control(field: str, text: str) -> None:
    if found := _CONTROL.search(text):
        raise InvalidJob(field, f"holds the control character {found[0]!r} at position {found.start()}")


def _check_template(job: Job) -> None:
    """Every placeholder can be filled, and no filled message is longer than WhatsApp allows here."""
    for problem in templates.problems(job.message):
        raise InvalidJob("message", problem)
    if spaced := templates.spaced_placeholders(job.message):
        names = {"nome", "numero"}.union(*(recipient.fields for recipient in job.recipients))
        for written, name in spaced.items():
            if name in names:
                raise InvalidJob("message", f"{written[:40]!r} has blanks inside its brackets; write [{name}]")
    for missing in templates.missing_fields(job.message, [recipient.values() for recipient in job.recipients]):
        raise InvalidJob("message", _missing_reason(missing))
    blank = []
    for index in range(len(job.recipients)):
        text = render(job, index)
        if (length := len(text)) > MAX_MESSAGE_CHARS:
            raise InvalidJob(
                "message",
                f"filled in for the contact at position {index} it is {length} characters; "
                f"the limit is {MAX_MESSAGE_CHARS}",
            )
        if not text.strip():
            blank.append(index)
    if blank:
        raise InvalidJob("message", f"filled in it is blank for the contacts at positions {_positions(blank)}")


def _url_problem(url: str) -> str | None:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        return f"is not a valid URL ({exc})"
    if parsed.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parsed.host or " " in url:
        return "must name a host, as in https://example.com/image.jpg"
    return None


def initial_state(job: Job) -> JobState:
    """The state of a job just accepted: every recipient pending, the same person twice a duplicate."""
    assert job.jobId is not None
    first_at: dict[str, int] = {}
    results = []
    for index, recipient in enumerate(job.recipients):
        result = RecipientResult(
            index=index, number=recipient.number, name=recipient.name, messageId=job.message_id(index)
        )
        if (first := first_at.setdefault(recipient.number, index)) != index:
            result.status, result.error = "duplicate", f"the same number as the contact at position {first}"
        results.append(result)
    state = JobState(
        jobId=job.jobId,
        userId=job.userId,
        kind=job.kind,
        status="queued",
        totals=Totals(),
        results=results,
        submittedAt=job.submittedAt,
        updatedAt=utcnow(),
        webhook=WebhookStatus(url=job.webhookUrl) if job.webhookUrl else None,
    )
    state.count()
    return state


def render(job: Job, index: int) -> str:
    """The message for recipient ``index``: its placeholders filled, its variations picked.

    A single send (``POST /send``) goes as written, as in the original: no template there."""
    if job.kind == "single":
        return job.message
    return templates.render(job.message, job.recipients[index].values(), seed=job.message_id(index))


def _missing_reason(missing: templates.MissingField) -> str:
    return (
        f"[{missing.field}] has no value for the contacts at positions {_positions(missing.positions, missing.count)}; "
        f"give every contact a {missing.field!r} or write [{missing.field}|fallback text]"
    )


def _positions(positions: list[int], count: int | None = None) -> str:
    """The first positions, and how many more there are of ``count`` (all of them when None)."""
    count = len(positions) if count is None else count
    shown = positions[: templates.SHOWN_POSITIONS]
    more = count - len(shown)
    return ", ".join(str(position) for position in shown) + (f" and {more} more" if more else "")


# -- job state in the store: a summary and chunks of results -------------------------------------


def chunk_of(index: int) -> int:
    return index // RESULTS_PER_CHUNK


def results_chunk(state: JobState, chunk: int) -> list[RecipientResult]:
    return state.results[chunk * RESULTS_PER_CHUNK : (chunk + 1) * RESULTS_PER_CHUNK]


def encode_state(state: JobState, chunks: Iterable[int] | None = None) -> list[tuple[str, bytes]]:
    """The objects that store ``state``: the given result chunks (all when None), then the summary.

    Encoding is a snapshot: the caller may change ``state`` while the objects are being written.
    """
    if chunks is None:
        chunks = range(chunk_of(max(len(state.results) - 1, 0)) + 1)
    objects = [(layout.job_results(state.jobId, c), encode(results_chunk(state, c))) for c in sorted(set(chunks))]
    objects.append((layout.job_state(state.jobId), encode(msgspec.structs.replace(state, results=[]))))
    return objects


def write_objects(store: ObjectStore, objects: list[tuple[str, bytes]]) -> None:
    for key, data in objects:
        store.put(key, data)


def write_state(store: ObjectStore, state: JobState, chunks: Iterable[int] | None = None) -> None:
    """Write the given result chunks (all when None), then the summary that counts them."""
    write_objects(store, encode_state(state, chunks))


def read_state(store: ObjectStore, job_id: str, offset: int = 0, limit: int | None = None) -> JobState:
    """The summary with the results from ``offset`` (``limit`` of them; all when None).

    Raises NotFound when the host has not accepted the job. The totals are recounted from the
    results when all of them are read, since the chunks are written before the summary.
    """
    state = decode(store.get(layout.job_state(job_id)).data, JobState)
    total = state.totals.total
    end = total if limit is None else min(total, offset + limit)
    results: list[RecipientResult] = []
    for chunk in range(chunk_of(offset), chunk_of(end - 1) + 1 if end > offset else chunk_of(offset)):
        results += decode(store.get(layout.job_results(job_id, chunk)).data, list[RecipientResult])
    skip = offset - chunk_of(offset) * RESULTS_PER_CHUNK
    state.results = results[skip : skip + (end - offset)]
    state.resultsOffset = offset
    if offset == 0 and end == total:
        state.count()
    return state

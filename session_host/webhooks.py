"""The completion webhook: when a job ends, its summary is POSTed to the job's ``webhookUrl``.

The body is JSON (``WebhookEvent``). With ``ZAPGATE_WEBHOOK_SECRET`` set, two headers let the
receiver check that it came from this gateway and is fresh::

    X-Zapgate-Timestamp: 1764790000
    X-Zapgate-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" under the secret>

A delivery that fails (an error, a timeout, an answer other than 2xx) is tried again after a
growing pause, ``RETRY_DELAYS``; the outcome is kept in the job's state. The job stays in the
account's queue until the webhook is delivered or given up, so a host restarted meanwhile tries again.

The delivery goes through ``infra.fetch``: a URL that leads to a loopback, private, link-local or
metadata address (unless ``ZAPGATE_FETCH_ALLOW`` allows it) is refused and not tried again; a
redirect is not followed (it counts as an answer other than 2xx).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable

import httpx
import msgspec

from infra.documents import JobState, Totals, WebhookStatus, encode, utcnow
from infra.fetch import Allowlist, FetchRefused, open_url
from infra.settings import Secret

logger = logging.getLogger(__name__)

RETRY_DELAYS = (0.0, 2.0, 10.0, 30.0, 120.0, 600.0)
TIMEOUT = 10.0


class WebhookEvent(msgspec.Struct):
    event: str
    jobId: str
    userId: str
    status: str
    totals: Totals
    finishedAt: dt.datetime | None
    detail: str | None
    reportUrl: str


def signature(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def event_for(state: JobState) -> bytes:
    return encode(
        WebhookEvent(
            event="job.finished",
            jobId=state.jobId,
            userId=state.userId,
            status=state.status,
            totals=state.totals,
            finishedAt=state.finishedAt,
            detail=state.detail,
            reportUrl=f"/jobs/{state.jobId}/report.csv",
        )
    )


async def deliver(
    url: str,
    body: bytes,
    secret: Secret | None,
    status: WebhookStatus,
    *,
    allow: Allowlist | None = None,
    after_failure: Callable[[], Awaitable[None]] | None = None,
) -> WebhookStatus:
    """Try to deliver ``body`` until it is accepted or the delays run out; return the outcome.

    ``allow``: the addresses allowed although private (``infra.fetch``); the process's by default.
    ``after_failure``: awaited after each failed attempt that will be tried again, so that the job's
    state shows the attempts so far (and a host that restarts goes on from there).
    """
    for delay in RETRY_DELAYS[status.attempts :]:
        await asyncio.sleep(delay)
        status.attempts += 1
        try:
            async with open_url(
                "POST",
                url,
                content=body,
                headers=_headers(secret, body),
                timeout=TIMEOUT,
                allow=allow,
                follow_redirects=False,
            ) as answer:
                if 200 <= answer.status_code < 300:
                    status.deliveredAt, status.lastError = utcnow(), None
                    return status
                status.lastError = f"the webhook answered HTTP {answer.status_code}"
        except FetchRefused as exc:  # trying again would not change the answer
            status.lastError = f"the webhook URL is refused: {exc}"
            logger.warning("webhook refused: %s", status.lastError)
            break
        except (httpx.HTTPError, TimeoutError) as exc:
            status.lastError = f"the webhook could not be reached: {type(exc).__name__}"
        logger.warning("webhook attempt %d failed: %s", status.attempts, status.lastError)
        if after_failure is not None and status.attempts < len(RETRY_DELAYS):
            await after_failure()
    status.gaveUp = True
    return status


def _headers(secret: Secret | None, body: bytes) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "User-Agent": "zapgate-webhook"}
    if secret is not None:
        timestamp = str(int(time.time()))
        headers["X-Zapgate-Timestamp"] = timestamp
        headers["X-Zapgate-Signature"] = signature(secret.reveal(), timestamp, body)
    return headers

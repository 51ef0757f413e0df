"""Fetches a job's image once, before anyone gets a message: a timeout, a size cap, and a check of
the real bytes (not the Content-Type a server claims).

The fetch goes through ``infra.fetch``: http(s) only, no loopback, private, link-local or metadata
address unless ``ZAPGATE_FETCH_ALLOW`` allows it, redirects checked again at every hop.
"""

from __future__ import annotations

import asyncio

import httpx

from infra.fetch import Allowlist, FetchRefused, open_url

_SIGNATURES = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


class MediaError(Exception):
    """The image cannot be used; the message says why, in words for the job's report."""


def sniff_image_type(head: bytes) -> str | None:
    for signature, mimetype in _SIGNATURES:
        if head.startswith(signature):
            return mimetype
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


async def fetch_image(url: str, *, max_bytes: int, timeout: float, allow: Allowlist | None = None) -> tuple[bytes, str]:
    """Download ``url`` and return its bytes and their real type, or raise MediaError.

    ``allow``: the addresses allowed although private (``infra.fetch``); the process's by default.
    """
    try:
        async with asyncio.timeout(timeout), open_url("GET", url, timeout=timeout, allow=allow) as response:
            if response.status_code != 200:
                raise MediaError(f"the image URL answered HTTP {response.status_code}")
            declared = int(response.headers.get("content-length") or 0)
            if declared > max_bytes:
                raise MediaError(f"the image is {declared} bytes, more than the limit of {max_bytes}")
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > max_bytes:
                    raise MediaError(f"the image is larger than the limit of {max_bytes} bytes")
    except FetchRefused as exc:
        raise MediaError(f"the image URL is refused: {exc}") from None
    except (httpx.TimeoutException, TimeoutError):
        raise MediaError(f"the image URL did not answer within {timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise MediaError(f"the image could not be fetched: {exc}") from None
    except ValueError:  # a Content-Length that is not a number
        raise MediaError("the image URL answered with a malformed Content-Length") from None
    mimetype = sniff_image_type(bytes(data[:16]))
    if mimetype is None:
        raise MediaError("the image URL did not return an image (JPEG, PNG, GIF or WebP)")
    return bytes(data), mimetype

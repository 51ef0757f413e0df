"""The S3 backend, for any S3-compatible server (AWS, MinIO, Ceph RGW, R2)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from infra.settings import S3Settings
from infra.store import NotFound, PreconditionFailed, StoredObject, StoreUnavailable, check_key, usable_keys

# What S3 servers answer when a conditional write loses: 412 Precondition Failed, or 409
# ConditionalRequestConflict when another conditional write to the key is in flight (AWS).
_PRECONDITION_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


class S3Store:
    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    @classmethod
    def from_settings(cls, settings: S3Settings, bucket: str, prefix: str = "") -> S3Store:
        return cls(make_client(settings), bucket, prefix)

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def get(self, key: str) -> StoredObject:
        with _translated(key):
            answer = self.client.get_object(Bucket=self.bucket, Key=self.prefix + check_key(key))
            data = answer["Body"].read()
        return StoredObject(data=data, etag=answer["ETag"].strip('"'))

    def put(self, key: str, data: bytes, *, create_only: bool = False, if_match: str | None = None) -> str:
        extra: dict[str, str] = {}
        if create_only:
            extra["IfNoneMatch"] = "*"
        elif if_match is not None:
            # Ceph RGW 16.2 only matched the ETag without its quotes; AWS and MinIO accept both.
            extra["IfMatch"] = if_match.strip('"')
        with _translated(key):
            answer = self.client.put_object(Bucket=self.bucket, Key=self.prefix + check_key(key), Body=data, **extra)
        return str(answer["ETag"]).strip('"')

    def delete(self, key: str) -> None:
        with _translated(key):
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + check_key(key))

    def list(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        with _translated(prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                yield from usable_keys(item["Key"][len(self.prefix) :] for item in page.get("Contents", ()))

    def exists(self, key: str) -> bool:
        try:
            with _translated(key):
                self.client.head_object(Bucket=self.bucket, Key=self.prefix + check_key(key))
        except NotFound:
            return False
        return True

    def check(self) -> None:
        try:
            with _translated(""):
                self.client.head_bucket(Bucket=self.bucket)
        except NotFound:
            raise StoreUnavailable(
                f"the bucket {self.bucket!r} does not exist: create it, or set ZAPGATE_STORE"
            ) from None
        except PreconditionFailed as exc:  # pragma: no cover - HEAD carries no condition
            raise StoreUnavailable(str(exc)) from None


def make_client(settings: S3Settings) -> Any:
    config = botocore.config.Config(
        region_name=settings.region,
        connect_timeout=settings.timeout,
        read_timeout=settings.timeout,
        retries={"max_attempts": 3, "mode": "standard"},
        s3={"addressing_style": settings.addressing_style},
        # Servers without the newer default checksums (Ceph RGW 16, older MinIO) refuse them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.endpoint,
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key.reveal() if settings.secret_key else None,
        config=config,
    )


@contextlib.contextmanager
def _translated(key: str) -> Iterator[None]:
    """Turn botocore's exceptions into the store's error tree."""
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _MISSING_CODES or (status == 404 and code != "NoSuchBucket"):
            raise NotFound(key) from None
        if code in _PRECONDITION_CODES or status == 412:
            raise PreconditionFailed(key) from None
        if code == "NoSuchBucket":
            raise StoreUnavailable(f"the bucket does not exist ({error.get('Message', code)})") from None
        raise StoreUnavailable(f"S3 answered {status} {code}: {error.get('Message', '')}".strip()) from None
    except botocore.exceptions.BotoCoreError as exc:
        raise StoreUnavailable(f"S3 could not be reached: {exc}") from None

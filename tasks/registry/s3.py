"""The registry in an S3 bucket (AWS, MinIO, moto): the one boto client configuration of the
project, the create-only puts, and the one-line descriptions of what S3 answered."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.errors import RegistryError, brief
from tasks.registry.base import CHUNK
from tasks.registry.protocol import Registry

# botocore generates the client class at run time; there is no importable type to name
S3Client = Any

S3_MAX_ATTEMPTS = 4  # requests per S3 call, first try included (botocore "standard" retries)
_PUT_ATTEMPTS = 3  # S3 may answer 409 ConditionalRequestConflict to racing conditional puts
_CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
)
_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


class S3Registry(Registry):
    """A registry in an S3 bucket (AWS, MinIO, moto); credentials come from the boto3 chain."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        client: S3Client | None = None,
        settings: tuple[str, str] = (
            "registry.uri (or --uri)",
            "registry.endpoint_url (or --endpoint-url)",
        ),
    ) -> None:
        """`settings` name where the user sets the URI and the endpoint, for error messages."""
        if not bucket:
            raise RegistryError("registry.uri: s3:// needs a bucket name (s3://bucket/prefix)")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.settings = settings
        self._client = client if client is not None else make_client(endpoint_url, region)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _object_key(self, key: str) -> str:
        return "/".join(part for part in (self.prefix, key) if part)

    def _uri_of(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"

    def _exists(self, key: str) -> bool:
        with self._errors(key):
            try:
                self._client.head_object(Bucket=self.bucket, Key=self._object_key(key))
            except _client_error() as exc:
                if _error_code(exc) in _MISSING_CODES:
                    return False
                raise
            return True

    def _read(self, key: str) -> bytes | None:
        with self._errors(key):
            response = self._get_or_none(key)
            return None if response is None else response["Body"].read()

    def _get_or_none(self, key: str) -> dict[str, Any] | None:
        """GetObject's response, or None when the key does not exist (call inside _errors)."""
        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._object_key(key))
        except _client_error() as exc:
            if _error_code(exc) in _MISSING_CODES:
                return None
            raise

    def _create(self, key: str, source: Path | bytes, sha256: str) -> bool:
        checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
        with self._errors(key):
            for attempt in range(1, _PUT_ATTEMPTS + 1):
                try:
                    self._put_once(key, source, checksum)
                    return True
                except _client_error() as exc:
                    code = _error_code(exc)
                    if code == "PreconditionFailed":
                        return False
                    if code != "ConditionalRequestConflict" or attempt == _PUT_ATTEMPTS:
                        raise
                time.sleep(0.2 * attempt)
        return False  # unreachable: the loop returns or raises

    def _put_once(self, key: str, source: Path | bytes, checksum: str) -> None:
        # One PUT is enough up to 5 GiB; upload_file would be multipart but cannot send
        # IfNoneMatch.
        with contextlib.ExitStack() as stack:
            body = source if isinstance(source, bytes) else stack.enter_context(open(source, "rb"))
            self._client.put_object(
                Bucket=self.bucket,
                Key=self._object_key(key),
                Body=body,
                IfNoneMatch="*",
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=checksum,
            )

    def _replace(self, key: str, data: bytes) -> None:
        with self._errors(key):
            self._client.put_object(Bucket=self.bucket, Key=self._object_key(key), Body=data)

    def _sha256_of(self, key: str) -> str:
        with self._errors(key):
            head = self._client.head_object(
                Bucket=self.bucket, Key=self._object_key(key), ChecksumMode="ENABLED"
            )
            stored = head.get("ChecksumSHA256")
            if stored and "-" not in stored:  # "-N" marks a composite multipart checksum
                return base64.b64decode(stored).hex()
            response = self._client.get_object(Bucket=self.bucket, Key=self._object_key(key))
            digest = hashlib.sha256()
            for chunk in response["Body"].iter_chunks(CHUNK):
                digest.update(chunk)
            return digest.hexdigest()

    def _children(self, key: str) -> list[str]:
        folder = self._object_key(key)
        folder = f"{folder}/" if folder else ""
        names: list[str] = []
        with self._errors(key):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=folder, Delimiter="/"):
                for common in page.get("CommonPrefixes", []):
                    names.append(common["Prefix"][len(folder) :].rstrip("/"))
        return names

    def _digest(self, key: str) -> tuple[int, str] | None:
        with self._errors(key):
            response = self._get_or_none(key)
            if response is None:
                return None
            digest, size = hashlib.sha256(), 0
            for chunk in response["Body"].iter_chunks(CHUNK):
                digest.update(chunk)
                size += len(chunk)
            return size, digest.hexdigest()

    def _files(self, key: str) -> dict[str, int]:
        folder = f"{self._object_key(key)}/".lstrip("/")
        found: dict[str, int] = {}
        with self._errors(key):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=folder):
                for item in page.get("Contents", []):
                    found[item["Key"][len(folder) :]] = int(item["Size"])
        return found

    def _download(self, key: str, target: Path) -> None:
        with self._errors(key):
            try:
                response = self._client.get_object(Bucket=self.bucket, Key=self._object_key(key))
            except _client_error() as exc:
                if _error_code(exc) in _MISSING_CODES:
                    raise RegistryError(
                        f"{self._uri_of(key)}: listed in the manifest but missing"
                    ) from None
                raise
            with open(target, "wb") as handle:
                for chunk in response["Body"].iter_chunks(CHUNK):
                    handle.write(chunk)

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Turn boto errors into one-line RegistryErrors that say what to fix."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            raise RegistryError(_describe_s3_error(exc, self._uri_of(key), self)) from None


def make_client(endpoint_url: str | None, region: str) -> S3Client:
    """The project's one S3 client configuration (registry and artifact store alike)."""
    import boto3
    from botocore.config import Config

    # "standard" mode retries throttling, 5xx and connection errors with jittered exponential
    # backoff, at most S3_MAX_ATTEMPTS requests in all; never a 4xx such as 403, 404 or 412.
    config = Config(
        connect_timeout=5,
        read_timeout=60,
        retries={"total_max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
        # MinIO and moto serve buckets as paths, not as DNS names
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def _client_error() -> type[Exception]:
    from botocore.exceptions import ClientError

    return ClientError


def _error_code(exc: Exception) -> str:
    return str(_error_fields(exc).get("Code", ""))


def _error_fields(exc: Exception) -> dict[str, Any]:
    """The parsed S3 error (Code, Message) of a ClientError; {} for errors with no reply."""
    response = getattr(exc, "response", None)  # botocore's HTTP errors carry response=None
    return (response.get("Error") or {}) if isinstance(response, dict) else {}


def _describe_s3_error(exc: Exception, where: str, registry: S3Registry) -> str:
    """One line naming the bucket/endpoint and the fix; never credential values."""
    from botocore.exceptions import (
        ConnectionError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    endpoint = registry.endpoint_url or "AWS S3 (no endpoint URL set)"
    bucket = registry.bucket
    uri_setting, endpoint_setting = registry.settings
    code = _error_code(exc)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return f"no S3 credentials for bucket {bucket!r}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
    if isinstance(exc, ConnectionError | HTTPClientError):
        where = f"the S3 endpoint {endpoint}" if registry.endpoint_url else endpoint
        return f"cannot reach {where} for bucket {bucket!r}: check {endpoint_setting} and that the server is up"
    if code in _CREDENTIAL_CODES:
        return f"S3 at {endpoint} rejected the credentials for bucket {bucket!r} ({code}): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    if code in ("AccessDenied", "403"):
        return f"access denied to {where} at {endpoint}: the credentials need s3:ListBucket, s3:GetObject and s3:PutObject on bucket {bucket!r}"
    if code == "NoSuchBucket":
        return f"bucket {bucket!r} does not exist at {endpoint}: create it or fix {uri_setting}"
    message = _error_fields(exc).get("Message") or brief(exc)
    return f"S3 request for {where} at {endpoint} failed: {code or type(exc).__name__}: {brief(message)}"

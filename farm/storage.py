"""Object storage behind one interface: S3 through the ``minio`` client, or a
local directory for the embedded default.

Objects are fenced like rows: an output's key names the attempt that wrote it
(:func:`output_key`), so an attempt can only ever write and delete its own
keys. A superseded attempt that wakes up and uploads cannot touch what the
current attempt wrote; the output row points at the keys of the attempt whose
fenced completion won, and the janitor (:mod:`farm.janitor`) deletes the rest.

Every S3 call goes through :func:`farm.retry.call_with_retry`: transient
errors (refused or dropped connections, timeouts, 5xx) are retried for
``FARM_STORAGE_RETRY_S``; permanent ones (bad credentials, a missing bucket)
fail at once with a message that says what to fix.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol
from urllib.parse import urlparse

from farm.retry import ServicePermanentError, ServiceUnavailableError, call_with_retry

logger = logging.getLogger(__name__)

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "json": "application/json"}
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
_OUTPUT_KEY = re.compile(r"^outputs/u(\d+)/([0-9a-fA-F-]{36})/a(\d+)/[^/]+$")
_CHECKPOINT_KEY = re.compile(r"^checkpoints/u(\d+)/([0-9a-fA-F-]{36})/a(\d+)\.pt$")
OUTPUTS_PREFIX = "outputs/"
CHECKPOINTS_PREFIX = "checkpoints/"

class StorageError(Exception):
    pass


class ObjectNotFoundError(StorageError):
    pass


class StorageUnavailableError(ServiceUnavailableError, StorageError):
    """The store stayed unreachable for the whole retry budget."""


class StoragePermanentError(ServicePermanentError, StorageError):
    """The store refuses this farm for good (credentials, bucket); retrying cannot help."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    modified: dt.datetime


def output_key(user_id: int, job_id: uuid.UUID | str, attempt: int, index: int, fmt: str) -> str:
    """Where image ``index`` of one attempt of a job lives."""
    extension = "jpg" if fmt == "jpeg" else fmt
    return f"{job_prefix(user_id, job_id)}a{attempt}/{index}.{extension}"


def checkpoint_key(user_id: int, job_id: uuid.UUID | str, attempt: int) -> str:
    """Where a preempted attempt's render checkpoint lives (farm/workers/resume.py):
    outside ``outputs/``, so it is never taken for an output of an attempt that did not complete."""
    return f"{checkpoint_prefix(user_id, job_id)}a{attempt}.pt"


def checkpoint_prefix(user_id: int, job_id: uuid.UUID | str) -> str:
    return f"{CHECKPOINTS_PREFIX}u{user_id}/{job_id}/"


def job_prefix(user_id: int, job_id: uuid.UUID | str) -> str:
    return f"{OUTPUTS_PREFIX}u{user_id}/{job_id}/"


def attempt_of_key(key: str) -> tuple[uuid.UUID, int] | None:
    """(job id, attempt) an output object or a render checkpoint was written
    by; None for keys of another shape (uploads, outputs written before keys
    named attempts)."""
    match = _OUTPUT_KEY.match(key) or _CHECKPOINT_KEY.match(key)
    if match is None:
        return None
    try:
        return uuid.UUID(match.group(2)), int(match.group(3))
    except ValueError:
        return None


def sidecar_key(object_key: str) -> str:
    return object_key.rsplit(".", 1)[0] + ".json"


def check_key(key: str) -> str:
    if not _KEY_PATTERN.match(key) or ".." in key.split("/"):
        raise StorageError(f"invalid object key {key!r}")
    return key


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def list(self, prefix: str) -> Iterator[StoredObject]:
        """Every object whose key starts with ``prefix``."""

    def url(self, key: str, expires_s: int) -> str | None:
        """A URL a client can fetch directly, or None when the API must serve the bytes."""

    def describe(self) -> str: ...


class LocalStorage:
    """A directory; writes go to a temporary file and are renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(key) from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> Iterator[StoredObject]:
        # Keys are paths below the root; a prefix may end inside a name.
        folder = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not folder.is_dir():
            return
        for path in sorted(folder.rglob("*")):
            key = path.relative_to(self.root).as_posix()
            if path.is_file() and key.startswith(prefix) and not path.name.startswith(".tmp-"):
                yield StoredObject(key, dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc))

    def url(self, key: str, expires_s: int) -> str | None:
        return None

    def describe(self) -> str:
        return f"local directory {self.root}"


# Codes of errors no retry can fix, with what the operator should do.
_PERMANENT_S3_CODES = {
    "AccessDenied": "the store refuses this access key; check FARM_S3_ACCESS_KEY, FARM_S3_SECRET_KEY and the bucket policy",
    "InvalidAccessKeyId": "the store does not know FARM_S3_ACCESS_KEY; set the access key of an existing user",
    "SignatureDoesNotMatch": "FARM_S3_SECRET_KEY does not belong to FARM_S3_ACCESS_KEY; set the matching secret",
    "NoSuchBucket": "the bucket named by FARM_S3_BUCKET does not exist; create it or name an existing one",
    "InvalidBucketName": "FARM_S3_BUCKET is not a valid bucket name",
    "AllAccessDisabled": "all access to the bucket is disabled; check the store's settings",
    "AccountProblem": "the store's account has a problem; check it with the store's operator",
}
_NOT_SERVICE_ERRORS = {"NoSuchKey", "NoSuchObject", "NotFound"}


def classify_storage_error(exc: BaseException) -> str | None:
    import urllib3.exceptions
    from minio.error import InvalidResponseError, S3Error, ServerError

    if isinstance(exc, S3Error):
        if exc.code in _PERMANENT_S3_CODES:
            return "permanent"
        return None if exc.code in _NOT_SERVICE_ERRORS else "transient"
    if isinstance(exc, (ServerError, InvalidResponseError, urllib3.exceptions.HTTPError, OSError)):
        return "transient"
    return None


def describe_storage_error(exc: BaseException) -> str:
    from minio.error import S3Error

    if isinstance(exc, S3Error) and exc.code in _PERMANENT_S3_CODES:
        return f"{exc.code}: {_PERMANENT_S3_CODES[exc.code]}"
    return f"{type(exc).__name__}: {exc}"


class S3Storage:
    """Any S3 endpoint (MinIO in production) through the minio client."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, bucket: str, region: str = "us-east-1",
                 public_endpoint: str | None = None, retry_s: float = 30.0, timeout_s: float = 30.0) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        self.retry_s = retry_s
        self.client = _minio_client(endpoint, access_key, secret_key, region, timeout_s)
        # Presigning is local computation; a client bound to the public address
        # signs URLs that browsers outside the service network can fetch.
        self.presigner = _minio_client(public_endpoint, access_key, secret_key, region, timeout_s) if public_endpoint else self.client

    def _call(self, what: str, call):
        try:
            return call_with_retry(call, service="object store", what=what, budget_s=self.retry_s,
                                   classify=classify_storage_error, explain=describe_storage_error)
        except ServicePermanentError as exc:
            raise StoragePermanentError(exc.service, exc.what, str(exc)) from exc.__cause__
        except ServiceUnavailableError as exc:
            raise StorageUnavailableError(exc.service, exc.what, str(exc)) from exc.__cause__

    def ensure_bucket(self) -> None:
        if self._call("check the bucket", lambda: self.client.bucket_exists(self.bucket)):
            return
        logger.info("creating bucket %s", self.bucket)
        try:
            self._call("create the bucket", lambda: self.client.make_bucket(self.bucket))
        except StorageError as exc:  # another process may have won the race
            if not self._call("check the bucket", lambda: self.client.bucket_exists(self.bucket)):
                raise StorageError(f"cannot create bucket {self.bucket}: {exc}") from exc

    def check(self) -> None:
        """Raise StoragePermanentError when the bucket cannot be used at all."""
        if not self._call("check the bucket", lambda: self.client.bucket_exists(self.bucket)):
            raise StoragePermanentError("object store", "check the bucket", f"object store: {_PERMANENT_S3_CODES['NoSuchBucket']} ({self.bucket})")

    def put(self, key: str, data: bytes, content_type: str) -> None:
        check_key(key)
        # A fresh stream for every try: a failed try has consumed the last one.
        self._call(f"put {key}", lambda: self.client.put_object(self.bucket, key, io.BytesIO(data), len(data),
                                                                 content_type=content_type))

    def get(self, key: str) -> bytes:
        from minio.error import S3Error

        check_key(key)

        def read() -> bytes:
            response = self.client.get_object(self.bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        try:
            return self._call(f"get {key}", read)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise ObjectNotFoundError(key) from exc
            raise

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        check_key(key)
        try:
            self._call(f"stat {key}", lambda: self.client.stat_object(self.bucket, key))
            return True
        except S3Error as exc:
            if exc.code in _NOT_SERVICE_ERRORS:
                return False
            raise

    def delete(self, key: str) -> None:
        check_key(key)
        self._call(f"delete {key}", lambda: self.client.remove_object(self.bucket, key))

    def list(self, prefix: str) -> Iterator[StoredObject]:
        # One page at a time through the retry helper, resuming after the last key seen.
        after = None
        while True:
            page = self._call(f"list {prefix}", lambda: _page(self.client, self.bucket, prefix, after))
            yield from page
            if len(page) < _LIST_PAGE:
                return
            after = page[-1].key

    def url(self, key: str, expires_s: int) -> str | None:
        return self.presigner.presigned_get_object(self.bucket, check_key(key), expires=dt.timedelta(seconds=expires_s))

    def describe(self) -> str:
        return f"s3 bucket {self.bucket} at {self.endpoint}"


_LIST_PAGE = 1000


def _page(client, bucket: str, prefix: str, after: str | None) -> list[StoredObject]:
    listing = client.list_objects(bucket, prefix=prefix, recursive=True, start_after=after)
    page = []
    for item in listing:
        page.append(StoredObject(item.object_name, item.last_modified))
        if len(page) == _LIST_PAGE:
            break
    return page


def _minio_client(endpoint: str, access_key: str, secret_key: str, region: str, timeout_s: float = 30.0):
    import urllib3
    from minio import Minio

    parsed = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
    if not parsed.netloc:
        raise StorageError(f"S3 endpoint {endpoint!r} is not a URL like http://127.0.0.1:9000")
    # Retries are ours (farm.retry), with a time budget; the client's default
    # is five quick retries and a five-minute read timeout.
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=min(timeout_s, 5.0), read=timeout_s), maxsize=10,
                               retries=False)
    return Minio(parsed.netloc, access_key=access_key, secret_key=secret_key, secure=parsed.scheme == "https", region=region,
                 http_client=http)


def make_storage(settings) -> Storage:
    if settings.s3_endpoint:
        storage = S3Storage(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key, settings.s3_bucket,
                            settings.s3_region, public_endpoint=settings.s3_public_endpoint,
                            retry_s=settings.storage_retry_s, timeout_s=settings.storage_timeout_s)
        storage.ensure_bucket()
        return storage
    return LocalStorage(settings.store_folder)

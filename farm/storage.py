"""Object storage behind one interface: S3 through the ``minio`` client, or a
local directory for the embedded default.

Keys are deterministic (:func:`output_key`), so a retried job overwrites its
own objects instead of leaving duplicates.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "json": "application/json"}
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")


class StorageError(Exception):
    pass


class ObjectNotFoundError(StorageError):
    pass


def output_key(user_id: int, job_id: uuid.UUID | str, index: int, fmt: str) -> str:
    """Where image ``index`` of a job lives; the same for every attempt."""
    extension = "jpg" if fmt == "jpeg" else fmt
    return f"outputs/u{user_id}/{job_id}/{index}.{extension}"


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

    def url(self, key: str, expires_s: int) -> str | None:
        return None

    def describe(self) -> str:
        return f"local directory {self.root}"


class S3Storage:
    """Any S3 endpoint (MinIO in production) through the minio client."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, bucket: str, region: str = "us-east-1",
                 public_endpoint: str | None = None) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        self.client = _minio_client(endpoint, access_key, secret_key, region)
        # Presigning is local computation; a client bound to the public address
        # signs URLs that browsers outside the service network can fetch.
        self.presigner = _minio_client(public_endpoint, access_key, secret_key, region) if public_endpoint else self.client

    def ensure_bucket(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            logger.info("creating bucket %s", self.bucket)
            try:
                self.client.make_bucket(self.bucket)
            except Exception as exc:  # another process may have won the race
                if not self.client.bucket_exists(self.bucket):
                    raise StorageError(f"cannot create bucket {self.bucket}: {exc}") from exc

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.client.put_object(self.bucket, check_key(key), io.BytesIO(data), len(data), content_type=content_type)

    def get(self, key: str) -> bytes:
        from minio.error import S3Error

        try:
            response = self.client.get_object(self.bucket, check_key(key))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise ObjectNotFoundError(key) from exc
            raise
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        try:
            self.client.stat_object(self.bucket, check_key(key))
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return False
            raise

    def delete(self, key: str) -> None:
        self.client.remove_object(self.bucket, check_key(key))

    def url(self, key: str, expires_s: int) -> str | None:
        return self.presigner.presigned_get_object(self.bucket, check_key(key), expires=dt.timedelta(seconds=expires_s))

    def describe(self) -> str:
        return f"s3 bucket {self.bucket} at {self.endpoint}"


def _minio_client(endpoint: str, access_key: str, secret_key: str, region: str):
    from minio import Minio

    parsed = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
    if not parsed.netloc:
        raise StorageError(f"S3 endpoint {endpoint!r} is not a URL like http://127.0.0.1:9000")
    return Minio(parsed.netloc, access_key=access_key, secret_key=secret_key, secure=parsed.scheme == "https", region=region)


def make_storage(settings) -> Storage:
    if settings.s3_endpoint:
        storage = S3Storage(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key, settings.s3_bucket,
                            settings.s3_region, public_endpoint=settings.s3_public_endpoint)
        storage.ensure_bucket()
        return storage
    return LocalStorage(settings.store_folder)

from __future__ import annotations

import uuid

import pytest

from farm.storage import (
    LocalStorage,
    ObjectNotFoundError,
    StorageError,
    attempt_of_key,
    check_key,
    classify_storage_error,
    job_prefix,
    output_key,
    sidecar_key,
)


def test_output_keys_name_the_attempt_that_wrote_them():
    job = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert output_key(7, job, 1, 0, "png") == f"outputs/u7/{job}/a1/0.png"
    assert output_key(7, job, 1, 0, "png") == output_key(7, str(job), 1, 0, "png")
    assert output_key(7, job, 3, 1, "jpeg") == f"outputs/u7/{job}/a3/1.jpg"
    assert output_key(7, job, 2, 2, "webp").endswith("/a2/2.webp")
    assert sidecar_key(output_key(7, job, 2, 0, "png")) == f"outputs/u7/{job}/a2/0.json"
    # Two attempts of one job never share a key: a stale one cannot overwrite.
    assert output_key(7, job, 1, 0, "png") != output_key(7, job, 2, 0, "png")
    assert output_key(7, job, 2, 0, "png").startswith(job_prefix(7, job))
    assert attempt_of_key(output_key(7, job, 4, 0, "png")) == (job, 4)
    assert attempt_of_key(sidecar_key(output_key(7, job, 4, 0, "png"))) == (job, 4)
    # Keys of other shapes (uploads, outputs from before attempts were named) are not an attempt's.
    assert attempt_of_key(f"outputs/u7/{job}/0.png") is None
    assert attempt_of_key("uploads/u7/abc.png") is None


def test_storage_errors_are_classified():
    import urllib3.exceptions
    from minio.error import S3Error, ServerError

    def s3(code):
        return S3Error(None, code, "message", "resource", "request", "host")

    assert classify_storage_error(urllib3.exceptions.NewConnectionError(None, "refused")) == "transient"
    assert classify_storage_error(urllib3.exceptions.ReadTimeoutError(None, "/", "timed out")) == "transient"
    assert classify_storage_error(ConnectionRefusedError()) == "transient"
    assert classify_storage_error(ServerError("bad gateway", 502)) == "transient"
    assert classify_storage_error(s3("SlowDown")) == "transient"
    for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket", "AccessDenied"):
        assert classify_storage_error(s3(code)) == "permanent", code
    # A missing object is an answer, not an outage; a bug is not a service error.
    assert classify_storage_error(s3("NoSuchKey")) is None
    assert classify_storage_error(ValueError("bug")) is None


def test_local_storage_lists_by_prefix(tmp_path):
    store = LocalStorage(tmp_path / "store")
    for key in ("outputs/u1/j1/a1/0.png", "outputs/u1/j1/a2/0.png", "outputs/u1/j10/a1/0.png", "uploads/u1/x.png"):
        store.put(key, b"x", "image/png")
    assert [o.key for o in store.list("outputs/u1/j1/")] == ["outputs/u1/j1/a1/0.png", "outputs/u1/j1/a2/0.png"]
    assert len(list(store.list("outputs/"))) == 3
    assert list(store.list("outputs/u9/")) == []
    assert all(o.modified.tzinfo is not None for o in store.list("outputs/"))


@pytest.mark.parametrize("key", ["../etc/passwd", "a/../../b", "/abs", "", "a b"])
def test_unsafe_keys_are_refused(key):
    with pytest.raises(StorageError):
        check_key(key)


def test_local_storage_round_trip(tmp_path):
    store = LocalStorage(tmp_path / "store")
    key = "outputs/u1/j/0.png"
    assert not store.exists(key)
    store.put(key, b"first", "image/png")
    store.put(key, b"second", "image/png")  # a retry overwrites, never duplicates
    assert store.get(key) == b"second"
    assert store.exists(key)
    assert store.url(key, 60) is None  # the API serves local bytes itself
    assert [p.name for p in (tmp_path / "store/outputs/u1/j").iterdir()] == ["0.png"]
    store.delete(key)
    with pytest.raises(ObjectNotFoundError):
        store.get(key)
    with pytest.raises(StorageError):
        store.put("../escape", b"x", "image/png")

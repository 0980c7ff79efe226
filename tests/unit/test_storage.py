from __future__ import annotations

import uuid

import pytest

from farm.storage import LocalStorage, ObjectNotFoundError, StorageError, check_key, output_key, sidecar_key


def test_output_keys_are_deterministic_per_job_and_index():
    job = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert output_key(7, job, 0, "png") == f"outputs/u7/{job}/0.png"
    assert output_key(7, job, 0, "png") == output_key(7, str(job), 0, "png")
    assert output_key(7, job, 1, "jpeg") == f"outputs/u7/{job}/1.jpg"
    assert output_key(7, job, 2, "webp").endswith("/2.webp")
    assert sidecar_key(output_key(7, job, 0, "png")) == f"outputs/u7/{job}/0.json"


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

"""Storage against a real S3-protocol server, events against the real Redis."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from farm.events import RedisEvents
from farm.localcluster import free_port
from farm.storage import ObjectNotFoundError, S3Storage, StoragePermanentError, StorageUnavailableError

pytestmark = pytest.mark.integration


def test_s3_storage_round_trip(s3, s3_bucket):
    endpoint, access, secret = s3
    store = S3Storage(endpoint, access, secret, s3_bucket)
    store.ensure_bucket()
    store.ensure_bucket()  # idempotent
    key = "outputs/u1/job/0.png"
    assert not store.exists(key)
    store.put(key, b"\x89PNG-first", "image/png")
    store.put(key, b"\x89PNG-second", "image/png")
    assert store.get(key) == b"\x89PNG-second"
    url = store.url(key, 120)
    assert "X-Amz-Signature" in url
    fetched = requests.get(url, timeout=10)
    assert fetched.status_code == 200 and fetched.content == b"\x89PNG-second"
    store.delete(key)
    assert not store.exists(key)
    with pytest.raises(ObjectNotFoundError):
        store.get(key)


def test_s3_storage_lists_pages_of_a_prefix(s3, s3_bucket):
    endpoint, access, secret = s3
    store = S3Storage(endpoint, access, secret, s3_bucket)
    store.ensure_bucket()
    import farm.storage as storage_module

    keys = [f"outputs/u1/job/a1/{i}.png" for i in range(5)] + ["outputs/u1/other/a1/0.png"]
    for key in keys:
        store.put(key, b"x", "image/png")
    # Pages of two keys, so the listing must resume after the last key of each page.
    storage_module._LIST_PAGE, saved = 2, storage_module._LIST_PAGE
    try:
        listed = list(store.list("outputs/u1/job/"))
    finally:
        storage_module._LIST_PAGE = saved
    assert [o.key for o in listed] == sorted(keys[:5])
    assert all(o.modified.tzinfo is not None for o in listed)


def test_a_missing_bucket_fails_at_once_and_says_what_to_fix(s3):
    endpoint, access, secret = s3
    store = S3Storage(endpoint, access, secret, "farm-no-such-bucket", retry_s=30)
    started = time.monotonic()
    with pytest.raises(StoragePermanentError) as refused:
        store.put("outputs/u1/job/a1/0.png", b"x", "image/png")
    assert time.monotonic() - started < 5  # not retried for the 30 s budget
    assert "FARM_S3_BUCKET" in str(refused.value)
    with pytest.raises(StoragePermanentError):
        store.check()


def test_a_store_refusing_connections_is_retried_for_the_budget_then_unavailable():
    store = S3Storage(f"http://127.0.0.1:{free_port()}", "key", "secret", "farm", retry_s=1.0)
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError) as unavailable:
        store.put("outputs/u1/job/a1/0.png", b"x", "image/png")
    assert 1.0 <= time.monotonic() - started < 5
    assert "object store unavailable" in str(unavailable.value)


def test_redis_wakes_the_scheduler(redis_url):
    events = RedisEvents(redis_url)
    wait = events.scheduler_waiter()
    assert wait(0.1) is False  # subscribes; nothing published yet
    threading.Timer(0.2, events.wake_scheduler).start()
    started = time.monotonic()
    assert wait(5.0) is True
    assert time.monotonic() - started < 4.0


def test_redis_job_waiters_wake_on_change(redis_url):
    events = RedisEvents(redis_url)
    done = threading.Event()

    def finish():
        done.set()
        events.job_changed("job-1")

    threading.Timer(0.3, finish).start()
    started = time.monotonic()
    assert events.wait_job("job-1", done.is_set, timeout=10) is True
    assert time.monotonic() - started < 5.0
    assert events.wait_job("job-2", lambda: False, timeout=0.2) is False


def test_presigned_urls_use_the_public_endpoint(s3, s3_bucket):
    endpoint, access, secret = s3
    public = endpoint.replace("127.0.0.1", "localhost")
    store = S3Storage(endpoint, access, secret, s3_bucket, public_endpoint=public)
    store.ensure_bucket()
    store.put("k/0.png", b"img", "image/png")
    url = store.url("k/0.png", 60)
    assert url.startswith(public + "/")
    assert requests.get(url, timeout=10).content == b"img"


def test_farms_sharing_one_redis_keep_their_namespaces_apart(redis_url):
    """Two farms on one Redis database (two e2e clusters at once, or two
    studios) must not wake each other's schedulers nor take each other's
    render messages: FARM_REDIS_NAMESPACE prefixes channels and Celery keys."""
    import uuid

    import redis

    from farm.settings import Settings
    from farm.workers.celery_app import create_celery, worker_queue

    first, second = f"t-{uuid.uuid4().hex[:6]}:", f"t-{uuid.uuid4().hex[:6]}:"
    waiter = RedisEvents(redis_url, namespace=first).scheduler_waiter()
    assert waiter(0.1) is False  # subscribes
    RedisEvents(redis_url, namespace=second).wake_scheduler()
    assert waiter(0.5) is False
    RedisEvents(redis_url, namespace=first).wake_scheduler()
    assert waiter(5.0) is True

    queue = worker_queue(f"w-{uuid.uuid4().hex[:6]}")
    app = create_celery(Settings(broker_url=redis_url, redis_namespace=first))
    try:
        app.send_task("farm.render", args=["job", 1], queue=queue)
    finally:
        app.close()
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.llen(first + queue) == 1
        assert client.llen(queue) == 0 and client.llen(second + queue) == 0
    finally:
        client.delete(first + queue)
        client.close()

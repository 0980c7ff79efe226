"""The embedded broker never hands a consumer part of a file (issue 17).

The races are made deterministic: a write is split in two with the consumer
polling in between, or a second process binds just before the first takes its
lock. Each is also run against kombu's stock transport, which must lose: that
shows the interleaving really happens (and if kombu fixes its transport, those
tests fail and farm/workers/fs_transport.py can go).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import sys
from queue import Empty

import pytest
from kombu.transport import filesystem as kombu_fs

from farm.settings import Settings
from farm.workers import fs_transport
from farm.workers.celery_app import create_celery, worker_queue

OURS = "farm.workers.fs_transport:Transport"
STOCK = "kombu.transport.filesystem:Transport"
QUEUE = worker_queue("local-cpu")
PAYLOAD = {"body": "x" * 4000, "headers": {"task": "farm.render_job"}, "properties": {}}


@pytest.fixture()
def settings(tmp_path):
    return Settings(home=tmp_path / "home", database_url=None, broker_url=None, s3_endpoint=None)


@pytest.fixture()
def app(settings):
    app = create_celery(settings)  # makes the broker folders, sets the transport options
    yield app
    app.close()


def channel(app, transport):
    """A channel of its own connection, as another process would have."""
    return app.connection_for_write(transport=transport).default_channel


class SplitWrites:
    """A file whose every write lands in two halves, ``between()`` running after the first."""

    def __init__(self, f, between) -> None:
        self._f = f
        self._between = between

    def write(self, data) -> int:
        half = len(data) // 2
        self._f.write(data[:half])
        self._f.flush()  # the first half is in the file, not in a buffer
        self._between()
        self._f.write(data[half:])
        return len(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


@contextlib.contextmanager
def writes_split_in_two(monkeypatch, channel_cls, between):
    """Split every file write made by the module that defines ``channel_cls._put``."""
    module = sys.modules[channel_cls._put.__module__]

    def open_splitting(path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        return SplitWrites(f, between) if "w" in mode else f

    monkeypatch.setattr(module, "open", open_splitting, raising=False)
    yield
    monkeypatch.delattr(module, "open")


def poll(consumer):
    try:
        return consumer._get(QUEUE)
    except Empty:
        return None


def put_with_a_poll_midway(monkeypatch, app, transport) -> tuple[list, object]:
    """Put PAYLOAD while a consumer polls halfway through the write; return
    what that poll got and what a poll after the put gets."""
    producer, consumer = channel(app, transport), channel(app, transport)
    midway: list = []
    with writes_split_in_two(monkeypatch, type(producer), lambda: midway.append(poll(consumer))):
        producer._put(QUEUE, PAYLOAD)
    assert len(midway) == 1, "the consumer did not poll during the write"
    return midway, poll(consumer)


def test_a_poll_during_a_put_gets_nothing_and_the_next_the_whole_message(monkeypatch, app, settings):
    midway, after = put_with_a_poll_midway(monkeypatch, app, OURS)
    assert midway == [None]
    assert after == PAYLOAD
    assert os.listdir(settings.broker_folder / "queue") == []  # no temporary file left behind


def test_stock_kombu_hands_a_poll_during_a_put_half_a_message(monkeypatch, app):
    with pytest.raises(json.JSONDecodeError):
        put_with_a_poll_midway(monkeypatch, app, STOCK)


def bind_while_another_binds(monkeypatch, app, transport) -> list[str]:
    """Bind queue a to a new exchange while, just before a takes its lock,
    another process binds queue b; return the queues the table ends with."""
    first, second = channel(app, transport), channel(app, transport)
    real_lock = kombu_fs.lock
    raced: list[bool] = []

    def lock_after_the_other_binds(f, flags):
        if not raced:
            raced.append(True)
            second._queue_bind("farm.x", "b", "", "b")
        real_lock(f, flags)

    monkeypatch.setattr(kombu_fs, "lock", lock_after_the_other_binds)
    first._queue_bind("farm.x", "a", "", "a")
    monkeypatch.setattr(kombu_fs, "lock", real_lock)
    assert raced
    return sorted(entry.queue for entry in first.get_table("farm.x"))


def test_two_processes_binding_a_new_exchange_both_land(monkeypatch, app):
    assert bind_while_another_binds(monkeypatch, app, OURS) == ["a", "b"]


def test_stock_kombu_reads_an_exchange_table_another_process_is_creating(monkeypatch, app):
    # kombu creates the table with open("wb") before locking it: the other
    # binder reads the empty file.
    with pytest.raises(json.JSONDecodeError):
        bind_while_another_binds(monkeypatch, app, STOCK)


def test_a_reader_during_a_table_rewrite_sees_the_old_table(monkeypatch, app):
    writer, reader = channel(app, OURS), channel(app, OURS)
    writer._queue_bind("farm.x", "a", "", "a")
    seen: list = []
    with writes_split_in_two(monkeypatch, fs_transport.Channel, lambda: seen.append(reader.get_table("farm.x"))):
        writer._queue_bind("farm.x", "b", "", "b")
    assert [[entry.queue for entry in table] for table in seen] == [["a"]]
    assert sorted(entry.queue for entry in reader.get_table("farm.x")) == ["a", "b"]
    writer._delete("b", "farm.x", "b", "", "b")
    assert [entry.queue for entry in reader.get_table("farm.x")] == ["a"]


def test_celery_from_create_celery_sends_through_our_transport(monkeypatch, app, settings):
    from farm.workers.tasks import RENDER_TASK

    with app.connection_for_write() as connection:
        assert type(connection.transport) is fs_transport.Transport
    puts: list[str] = []
    real_put = fs_transport.Channel._put

    def recording_put(self, queue, payload, **kwargs):
        puts.append(queue)
        return real_put(self, queue, payload, **kwargs)

    monkeypatch.setattr(fs_transport.Channel, "_put", recording_put)
    app.send_task(RENDER_TASK, args=["job-1", 2], queue=QUEUE, routing_key=QUEUE)
    assert puts == [QUEUE]
    [name] = os.listdir(settings.broker_folder / "queue")
    assert name.endswith(f".{QUEUE}.msg")
    with app.connection_for_read() as connection:
        message = connection.default_channel.basic_get(QUEUE, no_ack=True)
    assert message.headers["task"] == RENDER_TASK
    args, kwargs, _ = message.decode()
    assert args == ["job-1", 2]
    assert os.listdir(settings.broker_folder / "queue") == []

"""kombu's filesystem transport with whole-file writes (the embedded broker).

kombu's ``Channel._put`` creates the message file under its final name and
then writes it, while the consumer lists the folder every poll and moves and
reads any matching file without taking the writer's lock. A consumer that
polls in between reads half a message; in `farm up` that surfaced as
``Unrecoverable error: JSONDecodeError`` in the worker (issue 17). Here a
message is written to a temporary name that no consumer looks at, fsync'd,
and renamed into place: ``os.replace`` is atomic within a folder, so a reader
sees either no file or the whole file.

The exchange tables under the control folder (which queues an exchange
routes to; read on every publish and on fanout) have a related hazard: kombu
creates a table with ``open("wb")`` before locking it, so another process
binding or publishing in that window reads an empty file, and two processes
creating the same table truncate each other's. They are rewritten the same
way, a read-modify-write serialised by a separate lock file (a lock on the
table itself would stay on the old file once it is replaced).

Everything else is kombu's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem as kombu_fs
from kombu.transport import virtual
from kombu.utils.json import dumps

logger = logging.getLogger(__name__)

# Files being written end in this suffix. The consumer's filter (kombu's
# ``_get``, ``_size``, ``_purge``) takes only names whose part after the first
# '.' is exactly '<queue>.msg', which a name ending in '.tmp' never is.
TEMPORARY_SUFFIX = ".tmp"


def write_file_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never a part."""
    temporary = path.with_name(f"{path.name}.{uuid.uuid4().hex}{TEMPORARY_SUFFIX}")
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            # Without it a power cut after the rename can leave an empty file
            # under the final name (the rename may reach the disk first).
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


class Channel(kombu_fs.Channel):
    def _put(self, queue, payload, **kwargs):
        """Put ``payload`` onto ``queue`` as one whole file."""
        # The same name as kombu's: the consumer takes files in name order.
        filename = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        path = Path(self.data_folder_out) / filename
        try:
            write_file_atomically(path, dumps(payload).encode())
        except OSError as exc:
            raise ChannelError(f"Cannot add file {str(path)!r} to directory") from exc

    @contextlib.contextmanager
    def _table_locked(self, exchange) -> Iterator[Path]:
        """Hold the exchange's table for a read-modify-write; yields the table's path."""
        table = self._exchange_file(exchange)
        self.control_folder.mkdir(exist_ok=True)
        # Opened for append so that it is created without truncating it, and
        # never removed: removing a lock file lets two writers hold two locks.
        try:
            f = open(table.with_name(table.name + ".lock"), "ab")
        except OSError as exc:
            raise ChannelError(f"Cannot open {table}") from exc
        with f:
            kombu_fs.lock(f, kombu_fs.LOCK_EX)
            try:
                yield table
            finally:
                kombu_fs.unlock(f)

    def _write_table(self, table: Path, queues) -> None:
        try:
            write_file_atomically(table, dumps(queues).encode())
        except OSError as exc:
            raise ChannelError(f"Cannot write {table}") from exc

    def _queue_bind(self, exchange, routing_key, pattern, queue):
        entry = kombu_fs.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        with self._table_locked(exchange) as table:
            queues = self.get_table(exchange)
            if entry not in queues:
                # kombu puts a new binding first; kept for the same routing order.
                self._write_table(table, [entry, *queues])

    def _delete(self, queue, exchange, routing_key, pattern, *args, **kwargs):
        # kombu's filesystem _delete rewrites the table in place; skip it and
        # purge the queue as the virtual channel does.
        virtual.Channel._delete(self, queue, exchange, routing_key, pattern, *args, **kwargs)
        entry = kombu_fs.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        with self._table_locked(exchange) as table:
            queues = self.get_table(exchange)
            if entry in queues:
                queues.remove(entry)
                self._write_table(table, queues)


class Transport(kombu_fs.Transport):
    Channel = Channel

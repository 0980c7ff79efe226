"""Engine and unit of work.

Repository functions add and flush; a service call owns exactly one
transaction through :meth:`Database.transaction`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from sqlalchemy import Engine, create_engine, event, exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from farm.retry import call_with_retry

logger = logging.getLogger(__name__)

T = TypeVar("T")
# A connection attempt to a server that is down but whose host answers fails
# at once; one whose host is gone must not hang a worker for the OS timeout.
CONNECT_TIMEOUT_S = 5


def classify_database_error(exc: BaseException) -> str | None:
    """Transient: the server is unreachable, restarting, or dropped the
    connection (pool_pre_ping replaces such connections on the next checkout)."""
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError, sa_exc.TimeoutError)):
        return "transient"
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return "transient"
    return None


def describe_database_error(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(orig).__name__


def make_engine(url: str, **kwargs) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            # WAL lets the api read while a worker writes; foreign keys are off
            # by default in SQLite.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("connect_args", {"connect_timeout": CONNECT_TIMEOUT_S})
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    return create_engine(url, **kwargs)


class Database:
    """An engine and its session factory, bound once by an app or process."""

    def __init__(self, url: str, **engine_kwargs) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def session(self) -> Session:
        return self._sessions()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def retrying(self, work: Callable[[Session], T], *, what: str, budget_s: float) -> T:
        """Run ``work`` in a transaction of its own, again in a fresh one after
        a transient database error, for at most ``budget_s`` seconds.

        ``work`` must be safe to run again: a dropped COMMIT may have landed,
        so it should find out (fenced writes do) rather than assume."""

        def attempt() -> T:
            with self.transaction() as session:
                return work(session)

        return call_with_retry(attempt, service="database", what=what, budget_s=budget_s,
                               classify=classify_database_error, explain=describe_database_error)

    def dispose(self) -> None:
        self.engine.dispose()


def upgrade_database(url: str, revision: str = "head") -> None:
    """Run the Alembic migrations up to ``revision``."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def schema_heads(url: str) -> tuple[set[str], set[str]]:
    """The revisions the database is at, and the heads of this farm's migrations."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    wanted = set(ScriptDirectory.from_config(alembic_config(url)).get_heads())
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    finally:
        engine.dispose()
    return current, wanted


def wait_for_schema(url: str, timeout_s: float, poll_s: float = 2.0) -> None:
    """Return once the database is at this farm's migration heads, so a new
    version's processes start only after its migrations ran (a Kubernetes
    initContainer waiting for the migration Job). Database errors count as
    "not yet" until ``timeout_s``; then :class:`SchemaNotCurrentError` says
    where the database is."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            current, wanted = schema_heads(url)
            if current == wanted:
                return
            where = f"the database is at {', '.join(sorted(current)) or 'no revision'}, this farm needs {', '.join(sorted(wanted))}"
        except sa_exc.SQLAlchemyError as exc:
            where = f"the database cannot be read ({describe_database_error(exc)})"
        if time.monotonic() >= deadline:
            raise SchemaNotCurrentError(f"{where} after {timeout_s:g}s; run 'farm db upgrade'")
        logger.info("waiting for the schema: %s", where)
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


class SchemaNotCurrentError(Exception):
    """The database did not reach this farm's migration heads in time."""


def downgrade_database(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def alembic_config(url: str):
    from alembic.config import Config

    import migrations

    folder = Path(migrations.__file__).parent
    config = Config()
    config.set_main_option("script_location", str(folder))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config

"""Database.retrying: a unit of work in a fresh transaction per try, through
a real outage (a server that refuses connections) and a dropped connection."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from farm.db import Database
from farm.localcluster import free_port
from farm.models import User
from farm.retry import ServiceUnavailableError


def test_a_refused_connection_is_retried_for_the_budget_then_unavailable():
    db = Database(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/farm")
    with pytest.raises(ServiceUnavailableError) as raised:
        db.retrying(lambda session: session.execute(select(1)).scalar(), what="read", budget_s=0.5)
    assert raised.value.service == "database" and "Connection refused" in str(raised.value)


def test_each_try_runs_in_a_fresh_transaction_and_only_the_last_commits(sqlite_settings):
    db = Database(sqlite_settings.resolved_database_url)
    tries = []

    def work(session):
        tries.append(1)
        session.add(User(name=f"try-{len(tries)}", role="member"))
        session.flush()
        if len(tries) < 3:
            raise OperationalError("INSERT", {}, Exception("server closed the connection unexpectedly"))
        return len(tries)

    assert db.retrying(work, what="add a user", budget_s=10) == 3
    with db.session() as session:
        assert session.execute(select(User.name)).scalars().all() == ["try-3"]

"""`farm up`'s FARM_HOME across restarts: the admin token stays while it is
valid, and the previous run's worker is retired before the scheduler looks."""

from __future__ import annotations

import stat

from sqlalchemy import select

from farm import embedded
from farm.auth import create_user, revoke_tokens, user_for_token
from farm.context import build_context
from farm.models import Job, User, Worker, utcnow
from tests.support.factories import make_job


def admin_token(settings) -> str:
    ctx = build_context(settings)
    with ctx.db.transaction() as session:
        admin = session.execute(select(User).where(User.name == "admin")).scalar_one_or_none()
        if admin is None:
            admin, _ = create_user(session, "admin", admin=True)
        return embedded.keep_admin_token(session, admin, embedded.token_path(settings))


def test_the_saved_token_is_reused_until_revoked_or_missing(sqlite_settings):
    path = embedded.token_path(sqlite_settings)
    first = admin_token(sqlite_settings)
    assert path.read_text().strip() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert admin_token(sqlite_settings) == first  # a restart

    ctx = build_context(sqlite_settings)
    with ctx.db.transaction() as session:
        admin = session.execute(select(User).where(User.name == "admin")).scalar_one()
        revoke_tokens(session, admin, embedded.TOKEN_NAME)
    second = admin_token(sqlite_settings)
    assert second != first and path.read_text().strip() == second

    path.unlink()
    third = admin_token(sqlite_settings)
    assert third != second and stat.S_IMODE(path.stat().st_mode) == 0o600
    with ctx.db.transaction() as session:
        assert user_for_token(session, second) is None  # the lost file's token is revoked, not left valid
        assert user_for_token(session, third) is not None


def test_a_token_of_another_user_in_the_file_is_replaced(sqlite_settings):
    ctx = build_context(sqlite_settings)
    with ctx.db.transaction() as session:
        _, member_token = create_user(session, "ana")
    path = embedded.token_path(sqlite_settings)
    path.write_text(member_token + "\n")
    path.chmod(0o644)
    token = admin_token(sqlite_settings)
    assert token != member_token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_previous_runs_worker_is_marked_offline_and_its_jobs_requeued(sqlite_settings):
    ctx = build_context(sqlite_settings)
    job_id = make_job(ctx, status="running", worker_id=embedded.WORKER_NAME, attempt=1, worker_instance="old")
    with ctx.db.transaction() as session:
        session.add(Worker(id=embedded.WORKER_NAME, host="h", queue="q", device="cpu", device_name="cpu", vram_total_gb=8,
                           vram_free_gb=8, max_pixels=1 << 20, loaded_models=[{"id": "m-sd", "vram_gb": 1}],
                           instance_id="old", last_heartbeat_at=utcnow()))
    with ctx.db.transaction() as session:
        embedded.retire_previous_worker(session, max_attempts=3)
    with ctx.db.session() as session:
        worker = session.get(Worker, embedded.WORKER_NAME)
        job = session.get(Job, job_id)
        assert (worker.state, worker.loaded_models) == ("offline", [])
        assert (job.status, job.attempt, job.worker_id) == ("queued", 2, None)

"""Run one job through the worker's job path in-process: submit, assign, execute."""

from __future__ import annotations

from farm import states
from farm.models import Job, Output
from farm.services import jobs as job_service
from farm.workers import render as render_module


def submit_and_execute(ctx, user, runtime, request: dict) -> tuple[Job, Output, bytes]:
    """The job, its first output and that output's bytes; fails the test unless the job succeeded."""
    job = job_service.submit_job(ctx, user, request)
    with ctx.db.transaction() as session:
        states.assign_job(session, job.id, 1, runtime.name, 30)
    outcome = render_module.execute_job(runtime, job.id, 1)
    with ctx.db.session() as session:
        row = session.get(Job, job.id)
        assert outcome == "succeeded", row.error
        output = row.outputs[0]
        session.expunge_all()
    return job, output, ctx.storage.get(output.object_key)


def cpu_farm_context(request, sqlite_settings, database: str):
    """A CPU worker's context on the embedded SQLite database, or (``database`` "postgres")
    on the run's shared Postgres database; give the rows it makes unique names there."""
    from farm.context import build_context
    from farm.events import LocalEvents

    settings = sqlite_settings.model_copy(update={"device": "cpu", "worker_vram_gb": 4.0})
    if database == "postgres":
        settings = settings.model_copy(update={"database_url": request.getfixturevalue("migrated_postgres_url")})
    return build_context(settings, events=LocalEvents())

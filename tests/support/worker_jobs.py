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

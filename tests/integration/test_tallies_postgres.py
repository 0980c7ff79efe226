"""The campaign tallies on PostgreSQL: the tests of tests/unit/test_tallies.py
(RETURNING the previous status, the bucket upsert), and many transactions
moving one campaign's jobs at once, as a scheduler, workers and a reaper do:
none deadlocks and the tallies equal a recount."""

from __future__ import annotations

import random
import threading

import pytest
from sqlalchemy import select

from farm.models import Job, JobStatus
from tests.integration.test_campaign_numbers_postgres import sqlite_settings  # noqa: F401  (a fresh Postgres database)
from tests.unit.test_tallies import (  # noqa: F401  (collected here again)
    assert_tallies_match_a_recount, ctx, random_step, submit, test_a_rolled_back_transition_changes_no_tally,
    test_finished_work_lands_in_its_bucket_and_the_janitor_prunes_old_ones, test_submission_tallies_every_status_and_the_queued_work,
    test_tallies_after_random_transitions_equal_a_recount)


def test_concurrent_transitions_keep_the_tallies_without_deadlock(ctx):
    campaign_id = submit(ctx, 40)
    with ctx.db.session() as session:
        job_ids = session.execute(select(Job.id).where(Job.campaign_id == campaign_id)).scalars().all()
    errors: list[BaseException] = []

    def mover(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(40):
                # Each transaction moves a few jobs (locking them in id order, so
                # only the tallies, written at commit, could make a cycle).
                try:
                    with ctx.db.transaction() as session:
                        for job_id in sorted(rng.sample(job_ids, 3)):
                            job = session.get(Job, job_id, with_for_update=True)
                            if job.status not in (JobStatus.succeeded.value, JobStatus.canceled.value):
                                random_step(session, rng, job)
                except Exception as exc:  # a lost race on a job row is the state machine refusing, not a tally fault
                    from farm.states import JobStateError

                    if not isinstance(exc, JobStateError):
                        raise
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=mover, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    kept = assert_tallies_match_a_recount(ctx, campaign_id)
    assert sum(row[0] for row in kept[0].values()) == 40
    assert kept[0][JobStatus.queued.value][0] < 40  # the movers did move jobs

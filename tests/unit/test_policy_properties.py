"""Properties of the placement policy on random snapshots (hypothesis)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farm.scheduler.policy import QueuedJob, Share, Snapshot, WorkerState, place, working_memory_gb

MODELS = {"sd-a": (2.0, "sd"), "sd-b": (2.5, "sd"), "xl-a": (7.0, "sdxl"), "xl-b": (7.5, "sdxl"), "flux": (24.0, "flux")}
SIDES = [256, 512, 768, 1024, 1536]


@st.composite
def snapshots(draw, copy_plans=False, limits=False):
    n_workers = draw(st.integers(0, 6))
    workers = []
    for i in range(n_workers):
        vram = draw(st.sampled_from([4.0, 8.0, 12.0, 24.0, 48.0]))
        families = frozenset(draw(st.lists(st.sampled_from(["sd", "sdxl", "flux"]), min_size=1, max_size=3)))
        held: dict[str, float] = {}
        for model in draw(st.lists(st.sampled_from(sorted(MODELS)), max_size=3, unique=True)):
            if sum(held.values()) + MODELS[model][0] <= vram:
                held[model] = MODELS[model][0]
        capacity = draw(st.integers(1, 2))
        busy = draw(st.integers(0, capacity))
        in_use = frozenset(draw(st.lists(st.sampled_from(sorted(held)), max_size=busy, unique=True))) if held and busy else frozenset()
        serves = draw(st.none() | st.frozensets(st.sampled_from(sorted(MODELS)), min_size=1))
        workers.append(WorkerState(
            id=f"w{i}", families=families, max_pixels=draw(st.sampled_from([512 * 512, 1024 * 1024, 2048 * 2048])),
            vram_total_gb=vram, vram_free_gb=vram - sum(held.values()), loaded_models=held, serves_models=serves,
            busy=busy, capacity=capacity, draining=draw(st.booleans()), speed=draw(st.sampled_from([0.5, 1.0, 2.0])),
            in_use=in_use,
            # The host tier changes prices only: the invariants hold with any.
            host_models=frozenset(draw(st.lists(st.sampled_from(sorted(MODELS)), max_size=2, unique=True))) - set(held),
            h2d_gbps=draw(st.sampled_from([1.0, 12.0, 25.0])), ram_cache_gb=draw(st.sampled_from([0.0, 8.0, 64.0])),
        ))
    # With limits, users 1-4 belong to team 10, team 20 or none, and users and
    # teams have running jobs and max_concurrent_jobs limits (possibly already passed).
    team_of = {u: draw(st.sampled_from([None, 10, 20])) if limits else None for u in range(1, 5)}
    jobs = []
    for i in range(draw(st.integers(0, 25))):
        model = draw(st.sampled_from(sorted(MODELS)))
        side = draw(st.sampled_from(SIDES))
        excluded = frozenset(draw(st.lists(st.sampled_from([w.id for w in workers] or ["w0"]), max_size=2)))
        user = draw(st.integers(1, 4))
        jobs.append(QueuedJob(
            id=i, attempt=1, user_id=user, team_id=team_of[user], model_id=model, family=MODELS[model][1],
            model_gb=MODELS[model][0], width=side, height=side, priority=draw(st.integers(-1, 1)),
            queued_at=float(draw(st.integers(0, 2000))), excluded_workers=excluded,
            # Some jobs are due (some already overdue), some in campaigns whose remaining work the snapshot gives.
            deadline=draw(st.none() | st.floats(2000.0, 4000.0)), campaign_id=draw(st.none() | st.sampled_from(["c1", "c2"])),
        ))
    jobs.sort(key=lambda j: (-j.priority, j.queued_at))
    running = st.integers(0, 3) if limits else st.just(0)
    max_running = st.none() | st.integers(0, 3) if limits else st.none()
    shares = {u: Share(weight=draw(st.sampled_from([0.5, 1.0, 3.0])), usage_s=float(draw(st.integers(0, 5000))),
                       running=draw(running), max_running=draw(max_running))
              for u in range(1, 5)}
    teams = {t: Share(weight=draw(st.sampled_from([0.5, 1.0, 3.0])), usage_s=float(draw(st.integers(0, 5000))),
                      running=draw(running), max_running=draw(max_running))
             for t in (10, 20)} if limits else {}
    # A copy plan only narrows where copies go (bench/scheduler_plan.py); the invariants hold with any.
    plan = draw(st.none() | st.frozensets(st.tuples(st.sampled_from([w.id for w in workers] or ["w0"]),
                                                    st.sampled_from(sorted(MODELS))))) if copy_plans else None
    campaign_work = {c: float(draw(st.integers(0, 5000))) for c in ("c1", "c2") if draw(st.booleans())}
    return Snapshot(jobs=jobs, workers=workers, now=2500.0, shares=shares, team_shares=teams, copy_plan=plan,
                    campaign_work_s=campaign_work)


def can_run(job: QueuedJob, worker: WorkerState) -> bool:
    return (job.family in worker.families and job.width * job.height <= worker.max_pixels
            and (worker.serves_models is None or job.model_id in worker.serves_models)
            and worker.id not in job.excluded_workers)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots(copy_plans=True, limits=True))
def test_policy_invariants(snapshot):
    decisions = place(snapshot)
    jobs = {j.id: j for j in snapshot.jobs}
    workers = {w.id: w for w in snapshot.workers}

    # No job assigned twice, and none both assigned and reported unplaceable.
    ids = [a.job_id for a in decisions.assignments]
    assert len(ids) == len(set(ids))
    assert not set(ids) & set(decisions.unplaceable)

    per_worker: dict[str, list] = {}
    for a in decisions.assignments:
        per_worker.setdefault(a.worker_id, []).append(a)
    for worker_id, assignments in per_worker.items():
        worker = workers[worker_id]
        # Only free slots of workers that take work.
        assert not worker.draining
        assert len(assignments) <= worker.capacity - worker.busy
        held = dict(worker.loaded_models)
        for a in assignments:
            job = jobs[a.job_id]
            # Never placed where it cannot run.
            assert can_run(job, worker), (job, worker)
            # Evictions never touch a model in use, nor the job's own model.
            assert not set(a.evict) & worker.in_use
            assert job.model_id not in a.evict
            for model in a.evict:
                held.pop(model)
            held.setdefault(job.model_id, job.model_gb)
            # No over-commit: what is held plus this job's working memory fits.
            assert sum(held.values()) + working_memory_gb(job.width, job.height) <= worker.vram_total_gb + 1e-6

    # Concurrency quotas: what runs plus what is assigned now never passes a
    # user's limit nor their team's (one already passed gets nothing more).
    started_users: dict[int, int] = {}
    started_teams: dict[int, int] = {}
    for a in decisions.assignments:
        job = jobs[a.job_id]
        started_users[job.user_id] = started_users.get(job.user_id, 0) + 1
        if job.team_id is not None:
            started_teams[job.team_id] = started_teams.get(job.team_id, 0) + 1
    for owners, started in ((snapshot.shares, started_users), (snapshot.team_shares, started_teams)):
        for owner, count in started.items():
            share = owners.get(owner)
            if share is not None and share.max_running is not None:
                assert count <= max(share.max_running - share.running, 0), (owner, share, count)

    for preload in decisions.preloads:
        worker = workers[preload.worker_id]
        assert preload.worker_id not in per_worker and not worker.draining
        assert not set(preload.evict) & worker.in_use

    # A job reported unplaceable truly fits no worker.
    for job_id in decisions.unplaceable:
        job = jobs[job_id]
        assert not any(can_run(job, w) and job.model_gb + working_memory_gb(job.width, job.height) <= w.vram_total_gb
                       for w in snapshot.workers)


@settings(max_examples=200, deadline=None)
@given(snapshots())
def test_idle_capacity_is_not_wasted(snapshot):
    """If a free worker could take some queued job right now without evicting
    a model in use, the policy assigns at least one job."""
    decisions = place(snapshot)
    free = [w for w in snapshot.workers if not w.draining and w.busy < w.capacity]
    runnable = [j for j in snapshot.jobs if j.id not in decisions.unplaceable
                and any(can_run(j, w) and j.model_gb + working_memory_gb(j.width, j.height)
                        <= w.vram_total_gb - sum(gb for m, gb in w.loaded_models.items() if m in w.in_use) for w in free)]
    if runnable:
        assert decisions.assignments

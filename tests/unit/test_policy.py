"""The foundation's placement policy on small hand-made snapshots."""

from __future__ import annotations

import dataclasses
import uuid

from farm.scheduler import policy
from farm.scheduler.policy import AGE_WEIGHT, BURST_BACKLOG_S, CLASS_AGE_S, COPY_DEMAND_SHARE, COPY_RATE_WINDOW_S, MIN_COPY_BACKLOG_S, REBALANCE_FACTOR, REBALANCE_MARGIN_S, REPLICATE_GAIN_S, QueuedJob, Share, Snapshot, WorkerState, patience_s, place


def job(model="a", *, t=0.0, priority=0, gb=2.0, family="sd", size=512, excluded=(), user=1, est=5.0):
    return QueuedJob(id=uuid.uuid4(), attempt=1, user_id=user, model_id=model, family=family, model_gb=gb, width=size,
                     height=size, priority=priority, queued_at=t, excluded_workers=frozenset(excluded), est_seconds=est)


def queue_order(*jobs):
    """Snapshots list jobs as the scheduler's query does: priority, then age."""
    return sorted(jobs, key=lambda j: (-j.priority, j.queued_at))


def worker(wid, *, vram=8.0, free=None, held=None, busy=0, serves=None, families=("sd", "sdxl"), draining=False):
    held = held or {}
    return WorkerState(id=wid, families=frozenset(families), max_pixels=2048 * 2048, vram_total_gb=vram,
                       vram_free_gb=free if free is not None else vram - sum(held.values()), loaded_models=held,
                       serves_models=frozenset(serves) if serves is not None else None, busy=busy, draining=draining)


def assigned(decisions):
    return {a.job_id: a.worker_id for a in decisions.assignments}


def test_prefers_the_worker_that_holds_the_model():
    j = job("b")
    d = place(Snapshot([j], [worker("w1", held={"a": 2.0}), worker("w2", held={"b": 2.0})], now=0))
    assert assigned(d) == {j.id: "w2"}


def test_otherwise_the_best_fit_keeps_big_gpus_for_big_models():
    small_model, big_model = job("c", t=0), job("x", gb=20.0, t=1)
    workers = [worker("small", vram=6.0), worker("big", vram=24.0)]
    assert assigned(place(Snapshot([small_model], workers, now=0))) == {small_model.id: "small"}
    d = place(Snapshot([small_model, big_model], workers, now=2))
    assert assigned(d) == {small_model.id: "small", big_model.id: "big"}


def test_one_job_per_free_slot_and_oldest_first():
    old, new = job(t=1.0), job(t=2.0)
    d = place(Snapshot(queue_order(new, old), [worker("w1")], now=3))
    assert assigned(d) == {old.id: "w1"}


def test_priority_before_age():
    old, urgent = job(t=1.0), job(t=2.0, priority=5)
    d = place(Snapshot(queue_order(old, urgent), [worker("w1")], now=3))
    assert assigned(d) == {urgent.id: "w1"}


def test_busy_and_draining_workers_get_nothing():
    j = job()
    assert place(Snapshot([j], [worker("w1", busy=1), worker("w2", draining=True)], now=0)).assignments == []


def test_unplaceable_jobs_are_reported_with_reasons():
    # A model id has one family and one size (the registry's), so each case is its own model.
    too_big, wrong_family, not_served = job("huge", gb=30.0), job("flux-1", family="flux"), job("z")
    d = place(Snapshot([too_big, wrong_family, not_served],
                       [worker("w1", vram=16.0, serves={"huge", "flux-1"}, families=("sd",))], now=0))
    assert d.assignments == []
    assert "16.0 GB of VRAM" in d.unplaceable[too_big.id]
    assert "not flux" in d.unplaceable[wrong_family.id]
    assert "does not serve model z" in d.unplaceable[not_served.id]


def test_no_worker_at_all():
    j = job()
    assert place(Snapshot([j], [], now=0)).assignments == []


def test_excluded_worker_is_skipped():
    j = job(excluded={"w1"})
    d = place(Snapshot([j], [worker("w1", vram=80.0), worker("w2", vram=8.0)], now=0))
    assert assigned(d) == {j.id: "w2"}
    alone = place(Snapshot([j], [worker("w1")], now=0))
    assert "ran out of memory" in alone.unplaceable[j.id]


def test_working_memory_counts_toward_fit():
    # 7 GB of weights fit in 8 GB, but not with a 2048x2048 render's activations.
    j = job(gb=7.0, size=2048)
    d = place(Snapshot([j], [worker("w1", vram=8.0)], now=0))
    assert d.assignments == [] and "needs" in d.unplaceable[j.id]


def test_same_model_jobs_are_grouped_on_the_worker_that_holds_it():
    # w1 holds a; w2 holds b. The queue is a, a, b, a: each goes where its model is.
    jobs = [job("a", t=1), job("a", t=2), job("b", t=3), job("a", t=4)]
    workers = [worker("w1", held={"a": 2.0}), worker("w2", held={"b": 2.0})]
    d = place(Snapshot(jobs, workers, now=5))
    assert assigned(d) == {jobs[0].id: "w1", jobs[2].id: "w2"}
    assert d.evictions == []


def test_free_worker_takes_held_model_work_while_the_other_job_is_patient():
    # The oldest job wants c, which only a busy GPU holds; a free worker holds a, with a-jobs waiting.
    c_job, a_job = job("c", t=0.0), job("a", t=1.0)
    c_holder = worker("w0", held={"c": 2.0}, busy=1)
    d = place(Snapshot([c_job, a_job], [c_holder, worker("w1", held={"a": 2.0})], now=2.0))
    assert assigned(d) == {a_job.id: "w1"}


def test_impatient_job_gets_its_load():
    c_job, a_job = job("c", t=0.0), job("a", t=1.0)
    now = patience_s(c_job) + 1
    c_holder = worker("w0", held={"c": 2.0}, busy=1)
    d = place(Snapshot([c_job, a_job], [c_holder, worker("w1", held={"a": 2.0})], now=now))
    assert assigned(d) == {c_job.id: "w1"}


def test_evictions_free_exactly_enough_and_prefer_models_nobody_waits_for():
    # 8 GB worker holds y (3 GB, jobs wait for it on a busy worker) and x (3 GB, nobody waits):
    # loading z (3 GB + working memory) must evict x alone.
    z_job = job("z", gb=3.0, t=0.0)
    y_waiting = job("y", gb=3.0, t=1.0)
    target = worker("w1", vram=8.0, held={"y": 3.0, "x": 3.0})
    busy_holder = worker("w2", vram=8.0, held={"y": 3.0}, busy=1)
    d = place(Snapshot([z_job, y_waiting], [target, busy_holder], now=1000.0))
    assert [(a.job_id, a.worker_id, a.evict) for a in d.assignments] == [(z_job.id, "w1", ("x",))]


def test_never_overcommits_and_never_evicts_models_in_use():
    # 8 GB, 1 free slot of 2; "a" is in use by the running job, "b" free to evict.
    w = WorkerState(id="w", families=frozenset({"sd"}), max_pixels=10**7, vram_total_gb=8.0, vram_free_gb=1.0,
                    loaded_models={"a": 4.0, "b": 3.0}, serves_models=None, busy=1, capacity=2, in_use=frozenset({"a"}))
    j = job("c", gb=3.0, t=0.0)  # 3 GB + 0.8 GB working memory fits in the 4 GB b leaves
    d = place(Snapshot([j], [w], now=1000.0))
    [a] = d.assignments
    assert a.evict == ("b",)
    too_big = job("d", gb=4.5, t=0.0)  # 4.5 + working memory cannot fit beside the 4 GB in use
    assert place(Snapshot([too_big], [w], now=1000.0)).assignments == []


def test_fair_share_light_user_beats_heavy_campaign_but_the_campaign_does_not_starve():
    shares = {1: Share(weight=1.0, usage_s=3000.0), 2: Share(weight=1.0, usage_s=0.0)}
    # 3,000 GPU-seconds of recent use weigh as much as 3000 / AGE_WEIGHT
    # seconds of waiting: a campaign head that has waited less goes after the
    # light user's fresh image, one that has waited much longer goes first.
    offset = 3000.0 / AGE_WEIGHT
    for head_wait, first in ((0.5 * offset, "light"), (2.0 * offset, "heavy")):
        heavy = [job("a", t=float(i), user=1) for i in range(100)]
        light = job("a", t=head_wait - 1.0, user=2)
        d = place(Snapshot(heavy + [light], [worker("w1", held={"a": 2.0})], now=head_wait, shares=shares))
        assert assigned(d) == {(light if first == "light" else heavy[0]).id: "w1"}, head_wait


def test_weights_scale_shares():
    a, b = job("a", t=0, user=1), job("a", t=0.5, user=2)
    shares = {1: Share(weight=4.0, usage_s=400.0), 2: Share(weight=1.0, usage_s=200.0)}
    d = place(Snapshot([a, b], [worker("w1", held={"a": 2.0})], now=1.0, shares=shares))
    assert assigned(d) == {a.id: "w1"}  # 400/4 = 100 < 200/1


def test_slots_are_spread_across_users_in_one_pass():
    # User 2's job is half a second younger than user 1's second one, but the
    # minute of GPU time user 1 gets from the first slot outweighs that.
    jobs = [job("a", t=float(i), user=1, est=60.0) for i in range(5)] + [job("a", t=1.5, user=2, est=60.0)]
    workers = [worker(f"w{i}", held={"a": 2.0}) for i in range(2)]
    d = place(Snapshot(jobs, workers, now=11.0))
    assert {jobs[0].id, jobs[5].id} == set(assigned(d))


def test_ageing_lifts_a_low_priority_job_over_time():
    low = job("a", t=0.0, priority=0, user=2)
    high = job("a", t=CLASS_AGE_S * 2, priority=1, user=1)
    w = [worker("w1", held={"a": 2.0})]
    assert assigned(place(Snapshot([high, low], w, now=CLASS_AGE_S * 2)))== {low.id: "w1"}
    fresh_low = job("a", t=CLASS_AGE_S * 2, priority=0, user=2)
    assert assigned(place(Snapshot([high, fresh_low], w, now=CLASS_AGE_S * 2))) == {high.id: "w1"}


def test_idle_worker_preloads_the_most_wanted_model_nobody_holds():
    # The only user is at their concurrency quota, so nothing is assigned; the
    # idle worker loads the model most of the waiting jobs need (c over d).
    jobs = [job("c", t=float(i)) for i in range(3)] + [job("d", t=5.0)]
    shares = {1: Share(running=1, max_running=1)}
    busy = worker("w1", vram=24.0, busy=1)
    idle = worker("w2", vram=8.0, held={"old": 3.0})
    d = place(Snapshot(jobs, [busy, idle], now=6.0, shares=shares))
    assert d.assignments == []
    assert [(p.worker_id, p.model_id) for p in d.preloads] == [("w2", "c")]
    # A model somebody waits for is never evicted to preload another.
    wanted = worker("w3", vram=4.0, held={"d": 2.0})
    d2 = place(Snapshot(jobs, [busy, wanted], now=6.0, shares=shares))
    assert d2.preloads == []
    # Nothing preloads where the worker cannot serve the model.
    d3 = place(Snapshot(jobs, [busy, worker("w4", vram=8.0, serves={"e"})], now=6.0, shares=shares))
    assert d3.preloads == []


def test_oom_retry_goes_to_the_worker_with_most_free_vram():
    j = job("a", excluded={"small"}, t=0)
    ws = [worker("small", vram=8.0), worker("mid", vram=16.0), worker("big", vram=48.0)]
    assert assigned(place(Snapshot([j], ws, now=100))) == {j.id: "big"}


def test_a_too_large_image_is_unplaceable_but_its_model_is_not():
    small, huge = job("a", size=512, t=0), job("a", size=4096, t=1)
    d = place(Snapshot([huge, small], [worker("w1", vram=8.0, held={"a": 2.0})], now=2))
    assert assigned(d) == {small.id: "w1"}
    assert "needs" in d.unplaceable[huge.id] or "pixels" in d.unplaceable[huge.id]


def test_team_shares_weigh_a_whole_team():
    # Team 1 (three busy members) has used much more than team 2; a member of
    # team 2 goes first even though each user's own use is equal.
    jobs = [QueuedJob(id=f"t1-{i}", attempt=1, user_id=i, model_id="a", family="sd", model_gb=2.0, width=512,
                      height=512, priority=0, queued_at=float(i), team_id=1) for i in range(1, 4)]
    jobs.append(QueuedJob(id="t2", attempt=1, user_id=9, model_id="a", family="sd", model_gb=2.0, width=512, height=512,
                          priority=0, queued_at=5.0, team_id=2))
    shares = {u: Share(usage_s=100.0) for u in (1, 2, 3, 9)}
    teams = {1: Share(weight=1.0, usage_s=900.0), 2: Share(weight=1.0, usage_s=100.0)}
    w = [worker("w1", held={"a": 2.0})]
    assert assigned(place(Snapshot(jobs, w, now=6.0, shares=shares, team_shares=teams))) == {"t2": "w1"}
    # Without team shares the oldest job of the equally-used users goes first.
    assert assigned(place(Snapshot(jobs, w, now=6.0, shares=shares))) == {"t1-1": "w1"}


def test_concurrency_quota_caps_a_users_running_jobs():
    jobs = [job("a", t=float(i), user=1) for i in range(4)] + [job("a", t=10.0, user=2)]
    workers = [worker(f"w{i}", held={"a": 2.0}) for i in range(4)]
    shares = {1: Share(running=1, max_running=2)}
    d = place(Snapshot(jobs, workers, now=11.0, shares=shares))
    per_user = [j.user_id for j in jobs if j.id in assigned(d)]
    assert per_user.count(1) == 1 and per_user.count(2) == 1


def fast_worker(wid, *, speed=1.0, load_gbps=2.0, **kwargs):
    base = worker(wid, **kwargs)
    return WorkerState(**{**base.__dict__, "speed": speed, "load_gbps": load_gbps})


def half_busy(wid, *, speed=1.0, **kwargs):
    """A GPU with two render slots, one of them rendering: free, but not idle, so the copy rule weighs a
    copy on it (an idle GPU with no queued work of its own takes one at once). Each slot has half of
    ``speed``, so that the copy rule's arithmetic is that of one GPU of ``speed``."""
    return dataclasses.replace(fast_worker(wid, speed=speed / 2, **kwargs), capacity=2, busy=1)


def test_a_short_queue_waits_for_the_busy_holder_instead_of_loading_a_copy():
    # The holder (speed 1) would clear 2 x 5 s of work in 10 s; a copy on the
    # free slot of a rendering GPU would take 10 * 1/2 = 5 s off, minus a 1 s
    # load: under the gain a copy must bring, so nothing is loaded.
    jobs = [job("a", t=0.0, est=5.0), job("a", t=0.1, est=5.0)]
    holder = fast_worker("holder", held={"a": 2.0}, busy=1)
    d = place(Snapshot(jobs, [holder, half_busy("half")], now=1.0))
    assert d.assignments == [] and d.preloads == []


def test_an_idle_gpu_with_no_queued_work_of_its_own_takes_a_copy_at_once():
    # The short queue above, beside a GPU that renders nothing: it would stay
    # idle while the holder works through the queue, so it loads a copy now.
    # It holds "b", which nobody waits for and which stays (room for both).
    jobs = [job("a", t=0.0, est=5.0), job("a", t=0.1, est=5.0)]
    holder = fast_worker("holder", held={"a": 2.0}, busy=1)
    for idle in (fast_worker("idle"), fast_worker("idle", held={"b": 2.0})):
        d = place(Snapshot(jobs, [holder, idle], now=1.0))
        assert assigned(d) == {jobs[0].id: "idle"} and d.assignments[0].evict == ()
    # With a queued job for "b" it takes that job, not a copy.
    own = job("b", t=0.5, user=2)
    d = place(Snapshot(queue_order(*jobs, own), [holder, fast_worker("idle", held={"b": 2.0})], now=1.0))
    assert assigned(d) == {own.id: "idle"}
    # A copy that would evict a model somebody waits for waits (test_a_copy_evicts_no_waited_for_model_while_the_job_can_wait).
    full = fast_worker("full", vram=4.0, held={"b": 3.0})
    at_quota = job("b", t=0.5, user=2)
    shares = {2: Share(running=1, max_running=1)}
    assert place(Snapshot(queue_order(*jobs, at_quota), [holder, full], now=1.0, shares=shares)).assignments == []


def test_a_long_queue_gets_a_copy_on_the_idle_gpu():
    jobs = [job("a", t=i * 0.1, est=20.0) for i in range(6)]  # 120 s of work behind one holder
    holder = fast_worker("holder", held={"a": 2.0}, busy=1)
    idle = fast_worker("idle")
    d = place(Snapshot(jobs, [holder, idle], now=1.0))
    assert assigned(d) == {jobs[0].id: "idle"}


def test_a_copy_goes_to_the_gpu_where_it_gains_most_not_to_a_slow_one():
    # 60 s of work behind the holder: a speed-1 copy halves it (30 s gained,
    # minus a 1 s load); a speed-0.2 copy gains 60 * 0.2/1.2 - 1 = 9 s.
    jobs = [job("a", t=i * 0.1, est=10.0) for i in range(6)]
    assert 60.0 >= MIN_COPY_BACKLOG_S and 9.0 < REPLICATE_GAIN_S < 29.0
    holder = fast_worker("holder", held={"a": 2.0}, busy=1)
    slow = half_busy("slow", speed=0.2)
    assert place(Snapshot(jobs, [holder, slow], now=1.0)).assignments == []
    d = place(Snapshot(jobs, [holder, slow, half_busy("fast")], now=1.0))
    assert assigned(d) == {jobs[0].id: "fast"}


def test_what_a_copy_must_justify_shrinks_as_the_job_waits():
    jobs = [job("a", t=0.0, est=5.0), job("a", t=0.1, est=5.0)]
    holder = fast_worker("holder", held={"a": 2.0}, busy=1)
    idle = half_busy("idle")
    patience = patience_s(jobs[0])
    # Backlog 10 s, gain 4 s, no recent arrivals: refused early, accepted
    # once the backlog, the gain and the burst backlog (which a queue without
    # recent demand must reach) a copy must show have shrunk below them.
    assert REPLICATE_GAIN_S > 4.0 and MIN_COPY_BACKLOG_S > 10.0 and BURST_BACKLOG_S > 10.0
    assert place(Snapshot(jobs, [holder, idle], now=0.1 * patience)).assignments == []
    left = min(3.5 / REPLICATE_GAIN_S, 9.5 / MIN_COPY_BACKLOG_S, 9.5 / BURST_BACKLOG_S)
    assert assigned(place(Snapshot(jobs, [holder, idle], now=(1.0 - left) * patience))) == {jobs[0].id: "idle"}


def test_no_patience_means_no_wait_for_a_holder(monkeypatch):
    """Patience set to nothing (the sweep's --set MIN_PATIENCE_S=0,PATIENCE_LOADS=0) loads a copy at once,
    where it used to divide by zero."""
    from farm.scheduler import policy

    jobs = [job("a", t=0.0, est=5.0), job("a", t=0.1, est=5.0)]
    holder = fast_worker("holder", held={"a": 2.0}, busy=1)
    idle = half_busy("idle")
    assert place(Snapshot(jobs, [holder, idle], now=1.0)).assignments == []
    monkeypatch.setattr(policy, "MIN_PATIENCE_S", 0.0)
    monkeypatch.setattr(policy, "PATIENCE_LOADS", 0.0)
    assert assigned(place(Snapshot(jobs, [holder, idle], now=1.0))) == {jobs[0].id: "idle"}


def test_a_model_nobody_holds_is_loaded_at_once_where_it_evicts_nothing():
    # User 1's older job is for model b, which no GPU holds: wherever it
    # goes, b must be loaded, so waiting for a holder saves no load. The
    # free GPU has room for b beside a: b goes there now, not user 2's
    # younger job for a (which it would take while the b job waited for a
    # holder that does not exist, for as long as its patience).
    old_b, young_a = job("b", t=0.0, user=1), job("a", t=10.0, user=2)
    roomy = worker("w", vram=24.0, held={"a": 2.0})
    assert assigned(place(Snapshot([old_b, young_a], [roomy], now=20.0))) == {old_b.id: "w"}


def test_a_model_nobody_holds_still_waits_rather_than_evict_a_model_with_queued_work():
    # The same jobs on a GPU with no room for b beside a: loading b would
    # evict a, whose queued job would then need a load of its own. The GPU
    # takes the a job, and the b job waits (within its patience).
    old_b, young_a = job("b", t=0.0, user=1, gb=5.0), job("a", t=10.0, user=2, gb=5.0)
    full = worker("w", vram=10.0, held={"a": 5.0})
    assert assigned(place(Snapshot([old_b, young_a], [full], now=20.0))) == {young_a.id: "w"}


def test_a_short_backlog_waits_for_its_slow_holder_even_when_a_copy_would_gain():
    # A holder of speed 0.5 needs 2 x B s for B s of work; a speed-2 copy
    # would take 80% of that off. Under MIN_COPY_BACKLOG_S of backlog the
    # queue still waits; above it the copy is made.
    holder = fast_worker("holder", held={"a": 2.0}, busy=1, speed=0.5)
    idle = half_busy("idle", speed=2.0)
    short = [job("a", t=0.0, est=0.4 * MIN_COPY_BACKLOG_S)]
    assert place(Snapshot(short, [holder, idle], now=1.0)).assignments == []
    long = [job("a", t=0.0, est=0.8 * MIN_COPY_BACKLOG_S)]
    assert assigned(place(Snapshot(long, [holder, idle], now=1.0))) == {long[0].id: "idle"}


def test_the_tail_of_a_spent_burst_drains_on_its_holder_but_fresh_demand_gets_a_copy():
    # 60 s of work behind one holder; a copy on a rendering GPU's free slot,
    # of the same speed, would gain 29 s. Arrived two minutes ago with nothing since, the queue
    # is the tail of a burst and waits; arrived in the last minute (the same
    # work per second as the holder's speed), it gets the copy; twice the
    # backlog is a burst of its own and gets the copy however old.
    holder = fast_worker("holder", held={"a": 2.0}, busy=1)
    idle = half_busy("idle")
    now = 120.0
    assert now - COPY_RATE_WINDOW_S > 1.0 and 60.0 / COPY_RATE_WINDOW_S >= COPY_DEMAND_SHARE
    left = 1.0 - now / patience_s(job("a"))
    assert MIN_COPY_BACKLOG_S * left <= 60.0 < BURST_BACKLOG_S * left <= 120.0
    spent = [job("a", t=i * 0.1, est=10.0) for i in range(6)]
    assert place(Snapshot(spent, [holder, idle], now=now)).assignments == []
    fresh = [job("a", t=now - 20.0 + i * 0.1, est=10.0) for i in range(6)]
    assert assigned(place(Snapshot(fresh, [holder, idle], now=now))) == {fresh[0].id: "idle"}
    big = [job("a", t=i * 0.1, est=10.0) for i in range(12)]
    assert assigned(place(Snapshot(big, [holder, idle], now=now))) == {big[0].id: "idle"}


def test_a_copy_evicts_no_waited_for_model_while_the_job_can_wait():
    # The free GPU is full of "b", and a job waits for "b" (its owner is at
    # quota for now): loading a copy of "a" there would drop it, and the "b"
    # job would need it back. Within the job's patience the copy waits for a
    # GPU with room; after it, the copy is made.
    jobs = [job("a", t=i * 0.1, est=20.0) for i in range(6)]  # 120 s of work behind one holder
    waits_for_b = job("b", t=0.05, user=2)
    queued = queue_order(*jobs, waits_for_b)
    shares = {2: Share(running=1, max_running=1)}
    holder = fast_worker("holder", held={"a": 2.0}, busy=1)
    full = fast_worker("full", vram=4.0, held={"b": 3.0})
    assert place(Snapshot(queued, [holder, full], now=1.0, shares=shares)).assignments == []
    d = place(Snapshot(queued, [holder, full, fast_worker("roomy")], now=1.0, shares=shares))
    assert assigned(d) == {jobs[0].id: "roomy"}
    late = patience_s(jobs[0]) + 1.0
    d = place(Snapshot(queued, [holder, full], now=late, shares=shares))
    assert assigned(d) == {jobs[0].id: "full"} and d.assignments[0].evict == ("b",)
    # A model nobody holds still evicts to be loaded at once.
    first = [job("c", t=0.0)]
    d = place(Snapshot(first, [full], now=1.0))
    assert assigned(d) == {first[0].id: "full"} and d.assignments[0].evict == ("b",)


def test_a_copy_may_evict_a_model_nobody_waits_for(monkeypatch):
    # The same GPU full of "b", but no job waits for "b": dropping it costs
    # no queued job a load, so the copy rule weighs the copy as one that
    # evicts nothing, and the long queue behind the one holder gets it now.
    jobs = [job("a", t=i * 0.1, est=20.0) for i in range(6)]
    holder = fast_worker("holder", held={"a": 2.0}, busy=1)
    full = fast_worker("full", vram=4.0, held={"b": 3.0})
    d = place(Snapshot(jobs, [holder, full], now=1.0))
    assert assigned(d) == {jobs[0].id: "full"} and d.assignments[0].evict == ("b",)
    # The same on a GPU that renders in one slot of two (not idle: the copy rule, not the idle copy, decides).
    two_slots = half_busy("full", vram=8.0, held={"b": 6.0}, speed=2.0)
    d = place(Snapshot(jobs, [holder, two_slots], now=1.0))
    assert assigned(d) == {jobs[0].id: "full"} and d.assignments[0].evict == ("b",)
    # As the policy was before (COLD_COPY=0), any eviction waits out the job's patience.
    monkeypatch.setattr(policy, "COLD_COPY", 0)
    assert place(Snapshot(jobs, [holder, full], now=1.0)).assignments == []
    assert place(Snapshot(jobs, [holder, two_slots], now=1.0)).assignments == []


def test_a_job_whose_holders_are_a_burst_behind_gets_a_copy_before_the_affinity_step(monkeypatch):
    # User 1's "a" jobs need 120 s of the one busy holder (a burst). The free
    # GPU holds "b", for which user 2 has a younger job. Fair share serves
    # user 1 first; the affinity step would give the free GPU the "b" job
    # and leave the burst to its holder. The copy rule is asked first.
    # The "b" queue (30 s) is long enough that the rebalance step leaves the free GPU to it.
    burst = [job("a", t=i * 0.1, est=20.0) for i in range(6)]
    others = [job("b", t=0.9 + i * 0.01, user=2, est=10.0) for i in range(3)]
    assert 120.0 < REBALANCE_FACTOR * 30.0 + REBALANCE_MARGIN_S
    holder = fast_worker("holder", held={"a": 2.0}, busy=1)
    free = fast_worker("free", held={"b": 2.0})
    snapshot = Snapshot(queue_order(*burst, *others), [holder, free], now=1.0)
    assert assigned(place(snapshot)) == {burst[0].id: "free"}
    # A backlog under a burst still leaves the free GPU to its own model's job.
    short = [job("a", t=i * 0.1, est=10.0) for i in range(6)]  # 60 s
    assert BURST_BACKLOG_S > 60.0
    assert assigned(place(Snapshot(queue_order(*short, *others), [holder, free], now=1.0))) == {others[0].id: "free"}
    # As the policy was before (COLD_COPY=0), the affinity step goes first.
    monkeypatch.setattr(policy, "COLD_COPY", 0)
    assert assigned(place(snapshot)) == {others[0].id: "free"}


def test_the_burst_bar_before_the_affinity_step_shrinks_as_the_job_waits():
    # User 1's "a" jobs need 60 s of their one busy holder: under the burst
    # bar while they are fresh, so the affinity step gives the free GPU user
    # 2's "b" job. Two thirds into their patience the bar is a third of
    # BURST_BACKLOG_S, as the copy rule's thresholds are, and the copy rule
    # is asked first: it loads a copy on the free GPU.
    short = [job("a", t=i * 0.1, est=10.0) for i in range(6)]
    holder = fast_worker("holder", held={"a": 2.0}, busy=1)
    free = fast_worker("free", held={"b": 2.0})
    assert BURST_BACKLOG_S > 60.0 > BURST_BACKLOG_S / 3
    waited = 2 / 3 * patience_s(short[0])
    for now, served in ((waited * 0.25, "b"), (waited, "a")):
        others = [job("b", t=now - 1.0 + i * 0.01, user=2, est=10.0) for i in range(3)]
        d = place(Snapshot(queue_order(*short, *others), [holder, free], now=now))
        expected = short[0] if served == "a" else others[0]
        assert assigned(d) == {expected.id: "free"}, now


def test_a_burst_for_a_model_nobody_holds_loads_it_once_when_the_queue_is_short():
    # The first job loads the model; that GPU now holds it, so the second
    # short job waits for it rather than loading a second copy in the same
    # call on a GPU that renders something already.
    jobs = [job("a", t=0.0, est=5.0), job("a", t=0.1, est=5.0)]
    d = place(Snapshot(jobs, [fast_worker("w1"), half_busy("w2")], now=0.5))
    assert assigned(d) == {jobs[0].id: "w1"} and d.preloads == []
    # A long queue for it still gets a second copy at once.
    long = [job("a", t=i * 0.1, est=30.0) for i in range(6)]
    d = place(Snapshot(long, [fast_worker("w1"), half_busy("w2")], now=0.5))
    assert set(assigned(d).values()) == {"w1", "w2"}
    # Two idle GPUs both take a job: the second would otherwise stay idle.
    d = place(Snapshot(jobs, [fast_worker("w1"), fast_worker("w2")], now=0.5))
    assert set(assigned(d).values()) == {"w1", "w2"}


def test_a_copy_plan_limits_where_copies_go_but_not_first_loads():
    # The 60 s backlog of the fast-gain case above: with a copy plan that
    # leaves "fast" out, the copy waits; with "fast" in it, it is made.
    # A model nobody holds is loaded wherever it fits, plan or not.
    jobs = [job("a", t=i * 0.1, est=10.0) for i in range(6)]
    workers = [fast_worker("holder", held={"a": 2.0}, busy=1), fast_worker("fast")]
    assert place(Snapshot(jobs, workers, now=1.0, copy_plan=frozenset())).assignments == []
    planned = place(Snapshot(jobs, workers, now=1.0, copy_plan=frozenset({("fast", "a")})))
    assert assigned(planned) == {jobs[0].id: "fast"}
    fresh = [job("b", t=0.0)]
    assert assigned(place(Snapshot(fresh, [fast_worker("idle")], now=0.5, copy_plan=frozenset()))) == {fresh[0].id: "idle"}


def test_a_model_nobody_holds_is_loaded_at_once():
    j = job("a", t=0.0)
    d = place(Snapshot([j], [fast_worker("idle")], now=0.5))
    assert assigned(d) == {j.id: "idle"}


def test_a_holder_that_cannot_take_the_job_does_not_hold_it_back():
    jobs = [job("a", t=0.0, est=5.0), job("a", t=0.1, est=5.0)]
    holder = fast_worker("holder", held={"a": 2.0}, busy=1)
    jobs[0] = QueuedJob(**{**jobs[0].__dict__, "excluded_workers": frozenset({"holder"})})
    d = place(Snapshot(jobs, [holder, fast_worker("idle")], now=1.0))
    assert assigned(d) == {jobs[0].id: "idle"}


def _swamped(count, user=2):
    """`count` jobs of 10 s for model "f", which only the busy worker holds."""
    return [job("f", t=1.0 + i * 0.01, est=10.0, user=user) for i in range(count)]


def test_a_free_gpu_with_a_short_queue_of_its_own_helps_a_swamped_model():
    # w1's own model "a" has 5 s queued; "f" has 20 x 10 s = 200 s behind
    # its one holder, over REBALANCE_FACTOR x 5 + REBALANCE_MARGIN_S: w1
    # takes a copy of "f" although its own job is older.
    own = job("a", t=0.0, est=5.0, user=1)
    swamped = _swamped(20)
    workers = [fast_worker("w1", held={"a": 2.0}), fast_worker("busy", held={"f": 2.0}, busy=1)]
    assert 20 * 10.0 >= REBALANCE_FACTOR * 5.0 + REBALANCE_MARGIN_S
    d = place(Snapshot([own] + swamped, workers, now=2.0))
    assert assigned(d) == {swamped[0].id: "w1"}


def test_a_moderate_backlog_elsewhere_does_not_pull_a_gpu_off_its_own_work():
    own = job("a", t=0.0, est=5.0, user=1)
    swamped = _swamped(5)  # 50 s: under REBALANCE_FACTOR x 5 + REBALANCE_MARGIN_S
    assert 5 * 10.0 < REBALANCE_FACTOR * 5.0 + REBALANCE_MARGIN_S
    workers = [fast_worker("w1", held={"a": 2.0}), fast_worker("busy", held={"f": 2.0}, busy=1)]
    d = place(Snapshot([own] + swamped, workers, now=2.0))
    assert assigned(d) == {own.id: "w1"}


def test_the_move_respects_a_copy_plan():
    own = job("a", t=0.0, est=5.0, user=1)
    swamped = _swamped(20)
    workers = [fast_worker("w1", held={"a": 2.0}), fast_worker("busy", held={"f": 2.0}, busy=1)]
    d = place(Snapshot([own] + swamped, workers, now=2.0, copy_plan=frozenset({("busy", "f")})))
    assert assigned(d) == {own.id: "w1"}
    d = place(Snapshot([own] + swamped, workers, now=2.0, copy_plan=frozenset({("w1", "f")})))
    assert assigned(d) == {swamped[0].id: "w1"}


def test_the_move_respects_the_concurrency_quota():
    own = job("a", t=0.0, est=5.0, user=1)
    swamped = _swamped(20)
    workers = [fast_worker("w1", held={"a": 2.0}), fast_worker("busy", held={"f": 2.0}, busy=1)]
    shares = {2: Share(running=1, max_running=1)}
    d = place(Snapshot([own] + swamped, workers, now=2.0, shares=shares))
    assert assigned(d) == {own.id: "w1"}


def team_job(user, team, model="a", *, t=0.0):
    return QueuedJob(id=uuid.uuid4(), attempt=1, user_id=user, model_id=model, family="sd", model_gb=2.0, width=512,
                     height=512, priority=0, queued_at=t, team_id=team)


def test_a_teams_concurrency_quota_caps_its_members_together():
    # Two members of a team limited to one job at a time, each with work and
    # free workers for all: one job is placed, whoever's turn it is.
    jobs = [team_job(1, 7, t=0.0), team_job(1, 7, t=1.0), team_job(2, 7, t=2.0), team_job(2, 7, t=3.0)]
    workers = [worker(f"w{i}", held={"a": 2.0}) for i in range(4)]
    teams = {7: Share(max_running=1)}
    d = place(Snapshot(jobs, workers, now=5.0, team_shares=teams))
    assert len(d.assignments) == 1
    # A member's running job counts for the whole team: nothing more starts.
    d = place(Snapshot(jobs, workers, now=5.0, team_shares={7: Share(running=1, max_running=1)}))
    assert d.assignments == []
    # A user of another team is not held back by it.
    other = team_job(3, 8, t=4.0)
    d = place(Snapshot(jobs + [other], workers, now=5.0, team_shares={7: Share(running=1, max_running=1)}))
    assert assigned(d) == {other.id: d.assignments[0].worker_id}
    # The user's own limit still holds inside a roomier team limit.
    d = place(Snapshot(jobs, workers, now=5.0, shares={1: Share(max_running=1), 2: Share(max_running=1)},
                       team_shares={7: Share(max_running=3)}))
    assert sorted(j.user_id for j in jobs if j.id in assigned(d)) == [1, 2]


def test_grouping_does_not_place_the_job_of_a_user_at_quota():
    # User 1 is served first; no free worker holds their model, so while the
    # job is patient the free worker is offered the oldest job of a model it
    # holds. That job's owner is at their limit (own or team's): it must not be taken.
    waiting = job("b", t=1.0, user=1)
    capped = job("a", t=0.0, user=2)
    workers = [worker("w1", held={"a": 2.0})]
    shares = {1: Share(usage_s=0.0), 2: Share(usage_s=1e6, running=1, max_running=1)}
    d = place(Snapshot(queue_order(waiting, capped), workers, now=2.0, shares=shares))
    assert capped.id not in assigned(d)
    in_team = team_job(2, 7, t=0.0)
    d = place(Snapshot(queue_order(waiting, in_team), workers, now=2.0, shares={2: Share(usage_s=1e6)},
                       team_shares={7: Share(running=1, max_running=1)}))
    assert in_team.id not in assigned(d)


def tiered_worker(wid, *, host=(), ram_cache_gb=0.0, h2d_gbps=12.0, **kwargs):
    base = worker(wid, **kwargs)
    return WorkerState(**{**base.__dict__, "host_models": frozenset(host), "ram_cache_gb": ram_cache_gb,
                          "h2d_gbps": h2d_gbps})


def test_a_model_in_host_memory_is_loaded_there_rather_than_from_disk_elsewhere():
    # Two identical free GPUs, neither holding "a"; the second keeps it in its
    # host tier (12 GB/s against 2 GB/s from disk). File order alone would pick the first.
    j = job("a")
    d = place(Snapshot([j], [tiered_worker("disk"), tiered_worker("host", host={"a"}, ram_cache_gb=16.0)], now=0))
    assert assigned(d) == {j.id: "host"}


def test_an_eviction_into_the_host_tier_costs_less_than_a_drop():
    # Both GPUs must evict a model that one job waits for (its owner is at
    # their concurrency limit, so it waits); where the evicted model only
    # moves to host memory it comes back for a sixth of a disk load. File
    # order alone would pick the first.
    j, for_b, for_c = job("a", t=0.0), job("b", t=1.0, user=2), job("c", t=1.0, user=2)
    plain = tiered_worker("plain", vram=4.0, held={"b": 2.0})
    tiered = tiered_worker("tiered", vram=4.0, held={"c": 2.0}, ram_cache_gb=16.0)
    d = place(Snapshot([j, for_b, for_c], [plain, tiered], now=2.0, shares={2: Share(running=1, max_running=1)}))
    assert assigned(d) == {j.id: "tiered"}
    assert d.assignments[0].evict == ("c",)


# FLUX.1 dev's weights by component (tests/unit/test_gpu_render_bench.py checks them on the real architecture).
FLUX_DEV_WEIGHTS = {"transformer": 11.901e9, "text_encoder_2": 4.762e9, "text_encoder": 0.123e9, "vae": 0.084e9}


def flux_job(variant: str | None):
    """A 1024x1024 FLUX job whose model is the 16-bit FLUX or its ``variant`` with that variant's own VRAM."""
    from farm.quantization import VRAM_OVERHEAD, get_format, quantized_gb

    if variant is None:
        gb, needs_cuda = round(sum(FLUX_DEV_WEIGHTS.values()) * 2 / 1e9 * VRAM_OVERHEAD, 3), False
    else:
        gb = quantized_gb(FLUX_DEV_WEIGHTS, {"format": variant, "components": ["transformer", "text_encoder_2"]})
        needs_cuda = get_format(variant).needs_cuda
    model = "flux" if variant is None else f"flux-{variant}"
    return QueuedJob(id=uuid.uuid4(), attempt=1, user_id=1, model_id=model, family="flux", model_gb=gb, width=1024,
                     height=1024, priority=0, queued_at=0.0, needs_cuda=needs_cuda)


def flux_worker(wid, vram, *, cuda=True):
    return WorkerState(id=wid, families=frozenset({"flux"}), max_pixels=2048 * 2048, vram_total_gb=vram,
                       vram_free_gb=vram, loaded_models={}, serves_models=None, busy=0, cuda=cuda)


def test_a_24_gb_gpu_is_refused_the_16_bit_flux_and_given_its_int8_and_nf4_variants():
    gpu = flux_worker("rtx4090", 24.0)
    full = flux_job(None)
    decisions = place(Snapshot([full], [gpu], now=0))
    assert decisions.assignments == [] and "has 24.0 GB of VRAM; the job needs" in decisions.unplaceable[full.id]
    for variant in ("int8", "nf4", "gguf-q4_0"):
        quantized = flux_job(variant)
        assert quantized.model_gb < 24.0 < full.model_gb
        assert assigned(place(Snapshot([quantized], [gpu], now=0))) == {quantized.id: "rtx4090"}, variant


def test_a_cuda_only_variant_never_goes_to_a_cpu_worker():
    cpu, gpu = flux_worker("cpu", 64.0, cuda=False), flux_worker("gpu", 24.0)
    nf4, int8 = flux_job("nf4"), flux_job("int8")
    alone = place(Snapshot([nf4], [cpu], now=0))
    assert alone.assignments == [] and "has no CUDA GPU" in alone.unplaceable[nf4.id]
    assert assigned(place(Snapshot([nf4], [cpu, gpu], now=0))) == {nf4.id: "gpu"}
    # torchao's int8 has CPU kernels: the roomier CPU worker may take it.
    assert assigned(place(Snapshot([int8], [cpu], now=0))) == {int8.id: "cpu"}


def test_on_a_deep_queue_an_idle_gpu_takes_a_copy_the_copy_rule_alone_refuses(monkeypatch):
    from farm.scheduler.policy import DEEP_QUEUE_S

    # 40 busy GPUs hold "a"; an idle one is full of "b", which nobody waits
    # for, so a copy there evicts, and without cold copies (COLD_COPY=0) the
    # copy rule refuses it while the jobs can wait (an idle GPU with room
    # would take it at once). Jobs arrived 100 s ago (no recent demand): with
    # 40 holders a copy would take under 2 s off "a"'s queue.
    monkeypatch.setattr(policy, "COLD_COPY", 0)
    holders = [worker(f"h{i}", held={"a": 2.0}, busy=1) for i in range(40)]
    idle = worker("idle", vram=4.0, held={"b": 3.0})

    def snapshot(queued: int) -> Snapshot:
        return Snapshot([job("a", t=0.0) for _ in range(queued)], holders + [idle], now=100.0)

    # 1,200 jobs of 5 s: the farm's 41 GPUs need 146 s for them, a deep queue;
    # 800 jobs, 98 s, are deep too (under the 120 s threshold of before, the
    # copy was refused there, and two all-at-once traces ended late).
    for queued in (1200, 800):
        deep = place(snapshot(queued))
        assert queued * 5 / 41 >= DEEP_QUEUE_S and set(assigned(deep).values()) == {"idle"}
    # 600 jobs: 73 s of work for the farm, not deep; the holders drain it and the load is saved.
    assert 3000 / 41 < DEEP_QUEUE_S and place(snapshot(600)).assignments == []
    # With cold copies (shipped) the idle GPU drops "b", which nobody waits for, and takes the copy.
    monkeypatch.setattr(policy, "COLD_COPY", 1)
    assert set(assigned(place(snapshot(600))).values()) == {"idle"}


def test_on_a_deep_queue_a_big_gpu_takes_the_work_only_big_gpus_can_run():
    # A free 48 GB card holds the SDXL model "x"; three busy 24 GB cards hold it
    # too. 3,000 s of FLUX work only the big card can run need it three times
    # as long as the whole queue needs the whole farm: it takes FLUX first,
    # though user 1's SDXL job is older in line and it holds that model.
    big = worker("big", vram=48.0, held={"x": 7.0}, families=("sd", "sdxl", "flux"))
    small = [worker(f"s{i}", vram=24.0, held={"x": 7.0}, busy=1) for i in range(3)]
    sdxl = [job("x", gb=7.0, family="sdxl", size=1024, user=1) for _ in range(200)]
    flux = [job("f", gb=23.8, family="flux", size=1024, user=2, est=15.0) for _ in range(200)]
    d = place(Snapshot(sdxl + flux, [big] + small, now=100.0))
    (only,) = d.assignments
    assert only.worker_id == "big" and only.job_id in {j.id for j in flux}
    # A shallow queue (20 s of FLUX work): the big card keeps to its model.
    d = place(Snapshot(sdxl[:4] + flux[:4], [big] + small, now=100.0))
    assert [a.job_id for a in d.assignments] == [sdxl[0].id]


def test_a_call_prices_the_free_workers_once_for_heads_of_the_same_shape(monkeypatch):
    """Ten users' oldest jobs are alike (same model and size, all within their patience) and no free worker
    takes them: the free workers are priced for the first head, and the other nine reuse the answer."""
    import farm.scheduler.policy as policy

    calls = []
    priced = policy._Placement.cheapest_worker
    monkeypatch.setattr(policy._Placement, "cheapest_worker", lambda self, j: calls.append(j.id) or priced(self, j))
    jobs = [job("big", gb=30.0, family="sdxl", size=1024, user=user, t=float(user)) for user in range(1, 11)]
    workers = [worker("holder", vram=80.0, held={"big": 30.0}, busy=1), worker("small-a"), worker("small-b")]
    decisions = place(Snapshot(jobs=jobs, workers=workers, now=20.0))
    assert decisions.assignments == [] and decisions.unplaceable == {}
    assert len(calls) == 1


def test_rebalance_ranks_the_held_models_once_per_call_not_once_per_free_worker(monkeypatch):
    """Forty free GPUs, each holding one of twenty models with a short queue: nobody needs a copy, and the
    models' backlogs are ranked once (forty free workers times twenty models before)."""
    import farm.scheduler.policy as policy

    ranked = []
    real_sorted = sorted
    monkeypatch.setattr(policy, "sorted", lambda items, **kw: ranked.append(1) or real_sorted(items, **kw), raising=False)
    models = [f"m{n}" for n in range(20)]
    workers = [worker(f"w{n}", held={models[n % 20]: 2.0}, busy=0) for n in range(40)] + \
              [worker(f"busy{n}", held={models[n]: 2.0}, busy=1) for n in range(20)]
    jobs = [job(m, t=0.0, user=n) for n, m in enumerate(models)]
    decisions = place(Snapshot(jobs=jobs, workers=workers, now=1.0))
    assert len(decisions.assignments) == 20  # each model's job on a free GPU that holds it
    assert len(ranked) <= 2


def test_a_shape_without_a_worker_is_not_assumed_for_an_older_job_of_that_shape():
    """The no-target memo is exact: a young head that waits for the busy holder of its model says nothing
    about an older head of the same shape, whose patience is nearly spent and which takes the free GPU."""
    now = 440.0  # just within both jobs' patience (450 s)
    young = job("m", t=now - 5.0, user=1)
    old = job("m", t=0.0, user=2)
    workers = [worker("holder", held={"m": 2.0}, busy=1), half_busy("free")]
    # The old job's owner has used the farm much more: fair share serves the young head first.
    shares = {2: Share(usage_s=50_000.0)}
    decisions = place(Snapshot(jobs=queue_order(young, old), workers=workers, now=now, shares=shares))
    assert assigned(decisions) == {old.id: "free"}


def test_a_refused_job_leaves_its_models_holder_idle_for_the_next_head():
    # W holds "z"; the only "z" job is too large for any GPU. User 1's head
    # ("a", held by a busy GPU) is priced first and waits: W has queued work
    # of its own then. User 2's head is the "z" job, refused, which leaves W
    # idle with nothing to do, so user 3's younger "a" job takes a copy there
    # (the no-target memo noted for user 1's job is not trusted past it).
    first, oversized, younger = job("a", t=0.0, user=1), job("z", t=1.0, user=2, size=4096), job("a", t=2.0, user=3)
    workers = [fast_worker("holder", held={"a": 2.0}, busy=1), fast_worker("w", held={"z": 2.0})]
    d = place(Snapshot(queue_order(first, oversized, younger), workers, now=3.0))
    assert oversized.id in d.unplaceable and assigned(d) == {younger.id: "w"}

"""The preemption pass (farm/scheduler/preemption.py): which running renders
are stopped for a waiting job of a higher class, and which never are."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farm.families import get_family
from farm.scheduler.policy import Decisions, QueuedJob, Share, Snapshot, WorkerState, place
from farm.scheduler.preemption import MAX_PREEMPTIONS, PREEMPT_WAIT_S, RunningJob, choose_preemptions, job_resumable


def worker(name: str, models=("sd-a",), busy: int = 1) -> WorkerState:
    return WorkerState(id=name, families=frozenset({"sd"}), max_pixels=1024 * 1024, vram_total_gb=12.0,
                       vram_free_gb=12.0 - 2.0 * len(models), loaded_models={m: 2.0 for m in models},
                       serves_models=None, busy=busy, in_use=frozenset(models[:busy]))


def waiting(job_id="ui", priority: int = 5, model: str = "sd-a", user: int = 2) -> QueuedJob:
    return QueuedJob(id=job_id, attempt=1, user_id=user, model_id=model, family="sd", model_gb=2.0, width=512,
                     height=512, priority=priority, queued_at=100.0)


def render(job_id="campaign-1", on="w1", priority: int = 0, remaining_s: float = 300.0, **fields) -> RunningJob:
    return RunningJob(id=job_id, attempt=1, worker_id=on, model_id="sd-a", priority=priority, remaining_s=remaining_s,
                      resumable=fields.pop("resumable", True), **fields)


def decide(jobs, workers, running, **kwargs):
    snapshot = Snapshot(jobs=jobs, workers=workers, now=200.0)
    return choose_preemptions(snapshot, place(snapshot), running, **kwargs)


def test_an_interactive_job_stops_a_long_campaign_render_on_a_holder():
    [chosen] = decide([waiting()], [worker("w1")], [render()])
    assert (chosen.job_id, chosen.worker_id, chosen.for_job) == ("campaign-1", "w1", "ui")


def test_a_slot_that_frees_soon_is_waited_for():
    assert decide([waiting()], [worker("w1"), worker("w2")],
                  [render(), render("campaign-2", on="w2", remaining_s=PREEMPT_WAIT_S / 2)]) == []


def test_same_class_and_higher_class_renders_are_left_alone():
    assert decide([waiting(priority=0)], [worker("w1")], [render()]) == []
    assert decide([waiting(priority=5)], [worker("w1")], [render(priority=5)]) == []


def test_only_a_worker_holding_the_model_is_considered():
    assert decide([waiting(model="sd-b")], [worker("w1")], [render()]) == []


def test_a_non_resumable_sampler_is_never_preempted():
    # The declared flag is what the live scheduler reads from a job's params.
    sampler = next(name for name, spec in get_family("sd").sampler_table.items() if not spec.resumable)
    assert not job_resumable("sd", {"sampler": sampler})
    assert job_resumable("sd", {"sampler": "dpmpp_2m"})
    assert not job_resumable("sd", {"sampler": "dpmpp_2m", "refiner": {"model": "r"}})
    assert not job_resumable("sd", {"sampler": "dpmpp_2m", "image_task": {"kind": "img2img"}})
    assert decide([waiting()], [worker("w1")], [render(resumable=job_resumable("sd", {"sampler": sampler}))]) == []


def test_a_render_is_preempted_a_bounded_number_of_times():
    assert decide([waiting()], [worker("w1")], [render(preemptions=MAX_PREEMPTIONS)]) == []
    assert decide([waiting()], [worker("w1")], [render(preemptions=MAX_PREEMPTIONS - 1)]) != []


def test_a_render_already_stopping_serves_the_next_waiting_job():
    jobs = [waiting("ui-1"), waiting("ui-2")]
    workers = [worker("w1"), worker("w2")]
    running = [render("c-1", on="w1", stopping=True), render("c-2", on="w2")]
    [chosen] = decide(jobs, workers, running)
    assert (chosen.job_id, chosen.for_job) == ("c-2", "ui-2")


def test_a_user_at_their_concurrency_limit_stops_nobody():
    snapshot = Snapshot(jobs=[waiting()], workers=[worker("w1")], now=200.0,
                        shares={2: Share(running=1, max_running=1)})
    assert choose_preemptions(snapshot, place(snapshot), [render()]) == []


def test_the_lowest_class_then_the_longest_render_goes_first():
    workers = [worker("w1"), worker("w2"), worker("w3")]
    running = [render("a", on="w1", priority=1, remaining_s=900), render("b", on="w2", remaining_s=100),
               render("c", on="w3", remaining_s=400)]
    [chosen] = decide([waiting()], workers, running)
    assert chosen.job_id == "c"


@st.composite
def cases(draw):
    workers, running = [], []
    for index in range(draw(st.integers(1, 5))):
        models = tuple(draw(st.lists(st.sampled_from(["sd-a", "sd-b"]), min_size=1, max_size=2, unique=True)))
        workers.append(worker(f"w{index}", models, busy=draw(st.integers(0, 1))))
        if workers[-1].busy:
            running.append(RunningJob(
                id=f"r{index}", attempt=1, worker_id=f"w{index}", model_id=models[0], priority=draw(st.integers(-1, 3)),
                remaining_s=float(draw(st.integers(0, 600))), resumable=draw(st.booleans()),
                preemptions=draw(st.integers(0, 3)), stopping=draw(st.booleans())))
    jobs = [waiting(f"q{i}", priority=draw(st.integers(-1, 6)), model=draw(st.sampled_from(["sd-a", "sd-b"])),
                    user=draw(st.integers(1, 3))) for i in range(draw(st.integers(0, 8)))]
    jobs.sort(key=lambda j: -j.priority)
    return jobs, workers, running


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_every_preemption_is_allowed(case):
    jobs, workers, running = case
    snapshot = Snapshot(jobs=jobs, workers=workers, now=200.0)
    decisions = place(snapshot)
    chosen = choose_preemptions(snapshot, decisions, running)
    by_id = {r.id: r for r in running}
    queued = {j.id: j for j in jobs}
    workers_by_id = {w.id: w for w in workers}
    placed = {a.job_id for a in decisions.assignments}
    assert len({p.job_id for p in chosen}) == len(chosen)  # each render stopped once
    assert len({p.for_job for p in chosen}) == len(chosen)  # for one job each
    for p in chosen:
        victim, job, host = by_id[p.job_id], queued[p.for_job], workers_by_id[p.worker_id]
        assert victim.resumable and not victim.stopping and victim.preemptions < MAX_PREEMPTIONS
        assert victim.priority < job.priority and victim.worker_id == host.id
        assert job.id not in placed and job.model_id in host.loaded_models and host.can_ever_run(job) is None
        assert min(r.remaining_s for r in running if r.worker_id == host.id) > PREEMPT_WAIT_S


def test_no_running_renders_no_preemptions():
    assert choose_preemptions(Snapshot(jobs=[waiting()], workers=[], now=0.0), Decisions(), []) == []

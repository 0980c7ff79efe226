"""Running one job attempt on a worker: start (fenced), load, render with
progress and cancellation, encode, upload, record (fenced).

Faults (farm/retry.py classifies them): the database and the store are
retried at their boundary for a bounded time. A rendered result is kept while
its fenced completion is retried (``FARM_DB_RETRY_S``); if the database stays
away longer, the attempt is abandoned and its lease, which only this process
renews, hands the job on. A store that stays away costs the attempt (re-queued
with attempt + 1, failing only after ``FARM_MAX_ATTEMPTS``); a store that
refuses the farm for good marks the worker unhealthy. Every object an attempt
writes is under its own attempt's keys, and an attempt that does not complete
deletes them (the janitor catches what it cannot).
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import func, select

from farm import lineage, logs, metrics, states
from farm.db import classify_database_error
from farm.models import Job, JobStatus, ModelEntry, Output
from farm.retry import ServiceError, ServiceUnavailableError
from farm.storage import CONTENT_TYPES, StorageError, StoragePermanentError, checkpoint_key, output_key, sidecar_key
from farm.generation.wildcards import image_prompts as wildcard_prompts
from farm.spec import image_seed, side_multiple
from farm.workers.img2img import render_task
from farm.workers.pipelines import (ImagePrompts, Refiner, RenderCanceled, RenderParams, RenderPreempted, StepCheckpoint,
                                    encode_image, render)
from farm.workers.resume import CheckpointError
from farm.workers.runtime import WorkerRuntime

logger = logging.getLogger(__name__)

# Bookkeeping after a render that did not complete (hand-backs, failure
# records, checks before deleting objects) gets a shorter budget than a
# completion: nothing rendered is at stake.
BOOKKEEPING_RETRY_S = 10.0
CHECKPOINT_CONTENT_TYPE = "application/octet-stream"


class HandBack(Exception):
    """A stopping worker's grace ran out: the job goes back to the queue now."""


class ProgressReporter:
    """The step callback: writes progress at most every ``interval_s`` and
    stops the render when the write is refused (canceled, or a stale attempt)
    or when a stopping worker's grace has run out."""

    def __init__(self, runtime: WorkerRuntime, job_id: uuid.UUID, attempt: int,
                 campaign_id: uuid.UUID | None = None) -> None:
        self.runtime = runtime
        self.job_id = job_id
        self.attempt = attempt
        self.campaign_id = campaign_id
        self.interval_s = runtime.ctx.settings.progress_interval_s
        self.preview_every = runtime.ctx.settings.preview_every_steps
        self.preview_side = runtime.ctx.settings.preview_side
        self.started = time.perf_counter()
        self.last_write = self.started
        self.db_down = False
        # Read with each progress write: the scheduler asked this attempt to
        # stop at a step boundary (preemption), no query of its own per step.
        self.preempt = False
        self.step, self.total, self.eta = 0, 0, None
        # Set per image by the caller: what ``preview`` needs to read the latents.
        self.family, self.width, self.height = "sd", 0, 0

    def publish(self, message: dict) -> None:
        self.runtime.ctx.events.publish_live(self.job_id, self.campaign_id, {**message, "job": str(self.job_id)})

    def preview(self, latents) -> None:
        """``on_latents``: every ``preview_every_steps`` steps (and at the last),
        a small JPEG of the latents goes to the job's event streams; never
        stored, and never allowed to stop the render."""
        if not self.preview_every or not self.width or (self.step % self.preview_every and self.step != self.total):
            return
        import base64

        from farm.workers.previews import preview_jpeg

        try:
            jpeg = preview_jpeg(latents, self.family, self.width, self.height, side=self.preview_side)
        except Exception as exc:  # a preview is a nicety; the render goes on
            logger.warning("job %s: no preview at step %d: %s", self.job_id, self.step, exc)
            self.preview_every = 0
            return
        self.publish({"type": "preview", "step": self.step, "total": self.total, "eta_s": self.eta,
                      "jpeg": base64.b64encode(jpeg).decode()})

    def __call__(self, step: int, total: int) -> None:
        now = time.perf_counter()
        elapsed = now - self.started
        eta = elapsed / step * (total - step) if step else None
        self.step, self.total, self.eta = step, total, None if eta is None else round(eta, 2)
        deadline = self.runtime.stop_deadline
        if deadline is not None and time.monotonic() + (eta or 0.0) > deadline:
            # The grace has run out, or the render's ETA shows it will: waiting
            # it out would only delay the job's next attempt.
            raise HandBack(f"worker {self.runtime.name} is stopping and step {step} of {total} cannot finish "
                           f"within its grace ({'about %.1fs to go' % eta if eta is not None else 'no time left'})")
        if now - self.last_write < self.interval_s and step < total:
            return
        self.last_write = now
        self.publish({"type": "progress", "step": step, "total": total, "eta_s": self.eta})
        try:
            with self.runtime.ctx.db.transaction() as session:
                still_ours = states.record_progress(session, self.job_id, self.attempt, step, total, eta)
                self.preempt = still_ours and states.preempt_requested(session, self.job_id, self.attempt)
        except Exception as exc:
            if classify_database_error(exc) is None:
                raise
            # Progress is best effort: the render goes on through a database
            # outage; its completion is retried.
            if not self.db_down:
                logger.warning("job %s: progress not recorded, the database is unavailable: %s", self.job_id, exc)
            self.db_down = True
            return
        self.db_down = False
        if not still_ours:
            raise RenderCanceled(f"job {self.job_id} attempt {self.attempt} is no longer running")

    def stop_requested(self) -> bool:
        """``render``'s stop_requested: the preemption flag as of the latest progress write."""
        return self.preempt


@dataclass
class JobSnapshot:
    id: uuid.UUID
    attempt: int
    user_id: int
    campaign_id: uuid.UUID | None
    request: dict
    params: dict
    created_at: object
    assigned_at: object
    started_at: object
    model: ModelEntry
    rerender_of: uuid.UUID | None = None
    refiner: ModelEntry | None = None
    interface: str = "api"
    # A checkpoint an earlier, preempted attempt left (farm/workers/resume.py).
    resume_key: str | None = None
    # How far the attempt got (start | load | render | store): names a failure's reason.
    stage: str = "start"


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def execute_job(runtime: WorkerRuntime, job_id: uuid.UUID, attempt: int, evict: list[str] | None = None) -> str:
    ctx = runtime.ctx
    if not runtime.accepting:
        # A message that reached a stopping or unhealthy worker.
        return _hand_back(runtime, job_id, attempt, f"worker {runtime.name} is {runtime.state}")
    try:
        snapshot = ctx.db.retrying(lambda session: _start(session, runtime, job_id, attempt),
                                   what=f"start job {job_id}", budget_s=ctx.settings.db_retry_s)
    except states.JobStateError as exc:
        logger.info("not running job %s attempt %d: %s", job_id, attempt, exc)
        return "skipped"
    except ServiceUnavailableError as exc:
        # The job stays assigned; its lease runs out and the scheduler re-queues it.
        logger.warning("not running job %s attempt %d: %s", job_id, attempt, exc)
        return "skipped"
    runtime.take(job_id, attempt)
    log_fields = logs.bind_fields(campaign=snapshot.campaign_id, user=snapshot.user_id)
    try:
        ctx.events.job_changed(job_id)
        ctx.events.publish_live(job_id, snapshot.campaign_id, {"type": "changed", "job": str(job_id)})
        if evict:
            runtime.evict(evict)
        keys: list[str] = []
        try:
            outcome = _render_and_store(runtime, snapshot, keys)
        except RenderPreempted as preempted:
            outcome = _checkpoint_and_hand_back(runtime, snapshot, preempted.checkpoint)
        except Exception as exc:
            metrics.IMAGES_FAILED.labels(model=snapshot.model.id, reason=failure_reason(snapshot.stage, exc)).inc(
                snapshot.params.get("num_images", 1))
            outcome = _settle_failure(runtime, snapshot, exc)
            _discard_attempt_objects(runtime, snapshot, keys)
    finally:
        runtime.release(job_id)
        logs.reset_fields(log_fields)
    ctx.events.job_changed(job_id)
    ctx.events.publish_live(job_id, snapshot.campaign_id, {"type": "changed", "job": str(job_id)})
    ctx.events.wake_scheduler()
    return outcome


def _start(session, runtime: WorkerRuntime, job_id: uuid.UUID, attempt: int) -> JobSnapshot:
    settings = runtime.ctx.settings
    try:
        states.start_job(session, job_id, attempt, runtime.name, settings.lease_s, instance_id=runtime.instance_id)
    except states.InvalidTransitionError:
        # A retry after a dropped COMMIT that had landed finds the job
        # already started by this very process.
        row = session.execute(select(Job.status, Job.attempt, Job.worker_instance).where(Job.id == job_id)).one()
        if (row.status, row.attempt, row.worker_instance) != (JobStatus.running.value, attempt, runtime.instance_id):
            raise
    job = session.get(Job, job_id)
    snapshot = JobSnapshot(job.id, attempt, job.user_id, job.campaign_id, job.request, job.params,
                           job.created_at, job.assigned_at, job.started_at, session.get(ModelEntry, job.model_id),
                           job.rerender_of, interface=job.interface, resume_key=job.resume_key)
    if job.params.get("refiner"):
        snapshot.refiner = session.get(ModelEntry, job.params["refiner"]["model"])
    return snapshot


def failure_reason(stage: str, exc: BaseException) -> str:
    """The bounded reason (``farm.metrics.FAILURE_REASONS``) under which the
    images of an attempt that did not complete are counted."""
    from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

    if isinstance(exc, (RenderCanceled, HandBack, states.JobStateError)):
        return "canceled"  # canceled, handed back, or no longer this attempt's
    if isinstance(exc, (SoftTimeLimitExceeded, TimeLimitExceeded)):
        return "timeout"
    if isinstance(exc, StorageError) or (isinstance(exc, ServiceUnavailableError) and exc.service != "database"):
        return "storage"
    if isinstance(exc, ServiceUnavailableError):
        return "database"
    if _is_out_of_memory(exc):
        return "oom"
    if stage == "load":
        return "model_load"
    if isinstance(exc, ValueError):
        return "bad_input"
    return "error"


def _settle_failure(runtime: WorkerRuntime, job: "JobSnapshot", exc: Exception) -> str:
    """Record how an attempt that did not complete ended; the outcome's name."""
    settings = runtime.ctx.settings
    if isinstance(exc, RenderCanceled):
        logger.info("render stopped: %s", exc)
        return "stopped"
    if isinstance(exc, states.JobStateError):
        logger.info("result of job %s attempt %d refused: %s", job.id, job.attempt, exc)
        return "refused"
    if isinstance(exc, HandBack):
        return _hand_back(runtime, job.id, job.attempt, str(exc))
    if isinstance(exc, ServiceUnavailableError) and exc.service == "database":
        logger.warning("job %s attempt %d abandoned, the database stayed unavailable: %s; its lease hands it on",
                       job.id, job.attempt, exc)
        return "abandoned"
    if isinstance(exc, StoragePermanentError):
        runtime.mark_unhealthy(str(exc))
        return _record(runtime, job.id, job.attempt, "requeued", lambda s: states.requeue_job(
            s, job.id, job.attempt, f"object store refused worker {runtime.name}: {exc}", settings.max_attempts))
    if isinstance(exc, ServiceUnavailableError):
        # The store stayed away for FARM_STORAGE_RETRY_S: this attempt is
        # spent; the next one may find the store back.
        logger.warning("job %s attempt %d: %s; re-queueing", job.id, job.attempt, exc)
        return _record(runtime, job.id, job.attempt, "requeued", lambda s: states.requeue_job(
            s, job.id, job.attempt, str(exc), settings.max_attempts))
    if _is_out_of_memory(exc):
        # Never again on this worker at this size (the scheduler skips it).
        logger.warning("job %s ran out of memory on %s; re-queueing elsewhere", job.id, runtime.name)
        return _record(runtime, job.id, job.attempt, "requeued", lambda s: states.requeue_job(
            s, job.id, job.attempt, f"out of memory on {runtime.name}", settings.max_attempts, exclude_worker=runtime.name))
    logger.error("job %s attempt %d failed", job.id, job.attempt, exc_info=exc)
    return _record(runtime, job.id, job.attempt, "failed", lambda s: states.fail_job(s, job.id, job.attempt, f"{type(exc).__name__}: {exc}"))


def _record(runtime: WorkerRuntime, job_id: uuid.UUID, attempt: int, outcome: str, write) -> str:
    """Write how an attempt ended (retried briefly); the outcome's name, or
    why it could not be written."""
    try:
        runtime.ctx.db.retrying(write, what=f"record the end of job {job_id}", budget_s=BOOKKEEPING_RETRY_S)
    except states.JobStateError as refused:
        logger.info("end of job %s attempt %d not recorded: %s", job_id, attempt, refused)
        return "refused"
    except ServiceError as exc:
        logger.warning("end of job %s attempt %d not recorded (%s); its lease hands it on", job_id, attempt, exc)
        return "abandoned"
    return outcome


def _checkpoint_and_hand_back(runtime: WorkerRuntime, job: "JobSnapshot", checkpoint: StepCheckpoint) -> str:
    """A preempted render: its checkpoint goes to the store, then the job back
    to the queue (not charged) with the checkpoint's key. A store that fails
    here costs the steps done, not the job: it goes back without a new
    checkpoint (an older one, if any, still holds)."""
    key = checkpoint_key(job.user_id, job.id, job.attempt)
    reason = (f"preempted on {runtime.name} after step {checkpoint.step} of {checkpoint.total}"
              f" (image {checkpoint.image_index + 1})")
    try:
        runtime.ctx.storage.put(key, checkpoint.to_bytes(), CHECKPOINT_CONTENT_TYPE)
    except (ServiceError, StorageError) as exc:
        logger.warning("job %s attempt %d: checkpoint not stored (%s); handing it back to start over", job.id, job.attempt, exc)
        return _hand_back(runtime, job.id, job.attempt, f"{reason}; its checkpoint could not be stored")
    max_attempts = runtime.ctx.settings.max_attempts
    outcome = _record(runtime, job.id, job.attempt, "preempted",
                      lambda s: states.preempt_job(s, job.id, job.attempt, key, reason, max_attempts))
    if outcome != "preempted":
        _delete_quietly(runtime, key)
        return outcome
    metrics.JOBS_REQUEUED.labels(reason="preempted").inc()
    if job.resume_key and job.resume_key != key:
        _delete_quietly(runtime, job.resume_key)  # superseded by this one
    logger.info("job %s attempt %d %s; checkpoint %s", job.id, job.attempt, reason, key)
    return outcome


def _delete_quietly(runtime: WorkerRuntime, key: str) -> None:
    try:
        runtime.ctx.storage.delete(key)
    except StorageError as exc:
        logger.info("checkpoint %s not deleted: %s", key, exc)


def _load_checkpoint(runtime: WorkerRuntime, job: "JobSnapshot") -> StepCheckpoint | None:
    """The checkpoint an earlier attempt of this job left, or None (then the
    render starts over: it costs the steps done, never the result)."""
    if not job.resume_key:
        return None
    try:
        return StepCheckpoint.from_bytes(runtime.ctx.storage.get(job.resume_key))
    except Exception as exc:  # missing, unreadable, another format: start over
        logger.warning("job %s: checkpoint %s not used (%s); rendering from the start", job.id, job.resume_key, exc)
        return None


def _hand_back(runtime: WorkerRuntime, job_id: uuid.UUID, attempt: int, reason: str) -> str:
    """Return a job this worker will not finish to the queue now, without
    charging it an attempt."""
    max_attempts = runtime.ctx.settings.max_attempts
    outcome = _record(runtime, job_id, attempt, "handed back",
                      lambda s: states.requeue_job(s, job_id, attempt, reason, max_attempts, charge=False))
    if outcome == "handed back":
        logger.info("job %s attempt %d handed back: %s", job_id, attempt, reason)
        runtime.ctx.events.job_changed(job_id)
    return outcome


def _image_inputs(runtime: WorkerRuntime, task: dict, params: dict, family: str):
    """The source (and mask) of an image-to-image job, read from the store and prepared for its mode."""
    import io

    import PIL.Image

    from farm.workers.img2img import prepare_inputs

    storage = runtime.ctx.storage
    source = PIL.Image.open(io.BytesIO(storage.get(task["source_key"])))
    mask = PIL.Image.open(io.BytesIO(storage.get(task["mask_key"]))) if task.get("mask_key") else None
    return prepare_inputs(task, source, mask, params["width"], params["height"], side_multiple(family))


def _image_prompts(runtime: WorkerRuntime, spec: dict) -> ImagePrompts:
    import io

    import PIL.Image

    images = tuple(PIL.Image.open(io.BytesIO(runtime.ctx.storage.get(item["key"]))).convert("RGB") for item in spec["images"])
    return ImagePrompts(adapter=spec["adapter"], weight=float(spec["weight"]), images=images)


def _references(runtime: WorkerRuntime, specs: list[dict]) -> tuple[tuple, list[dict]]:
    """The job's reference images read from the store, and each one's record
    for the lineage: its ids and key with the sha256 of the very bytes used."""
    import io

    import PIL.Image

    images, used = [], []
    for item in specs:
        data = runtime.ctx.storage.get(item["key"])
        images.append(PIL.Image.open(io.BytesIO(data)).convert("RGB"))
        used.append({**item, "sha256": hashlib.sha256(data).hexdigest()})
    return tuple(images), used


def _render_and_store(runtime: WorkerRuntime, job: JobSnapshot, keys: list[str]) -> str:
    ctx = runtime.ctx
    params = job.params
    job.stage = "load"
    loaded, load_s = runtime.pipeline_for(job.model)
    load_source = loaded.load_source if load_s else "held"
    count = params["num_images"]
    reporter = ProgressReporter(runtime, job.id, job.attempt, job.campaign_id)
    reporter.family, reporter.width, reporter.height = loaded.family, params["width"], params["height"]
    started = time.perf_counter()
    images = []
    task = params.get("image_task")
    inputs = _image_inputs(runtime, task, params, loaded.family) if task else None
    image_prompts = _image_prompts(runtime, params["image_prompts"]) if params.get("image_prompts") else None
    references, used_references = _references(runtime, params["references"]) if params.get("references") else ((), [])
    refiner, refiner_model = None, None
    if params.get("refiner"):
        if job.refiner is None:
            raise ValueError(f"refiner {params['refiner']['model']!r} is no longer registered")
        job.stage = "load"
        refiner_model, refiner_load_s = runtime.pipeline_for(job.refiner, keep=(loaded.entry_id,))
        load_s += refiner_load_s
        refiner = Refiner(refiner_model.pipe, float(params["refiner"]["switch"]))
    job.stage = "render"
    # One image per pipeline call: a batch rounds differently (a pixel value
    # may move by one), and image i must hash like a rerender of seed + i.
    seeds = [image_seed(params["seed"], index, bool(params.get("same_seed"))) for index in range(count)]
    checkpoint = _load_checkpoint(runtime, job) if inputs is None and refiner is None else None
    first = 0
    if checkpoint is not None:
        # The images finished before the preemption, as they were (PNG is lossless).
        images = [_decode_png(data) for data in checkpoint.done_images]
        first = checkpoint.image_index
        logger.info("job %s continues from its checkpoint: image %d, step %d of %d", job.id, first + 1,
                    checkpoint.step, checkpoint.total)
    for index in range(first, count):
        prompt, negative_prompt, _ = wildcard_prompts(params, index)  # each image its own wildcard draws
        image_params = RenderParams(
            prompt=prompt, negative_prompt=negative_prompt, width=params["width"],
            height=params["height"], steps=params["steps"], guidance_scale=params["guidance_scale"],
            sampler=params["sampler"], scheduler=params["scheduler"], seed=seeds[index], num_images=1,
            clip_skip=params.get("clip_skip"), freeu=bool(params.get("freeu")), detail_guidance=params.get("detail_guidance"),
            sag_scale=params.get("sag_scale"),
            loras=tuple(params.get("loras", ())), image_prompts=image_prompts, refiner=refiner, references=references,
        )
        on_step = lambda step, total, i=index: reporter(i * total + step, count * total)  # noqa: E731
        if inputs is None:
            resume = checkpoint if checkpoint is not None and index == checkpoint.image_index else None
            try:
                try:
                    images += render(loaded.pipe, image_params, on_step=on_step, on_latents=reporter.preview,
                                     stop_requested=reporter.stop_requested, resume=resume)
                except CheckpointError as exc:
                    if resume is None:
                        raise
                    logger.warning("job %s: its checkpoint cannot be continued (%s); image %d starts over",
                                   job.id, exc, index + 1)
                    images += render(loaded.pipe, image_params, on_step=on_step, on_latents=reporter.preview,
                                     stop_requested=reporter.stop_requested)
            except RenderPreempted as preempted:
                preempted.checkpoint.image_index = index
                preempted.checkpoint.done_images = [_encode_png(image) for image in images]
                raise
        else:
            images.append(render_task(loaded.pipe, image_params, inputs, tile_pixels=ctx.settings.upscale_tile_pixels,
                                      multiple=side_multiple(loaded.family), on_step=on_step,
                                      on_latents=reporter.preview))
    inference_s = time.perf_counter() - started
    job.stage = "store"

    software = lineage.software_versions(runtime.device.type)
    model = {"id": loaded.entry_id, "family": loaded.family, "source": loaded.source, "revision": loaded.revision,
             "weights_sha256": loaded.weights_sha256, "dtype": loaded.dtype}
    if job.model.variant:
        model.update(base=job.model.base, variant=job.model.variant)
    if loaded.quantization:
        model["quantization"] = loaded.quantization
    if refiner_model is not None:
        model["refiner"] = {"id": refiner_model.entry_id, "source": refiner_model.source, "revision": refiner_model.revision,
                            "weights_sha256": refiner_model.weights_sha256, "dtype": refiner_model.dtype}
    worker = {"id": runtime.name, "host": runtime.host, "device": runtime.device.type, "gpu_name": runtime.device_name,
              "vram_total_gb": round(runtime.vram()[0], 3)}
    fmt = params["output_format"]
    # The lineage names each reference with the hash of the bytes this render read.
    recorded = {**params, "references": used_references} if used_references else params
    rows = []
    objects: list[tuple[str, bytes, str]] = []
    for index, image in enumerate(images):
        seed = seeds[index]
        resolved = lineage.image_params(recorded, seed, index)
        reproducible = lineage.reproducible_record(resolved, model, software, runtime.device.type)
        text = {"parameters": lineage.parameters_text(resolved, loaded.entry_id), "farm": lineage.dumps(reproducible)}
        data = encode_image(image, fmt, text)
        key = output_key(job.user_id, job.id, job.attempt, index, fmt)
        output_id = uuid.uuid4()
        record = {
            "output_id": str(output_id), "job_id": str(job.id), "attempt": job.attempt,
            "campaign_id": str(job.campaign_id) if job.campaign_id else None, "user_id": job.user_id,
            "interface": job.interface,
            "request": job.request, "params": resolved, "model": model,
            "parent_output": task.get("parent_output") if task else None,
            "source_upload": task.get("upload") if task else None,
            "rerender_of": str(job.rerender_of) if job.rerender_of else None, "worker": worker,
            "software": software,
            "timings": {
                "queued_at": job.created_at.isoformat(),
                "started_at": job.started_at.isoformat(),
                "waited_s": round((job.started_at - job.created_at).total_seconds(), 4),
                "model_load_s": round(load_s, 4),
                "model_load_source": load_source,  # held, disk, hub or host (the worker's host-memory tier)
                "inference_s": round(inference_s, 4),
                "upload_s": None,
            },
            "object_key": key, "sidecar_key": sidecar_key(key), "content_type": CONTENT_TYPES[fmt],
            "content_sha256": hashlib.sha256(data).hexdigest(), "byte_size": len(data),
        }
        objects.append((key, data, CONTENT_TYPES[fmt]))
        rows.append(dict(
            id=output_id, job_id=job.id, user_id=job.user_id, attempt=job.attempt, index=index, object_key=key,
            sidecar_key=record["sidecar_key"], content_type=CONTENT_TYPES[fmt], content_sha256=record["content_sha256"],
            byte_size=len(data), width=image.width, height=image.height, seed=seed, lineage=record,
        ))
    # The images go up first and their measured upload time goes into the
    # sidecars; every object is in place before the fenced completion, so a
    # completed job never points at a missing object.
    put_started = time.perf_counter()
    keys += [key for key, _, _ in objects]
    _put_all(ctx.storage, objects)
    upload_s = time.perf_counter() - put_started
    for row in rows:
        row["lineage"]["timings"]["upload_s"] = round(upload_s / len(rows), 4)
    sidecars = [(row["sidecar_key"], lineage.dumps(row["lineage"]).encode(), CONTENT_TYPES["json"]) for row in rows]
    keys += [key for key, _, _ in sidecars]
    _put_all(ctx.storage, sidecars)
    gpu_seconds = round((load_s + inference_s) * ctx.settings.worker_gpu_factor, 4)

    def complete(session) -> None:
        try:
            states.complete_job(session, job.id, job.attempt, runtime.name, gpu_seconds=gpu_seconds)
        except states.JobStateError:
            if _completed_by(session, job):
                return  # a retry after a dropped COMMIT that had landed
            raise
        session.add_all([Output(**row) for row in rows])

    ctx.db.retrying(complete, what=f"complete job {job.id}", budget_s=ctx.settings.db_retry_s)
    if job.resume_key:
        _delete_quietly(runtime, job.resume_key)  # the job is done: its checkpoint has served
    metrics.RENDER_SECONDS.labels(model=loaded.entry_id).observe(inference_s)
    metrics.IMAGES_PRODUCED.labels(model=loaded.entry_id).inc(len(rows))
    logger.info("job %s attempt %d done: load %.3fs, inference %.3fs, upload %.3fs", job.id, job.attempt, load_s, inference_s, upload_s)
    return "succeeded"


def _encode_png(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _decode_png(data: bytes):
    import io

    import PIL.Image

    with PIL.Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()


_UPLOAD_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="farm-upload")


def _put_all(storage, objects: list[tuple[str, bytes, str]]) -> None:
    """Upload in parallel; the first error (already retried by the store) is raised."""
    # Each upload runs in a copy of this thread's context: its log lines (store
    # retries) keep the job's fields (farm.logs).
    futures = [_UPLOAD_POOL.submit(contextvars.copy_context().run, storage.put, key, data, content_type)
               for key, data, content_type in objects]
    for future in futures:
        future.result()


def _completed_by(session, job: "JobSnapshot") -> bool:
    """Did this very attempt complete the job (its outputs recorded)?"""
    row = session.execute(select(Job.status, Job.attempt).where(Job.id == job.id)).one_or_none()
    if row is None or (row.status, row.attempt) != (JobStatus.succeeded.value, job.attempt):
        return False
    return bool(session.execute(select(func.count()).select_from(Output)
                                .where(Output.job_id == job.id, Output.attempt == job.attempt)).scalar_one())


def _discard_attempt_objects(runtime: WorkerRuntime, job: "JobSnapshot", keys: list[str]) -> None:
    """Delete what an attempt that did not complete uploaded. Its keys are its
    own (they name the attempt), so no other attempt's objects can go; they
    stay only if its completion did land after all. What cannot be deleted
    now is left to the janitor."""
    if not keys:
        return
    try:
        if runtime.ctx.db.retrying(lambda s: _completed_by(s, job), what=f"check job {job.id}", budget_s=BOOKKEEPING_RETRY_S):
            return
        for key in keys:
            runtime.ctx.storage.delete(key)
    except (ServiceError, StorageError) as exc:
        logger.info("objects of job %s attempt %d left to the janitor: %s", job.id, job.attempt, exc)
        return
    logger.info("deleted %d object(s) of job %s attempt %d, which did not complete", len(keys), job.id, job.attempt)

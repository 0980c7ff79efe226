"""Running one job attempt on a worker: start (fenced), load, render with
progress and cancellation, encode, upload, record (fenced).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass

from farm import lineage, states
from farm.models import Job, ModelEntry, Output
from farm.storage import CONTENT_TYPES, output_key, sidecar_key
from farm.spec import FAMILY_SIDE_MULTIPLE
from farm.workers.img2img import render_task
from farm.workers.pipelines import ImagePrompts, Refiner, RenderCanceled, RenderParams, encode_image, render
from farm.workers.runtime import WorkerRuntime

logger = logging.getLogger(__name__)


class ProgressReporter:
    """The step callback: writes progress at most every ``interval_s`` and
    stops the render when the write is refused (canceled, or a stale attempt)."""

    def __init__(self, runtime: WorkerRuntime, job_id: uuid.UUID, attempt: int) -> None:
        self.runtime = runtime
        self.job_id = job_id
        self.attempt = attempt
        self.interval_s = runtime.ctx.settings.progress_interval_s
        self.started = time.perf_counter()
        self.last_write = self.started

    def __call__(self, step: int, total: int) -> None:
        now = time.perf_counter()
        if now - self.last_write < self.interval_s and step < total:
            return
        self.last_write = now
        elapsed = now - self.started
        eta = elapsed / step * (total - step) if step else None
        with self.runtime.ctx.db.transaction() as session:
            still_ours = states.record_progress(session, self.job_id, self.attempt, step, total, eta)
        if not still_ours:
            raise RenderCanceled(f"job {self.job_id} attempt {self.attempt} is no longer running")


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


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def execute_job(runtime: WorkerRuntime, job_id: uuid.UUID, attempt: int, evict: list[str] | None = None) -> str:
    ctx = runtime.ctx
    with ctx.db.transaction() as session:
        try:
            states.start_job(session, job_id, attempt, runtime.name, ctx.settings.lease_s)
        except states.JobStateError as exc:
            logger.info("not running job %s attempt %d: %s", job_id, attempt, exc)
            return "skipped"
        job = session.get(Job, job_id)
        snapshot = JobSnapshot(job.id, attempt, job.user_id, job.campaign_id, job.request, job.params,
                               job.created_at, job.assigned_at, job.started_at, session.get(ModelEntry, job.model_id),
                               job.rerender_of)
        if job.params.get("refiner"):
            snapshot.refiner = session.get(ModelEntry, job.params["refiner"]["model"])
    ctx.events.job_changed(job_id)
    if evict:
        runtime.evict(evict)
    keys: list[str] = []
    try:
        outcome = _render_and_store(runtime, snapshot, keys)
    except RenderCanceled as exc:
        logger.info("render stopped: %s", exc)
        outcome = "stopped"
        _forget_objects_of_canceled(runtime, job_id, keys)
    except states.JobStateError as exc:
        logger.info("result of job %s attempt %d refused: %s", job_id, attempt, exc)
        outcome = "refused"
        _forget_objects_of_canceled(runtime, job_id, keys)
    except Exception as exc:
        outcome = _record_failure(runtime, snapshot, exc)
    ctx.events.job_changed(job_id)
    ctx.events.wake_scheduler()
    return outcome


def _image_inputs(runtime: WorkerRuntime, task: dict, params: dict, family: str):
    """The source (and mask) of an image-to-image job, read from the store and prepared for its mode."""
    import io

    import PIL.Image

    from farm.workers.img2img import prepare_inputs

    storage = runtime.ctx.storage
    source = PIL.Image.open(io.BytesIO(storage.get(task["source_key"])))
    mask = PIL.Image.open(io.BytesIO(storage.get(task["mask_key"]))) if task.get("mask_key") else None
    return prepare_inputs(task, source, mask, params["width"], params["height"], FAMILY_SIDE_MULTIPLE.get(family, 8))


def _image_prompts(runtime: WorkerRuntime, spec: dict) -> ImagePrompts:
    import io

    import PIL.Image

    images = tuple(PIL.Image.open(io.BytesIO(runtime.ctx.storage.get(item["key"]))).convert("RGB") for item in spec["images"])
    return ImagePrompts(adapter=spec["adapter"], weight=float(spec["weight"]), images=images)


def _render_and_store(runtime: WorkerRuntime, job: JobSnapshot, keys: list[str]) -> str:
    ctx = runtime.ctx
    params = job.params
    loaded, load_s = runtime.pipeline_for(job.model)
    count = params["num_images"]
    reporter = ProgressReporter(runtime, job.id, job.attempt)
    started = time.perf_counter()
    images = []
    task = params.get("image_task")
    inputs = _image_inputs(runtime, task, params, loaded.family) if task else None
    image_prompts = _image_prompts(runtime, params["image_prompts"]) if params.get("image_prompts") else None
    refiner, refiner_model = None, None
    if params.get("refiner"):
        if job.refiner is None:
            raise ValueError(f"refiner {params['refiner']['model']!r} is no longer registered")
        refiner_model, refiner_load_s = runtime.pipeline_for(job.refiner, keep=(loaded.entry_id,))
        load_s += refiner_load_s
        refiner = Refiner(refiner_model.pipe, float(params["refiner"]["switch"]))
    # One image per pipeline call: a batch rounds differently (a pixel value
    # may move by one), and image i must hash like a rerender of seed + i.
    seeds = [params["seed"] if params.get("same_seed") else (params["seed"] + index) % 2**64 for index in range(count)]
    for index in range(count):
        image_params = RenderParams(
            prompt=params["final_prompt"], negative_prompt=params["final_negative_prompt"], width=params["width"],
            height=params["height"], steps=params["steps"], guidance_scale=params["guidance_scale"],
            sampler=params["sampler"], scheduler=params["scheduler"], seed=seeds[index], num_images=1,
            clip_skip=params.get("clip_skip"), freeu=bool(params.get("freeu")), detail_guidance=params.get("detail_guidance"),
            loras=tuple(params.get("loras", ())), image_prompts=image_prompts, refiner=refiner,
        )
        on_step = lambda step, total, i=index: reporter(i * total + step, count * total)  # noqa: E731
        if inputs is None:
            images += render(loaded.pipe, image_params, on_step=on_step)
        else:
            images.append(render_task(loaded.pipe, image_params, inputs, tile_pixels=ctx.settings.upscale_tile_pixels,
                                      multiple=FAMILY_SIDE_MULTIPLE.get(loaded.family, 8), on_step=on_step))
    inference_s = time.perf_counter() - started

    software = lineage.software_versions(runtime.device.type)
    model = {"id": loaded.entry_id, "family": loaded.family, "source": loaded.source, "revision": loaded.revision,
             "weights_sha256": loaded.weights_sha256, "dtype": loaded.dtype}
    if refiner_model is not None:
        model["refiner"] = {"id": refiner_model.entry_id, "source": refiner_model.source, "revision": refiner_model.revision,
                            "weights_sha256": refiner_model.weights_sha256, "dtype": refiner_model.dtype}
    worker = {"id": runtime.name, "host": runtime.host, "device": runtime.device.type, "gpu_name": runtime.device_name,
              "vram_total_gb": round(runtime.vram()[0], 3)}
    fmt = params["output_format"]
    rows = []
    upload_s = 0.0
    for index, image in enumerate(images):
        seed = seeds[index]
        resolved = lineage.image_params(params, seed)
        reproducible = lineage.reproducible_record(resolved, model, software, runtime.device.type)
        text = {"parameters": lineage.parameters_text(resolved, loaded.entry_id), "farm": lineage.dumps(reproducible)}
        data = encode_image(image, fmt, text)
        key = output_key(job.user_id, job.id, index, fmt)
        output_id = uuid.uuid4()
        record = {
            "output_id": str(output_id), "job_id": str(job.id), "attempt": job.attempt,
            "campaign_id": str(job.campaign_id) if job.campaign_id else None, "user_id": job.user_id,
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
                "inference_s": round(inference_s, 4),
                "upload_s": None,
            },
            "object_key": key, "sidecar_key": sidecar_key(key), "content_type": CONTENT_TYPES[fmt],
            "content_sha256": hashlib.sha256(data).hexdigest(), "byte_size": len(data),
        }
        put_started = time.perf_counter()
        keys.append(key)
        ctx.storage.put(key, data, CONTENT_TYPES[fmt])
        record["timings"]["upload_s"] = round(time.perf_counter() - put_started, 4)
        upload_s += time.perf_counter() - put_started
        rows.append(Output(
            id=output_id, job_id=job.id, user_id=job.user_id, attempt=job.attempt, index=index, object_key=key,
            sidecar_key=record["sidecar_key"], content_type=CONTENT_TYPES[fmt], content_sha256=record["content_sha256"],
            byte_size=len(data), width=image.width, height=image.height, seed=seed, lineage=record,
        ))
    # The sidecars go up while the outputs are recorded; both must finish
    # before the task returns.
    sidecars = [(row.sidecar_key, lineage.dumps(row.lineage).encode()) for row in rows]
    keys += [key for key, _ in sidecars]
    pending = _SIDECAR_POOL.submit(_put_sidecars, ctx.storage, sidecars)
    try:
        with ctx.db.transaction() as session:
            gpu_seconds = (load_s + inference_s) * ctx.settings.worker_gpu_factor
            states.complete_job(session, job.id, job.attempt, runtime.name, gpu_seconds=round(gpu_seconds, 4))
            session.add_all(rows)
    finally:
        pending.result()
    logger.info("job %s attempt %d done: load %.3fs, inference %.3fs, upload %.3fs", job.id, job.attempt, load_s, inference_s, upload_s)
    return "succeeded"


_SIDECAR_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="farm-sidecar")


def _put_sidecars(storage, sidecars: list[tuple[str, bytes]]) -> None:
    for key, data in sidecars:
        storage.put(key, data, CONTENT_TYPES["json"])


def _forget_objects_of_canceled(runtime: WorkerRuntime, job_id: uuid.UUID, keys: list[str]) -> None:
    """A canceled job keeps no objects. A re-queued one keeps them: the newer
    attempt writes the same keys (deterministic), so deleting could race it."""
    if not keys:
        return
    with runtime.ctx.db.session() as session:
        status = session.get(Job, job_id).status
    if status == "canceled":
        for key in keys:
            runtime.ctx.storage.delete(key)


def _record_failure(runtime: WorkerRuntime, job: JobSnapshot, exc: Exception) -> str:
    settings = runtime.ctx.settings
    try:
        with runtime.ctx.db.transaction() as session:
            if _is_out_of_memory(exc):
                # Never again on this worker at this size (the scheduler skips it).
                logger.warning("job %s ran out of memory on %s; re-queueing elsewhere", job.id, runtime.name)
                states.requeue_job(session, job.id, job.attempt, f"out of memory on {runtime.name}", settings.max_attempts,
                                   exclude_worker=runtime.name)
                return "requeued"
            logger.exception("job %s attempt %d failed", job.id, job.attempt)
            states.fail_job(session, job.id, job.attempt, f"{type(exc).__name__}: {exc}")
    except states.JobStateError as refused:
        logger.info("failure of job %s not recorded: %s", job.id, refused)
        return "refused"
    return "failed"

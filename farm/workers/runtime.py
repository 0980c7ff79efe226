"""A worker process: its device, the pipelines it holds, registration and
heartbeats.

One worker process per GPU; its pipelines are used by the Celery task thread
only (solo pool), never shared across threads. The heartbeat thread reads the
held-model list under a lock and never touches a pipeline.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from farm import logs, metrics, states
from farm.context import FarmContext
from farm.models import Job, JobStatus, ModelEntry, Worker, utcnow
from farm.retry import ServiceError
from farm.workers.celery_app import worker_queue
from farm.workers.host_tier import HostTier, measure_h2d_gbps

logger = logging.getLogger(__name__)

CPU_DEFAULT_VRAM_GB = 8.0
BYTES_PER_GB = 1e9
# /healthz/ready: the latest heartbeat write must be this many heartbeats old at most.
READY_HEARTBEATS = 3
# An unhealthy worker asks its store again every this many heartbeats.
HEALTH_PROBE_EVERY = 5
_runtime: "WorkerRuntime | None" = None


def current_runtime() -> "WorkerRuntime":
    if _runtime is None:
        raise RuntimeError("this process is not a farm worker (no runtime was started)")
    return _runtime


def set_runtime(runtime: "WorkerRuntime | None") -> None:
    global _runtime
    _runtime = runtime


@dataclass
class LoadedModel:
    entry_id: str
    family: str
    pipe: Any
    vram_gb: float
    source: str
    revision: str | None
    weights_sha256: str | None
    dtype: str
    quantization: dict | None = None  # a quantized variant's record (farm/quantization.py), for the lineage
    # Where its latest load came from: disk, hub or host (the host-memory tier).
    load_source: str = "disk"


class WorkerRuntime:
    def __init__(self, ctx: FarmContext, name: str | None = None, vram_gb: float | None = None) -> None:
        from farm.families import renderer_names
        from farm.workers.pipelines import pick_device

        self.ctx = ctx
        settings = ctx.settings
        self.name = name or settings.resolved_worker_name
        self.host = socket.gethostname()
        self.queue = worker_queue(self.name)
        self.device = pick_device(settings.device)
        self.vram_budget_gb = vram_gb or settings.worker_vram_gb
        if self.device.type == "cpu" and self.vram_budget_gb is None:
            self.vram_budget_gb = CPU_DEFAULT_VRAM_GB
        self.families = list(renderer_names())
        # Evicted pipelines wait here instead of being dropped (0 GB: off).
        self.host_tier = HostTier(settings.worker_ram_cache_gb, self.device)
        # What a load from the tier costs, for the scheduler: measured on CUDA, configured elsewhere.
        self.h2d_gbps = measure_h2d_gbps(self.device) or settings.worker_h2d_gbps
        self.serves = settings.worker_model_ids()
        # FARM_WORKER_DESCRIBE_MODEL: the image-to-text model of POST /api/v1/describe, loaded on first use.
        self.describe_folder = Path(settings.worker_describe_model) if settings.worker_describe_model else None
        self._describer = None
        self._models: collections.OrderedDict[str, LoadedModel] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        # This process: a restart under the same name is another instance.
        self.instance_id = uuid.uuid4().hex
        # online | stopping | unhealthy: what the heartbeat writes to the row.
        self.state = "online"
        self.health_error: str | None = None
        # (job id -> attempt) this process is running: the only leases it renews.
        self._in_hand: dict[uuid.UUID, int] = {}
        # time.monotonic() by which a stopping worker must have finished.
        self.stop_deadline: float | None = None
        self._superseded = False
        self._beats = 0
        self.registered = False
        metrics.register_component("worker")
        # time.monotonic() of the latest heartbeat that reached the database.
        self.last_beat_at: float | None = None

    # ------------------------------------------------------------------ device

    @property
    def device_name(self) -> str:
        import torch

        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"cpu ({torch.get_num_threads()} threads)"

    def vram(self) -> tuple[float, float]:
        """(total, free) in GB: real figures on CUDA, the configured budget on CPU."""
        held = sum(m.vram_gb for m in self._models.values())
        if self.device.type == "cuda":
            import torch

            free_b, total_b = torch.cuda.mem_get_info(self.device)
            total, free = total_b / 1e9, free_b / 1e9
            if self.vram_budget_gb is not None:
                # A budget caps what this worker may use on a shared GPU.
                total = min(total, self.vram_budget_gb)
                free = min(free, max(total - held, 0.0))
            return total, free
        total = float(self.vram_budget_gb or CPU_DEFAULT_VRAM_GB)
        return total, max(total - held, 0.0)

    # ------------------------------------------------------------------ registry

    def loaded_models(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"id": m.entry_id, "vram_gb": round(m.vram_gb, 4)} for m in self._models.values()]

    def register(self) -> None:
        import farm.lineage

        total, free = self.vram()
        values = dict(
            host=self.host, queue=self.queue, device=self.device.type, device_name=self.device_name,
            vram_total_gb=total, vram_free_gb=free, loaded_models=self.loaded_models(), serves_models=self.serves,
            host_models=self.host_tier.models(), ram_cache_gb=self.host_tier.budget_gb, h2d_gbps=self.h2d_gbps,
            families=self.families, max_pixels=self.ctx.settings.worker_max_pixels, capacity=1,
            describe_model=self.describe_folder.name if self.describe_folder else None,
            speed=self.ctx.settings.worker_speed, load_gbps=self.ctx.settings.worker_load_gbps,
            software=farm.lineage.software_versions(self.device.type), started_at=utcnow(), last_heartbeat_at=utcnow(),
            instance_id=self.instance_id, state=self.state, health_error=self.health_error,
        )

        def write(session) -> int:
            worker = session.get(Worker, self.name)
            if worker is None:
                session.add(Worker(id=self.name, **values))
            else:
                for key, value in values.items():
                    setattr(worker, key, value)  # a drain (worker.draining) outlives restarts
            return states.requeue_predecessor_jobs(session, self.name, self.instance_id, self.ctx.settings.max_attempts)

        handed_back = self.ctx.db.retrying(write, what=f"register worker {self.name}", budget_s=self.ctx.settings.db_retry_s)
        self.registered, self.last_beat_at = True, time.monotonic()
        self.publish_gauges(total, free)
        if handed_back:
            logger.warning("worker %s: re-queued %d job(s) an earlier process of this name was running", self.name, handed_back)
        logger.info("worker %s registered: %s, %.2f GB VRAM, queue %s", self.name, self.device_name, total, self.queue)
        self.ctx.events.wake_scheduler()

    def heartbeat(self) -> None:
        if self._superseded:
            return
        self._beats += 1
        if self.state == "unhealthy" and self._beats % HEALTH_PROBE_EVERY == 0:
            self.probe_storage()
        total, free = self.vram()
        with self._lock:
            in_hand = dict(self._in_hand)
        with self.ctx.db.transaction() as session:
            worker = session.get(Worker, self.name)
            if worker is None:
                session.rollback()
                self.register()
                return
            if worker.instance_id not in (None, self.instance_id):
                # Another process registered under this name while this one
                # was frozen: it owns the name and the queue now.
                self._superseded = True
                logger.error("worker %s: a newer process (instance %s) took this name; this one stops",
                             self.name, worker.instance_id)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            worker.vram_total_gb, worker.vram_free_gb = total, free
            worker.loaded_models = self.loaded_models()
            worker.host_models = self.host_tier.models()
            worker.last_heartbeat_at = utcnow()
            # Back from "offline" too: declared lost during a long pause, its
            # jobs were re-queued and their late writes are refused.
            worker.state, worker.health_error = self.state, self.health_error
            for job_id, attempt in in_hand.items():
                if not states.renew_lease(session, job_id, attempt, self.instance_id, self.ctx.settings.lease_s):
                    # The heartbeat thread has no job bound: this line names its job as the render's lines do.
                    with logs.log_context(job_id=job_id, attempt=attempt, worker=self.name):
                        logger.info("job %s attempt %d is no longer this worker's; its lease is not renewed",
                                    job_id, attempt)
        self.last_beat_at = time.monotonic()
        self.publish_gauges(total, free)

    def publish_gauges(self, total_gb: float | None = None, free_gb: float | None = None) -> None:
        """VRAM in bytes (used = total - free), the models held and those in the host tier, for /metrics."""
        if total_gb is None or free_gb is None:
            total_gb, free_gb = self.vram()
        worker = self.name
        metrics.WORKER_VRAM_TOTAL_BYTES.labels(worker=worker).set(total_gb * BYTES_PER_GB)
        metrics.WORKER_VRAM_FREE_BYTES.labels(worker=worker).set(free_gb * BYTES_PER_GB)
        metrics.WORKER_VRAM_USED_BYTES.labels(worker=worker).set(max(total_gb - free_gb, 0.0) * BYTES_PER_GB)
        held = self.held_model_ids()
        metrics.WORKER_MODELS_LOADED.labels(worker=worker).set(len(held))
        metrics.fill_gauge(metrics.WORKER_MODEL_LOADED, {(worker, model_id): 1 for model_id in held})
        metrics.fill_gauge(metrics.WORKER_HOST_MODEL, {(worker, m["id"]): 1 for m in self.host_tier.models()})

    def liveness(self) -> tuple[bool, str]:
        """Live: the heartbeat thread runs (before start: starting)."""
        if self._heartbeat_thread is None:
            return True, "starting"
        if not self._heartbeat_thread.is_alive() and not self._stop.is_set():
            return False, "the heartbeat thread has stopped"
        return True, self.state

    def readiness(self) -> tuple[bool, str]:
        """Ready: registered, heartbeats reaching the database, taking work."""
        if not self.registered:
            return False, "not registered yet"
        if not self.accepting:
            return False, f"worker is {'superseded' if self._superseded else self.state}"
        age = time.monotonic() - (self.last_beat_at or float("-inf"))
        if age > READY_HEARTBEATS * self.ctx.settings.heartbeat_s:
            return False, f"no heartbeat written for {age:.0f}s"
        return True, "online"

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.ctx.settings.heartbeat_s):
            try:
                self.heartbeat()
            except Exception as exc:
                logger.warning("heartbeat failed: %s", exc)

    # ------------------------------------------------------------------ work in hand

    def take(self, job_id: uuid.UUID, attempt: int) -> None:
        with self._lock:
            self._in_hand[job_id] = attempt
        metrics.WORKER_BUSY.labels(worker=self.name).set(1)

    def release(self, job_id: uuid.UUID) -> None:
        with self._lock:
            self._in_hand.pop(job_id, None)
            busy = bool(self._in_hand)
        metrics.WORKER_BUSY.labels(worker=self.name).set(1 if busy else 0)

    @property
    def accepting(self) -> bool:
        return self.state == "online" and not self._superseded

    def begin_stop(self, grace_s: float) -> None:
        """SIGTERM: take no new work, and hand back the job in hand unless it
        finishes within ``grace_s``. Called from a signal handler: no waiting."""
        if self.state == "stopping":
            return
        self.state = "stopping"
        self.stop_deadline = time.monotonic() + grace_s
        logger.info("worker %s stopping: finishing the current image within %.0fs, taking no new work", self.name, grace_s)
        threading.Thread(target=self._announce_stopping, name="farm-stopping", daemon=True).start()

    def _announce_stopping(self) -> None:
        try:
            self.heartbeat()
            self.ctx.events.wake_scheduler()
        except Exception as exc:
            logger.warning("could not tell the farm that %s is stopping: %s", self.name, exc)

    def mark_unhealthy(self, reason: str) -> None:
        """The store refuses this worker for good: take no work until it answers again."""
        self.state, self.health_error = "unhealthy", reason
        logger.error("worker %s is unhealthy and takes no work until this is fixed: %s", self.name, reason)
        try:
            self.heartbeat()
        except Exception as exc:
            logger.warning("could not record that %s is unhealthy: %s", self.name, exc)

    def probe_storage(self) -> bool:
        """Check the store; an unhealthy worker whose store answers again is online."""
        from farm.storage import StorageError

        try:
            check = getattr(self.ctx.storage, "check", None)
            if check is not None:
                check()
        except StorageError as exc:
            if self.state != "unhealthy" or self.health_error != str(exc):
                self.state, self.health_error = "unhealthy", str(exc)
                logger.error("worker %s is unhealthy: %s", self.name, exc)
            return False
        if self.state == "unhealthy":
            logger.info("worker %s: the object store answers again; taking work", self.name)
            self.state, self.health_error = "online", None
        return True

    def start(self) -> None:
        metrics.note_build_info("worker")
        metrics.WORKER_BUSY.labels(worker=self.name).set(0)
        self.probe_storage()
        self.register()
        # Heartbeats first: a preload can take longer than the heartbeat timeout.
        self._heartbeat_thread = threading.Thread(target=self._heartbeat_loop, name="farm-heartbeat", daemon=True)
        self._heartbeat_thread.start()
        for model_id in self.ctx.settings.preload_model_ids():
            with self.ctx.db.session() as session:
                entry = session.get(ModelEntry, model_id)
            if entry is None:
                raise ValueError(f"FARM_WORKER_PRELOAD names model {model_id!r}, which is not registered")
            self.pipeline_for(entry)
        self.heartbeat()
        set_runtime(self)

    def stop(self) -> None:
        """Go offline and hand back at once the jobs sent to this worker that it
        will not run (their Celery messages die with its queue's consumer)."""
        self._stop.set()
        if not self._superseded:
            try:
                self.ctx.db.retrying(self._go_offline, what=f"take worker {self.name} offline",
                                     budget_s=min(self.ctx.settings.db_retry_s, 10.0))
            except ServiceError as exc:
                logger.warning("could not mark worker %s offline (its jobs' leases will hand them on): %s", self.name, exc)
        set_runtime(None)

    def _go_offline(self, session) -> None:
        worker = session.get(Worker, self.name)
        if worker is None or worker.instance_id not in (None, self.instance_id):
            return
        worker.state, worker.loaded_models, worker.host_models = "offline", [], []
        rows = session.execute(
            select(Job.id, Job.attempt).where(
                Job.worker_id == self.name,
                (Job.status == JobStatus.assigned.value)
                | ((Job.status == JobStatus.running.value) & (Job.worker_instance == self.instance_id)),
            )
        ).all()
        for row in rows:
            states.requeue_job(session, row.id, row.attempt, f"worker {self.name} stopped", self.ctx.settings.max_attempts,
                               charge=False)
        if rows:
            logger.info("worker %s handed back %d job(s) as it stopped", self.name, len(rows))

    # ------------------------------------------------------------------ models

    def resolve_source(self, entry: ModelEntry) -> tuple[Path, str | None]:
        """A local directory for the model, downloading it from the hub if needed."""
        path = Path(entry.source)
        if path.is_dir():
            return path, entry.revision
        from farm.hub import download_model

        settings = self.ctx.settings
        result = download_model(entry.source, revision=entry.revision, cache_dir=settings.resolved_model_cache,
                                endpoint=settings.hub_endpoint, token=settings.hub_token)
        if entry.weights_sha256 and result.weights_sha256 != entry.weights_sha256:
            from farm.hub import ModelIntegrityError

            raise ModelIntegrityError(
                f"model {entry.id}: downloaded weights hash {result.weights_sha256} differs from the registered {entry.weights_sha256}"
            )
        return result.path, result.revision

    def pipeline_for(self, entry: ModelEntry, keep: tuple[str, ...] = ()) -> tuple[LoadedModel, float]:
        """The pipeline for a model and the seconds spent loading it (0 if held).

        ``keep``: models that must stay loaded to make room (the base model a
        refiner finishes renders of)."""
        from farm.workers.pipelines import estimate_vram_gb, load_pipeline, pick_dtype

        with self._lock:
            held = self._models.get(entry.id)
            if held is not None:
                self._models.move_to_end(entry.id)
                return held, 0.0
        started = time.perf_counter()
        # Out of the tier before making room: the room made may push others into it.
        loaded = self._from_host_tier(entry)
        self._make_room(entry.vram_gb, keep)
        if loaded is not None:
            source = "host"
            self.host_tier.restore(loaded)
            loaded.load_source = source
        else:
            source = "disk" if Path(entry.source).is_dir() else "hub"
            path, revision = self.resolve_source(entry)
            dtype = pick_dtype(self.device, entry.dtype, entry.family)
            pipe = load_pipeline(path, entry.family, self.device, dtype, entry.quantization)
            loaded = LoadedModel(entry.id, entry.family, pipe, estimate_vram_gb(pipe), entry.source, revision,
                                 entry.weights_sha256, str(dtype).replace("torch.", ""), entry.quantization,
                                 load_source=source)
        with self._lock:
            self._models[entry.id] = loaded
        load_s = time.perf_counter() - started
        metrics.MODEL_LOAD_SECONDS.labels(model=entry.id, source=source).observe(load_s)
        self.publish_gauges()
        logger.info("loaded model %s from %s in %.2fs (%.3f GB)", entry.id, source, load_s, loaded.vram_gb)
        return loaded, load_s

    def _from_host_tier(self, entry: ModelEntry) -> LoadedModel | None:
        """The model's pipeline out of the host tier, unless the registry has re-pointed the model since."""
        kept = self.host_tier.take(entry.id)
        if kept is None:
            return None
        if (kept.source, kept.weights_sha256, kept.family, kept.quantization) != \
                (entry.source, entry.weights_sha256, entry.family, entry.quantization):
            logger.info("model %s changed in the registry since it was evicted; loading it again", entry.id)
            return None
        return kept

    def _retire(self, evicted: LoadedModel, why: str) -> None:
        """An evicted model moves to the host tier, or is dropped when the tier is off or full."""
        dropped = self.host_tier.put(evicted)
        if evicted.entry_id in dropped:
            logger.info("evicting model %s (%.3f GB) %s", evicted.entry_id, evicted.vram_gb, why)
        else:
            logger.info("moving model %s (%.3f GB) to host memory %s", evicted.entry_id, evicted.vram_gb, why)
        for model_id in dropped:
            if model_id != evicted.entry_id:
                logger.info("dropping model %s from host memory to make room", model_id)

    def describe(self, object_key: str) -> dict[str, Any]:
        """A prompt for the stored image at ``object_key``: {"prompt", "model", "worker"}, or {"error"}."""
        import io

        import PIL.Image

        from farm.workers.describe import describe_image, load_describer

        if self.describe_folder is None:
            return {"error": f"worker {self.name} has no describe model (FARM_WORKER_DESCRIBE_MODEL)"}
        try:
            if self._describer is None:
                self._describer = load_describer(self.describe_folder, self.device, self.ctx.settings.worker_describe_prompt)
            data = self.ctx.storage.get(object_key)
            with PIL.Image.open(io.BytesIO(data)) as image:
                prompt = describe_image(self._describer, image)
        except Exception as exc:  # the API reports it; the worker goes on rendering
            logger.exception("describe of %s failed", object_key)
            return {"error": f"worker {self.name} could not describe the image: {exc}"}
        return {"prompt": prompt, "model": self._describer.name, "worker": self.name}

    def evict(self, model_ids) -> None:
        """Evict models the scheduler chose to make room (those not held are ignored): to the host tier, or dropped."""
        for model_id in model_ids:
            with self._lock:
                evicted = self._models.pop(model_id, None)
            if evicted is not None:
                self._retire(evicted, "as the scheduler asked")
                del evicted
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
        self.publish_gauges()

    def _make_room(self, needed_gb: float, keep: tuple[str, ...] = ()) -> None:
        total, _ = self.vram()
        while True:
            held = sum(m.vram_gb for m in self._models.values())
            if held + needed_gb <= total:
                return
            with self._lock:
                model_id = next((m for m in self._models if m not in keep), None)
                if model_id is None:
                    return
                evicted = self._models.pop(model_id)
            self._retire(evicted, "to make room")
            del evicted
            if self.device.type == "cuda":
                import torch

                torch.cuda.empty_cache()

    def held_model_ids(self) -> list[str]:
        with self._lock:
            return list(self._models)


def find_model(ctx: FarmContext, model_id: str) -> ModelEntry | None:
    with ctx.db.session() as session:
        return session.execute(select(ModelEntry).where(ModelEntry.id == model_id)).scalar_one_or_none()

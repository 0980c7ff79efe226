"""A worker process: its device, the pipelines it holds, registration and
heartbeats.

One worker process per GPU; its pipelines are used by the Celery task thread
only (solo pool), never shared across threads. The heartbeat thread reads the
held-model list under a lock and never touches a pipeline.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from farm import states
from farm.context import FarmContext
from farm.models import ModelEntry, Worker, utcnow
from farm.workers.celery_app import worker_queue

logger = logging.getLogger(__name__)

CPU_DEFAULT_VRAM_GB = 8.0
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


class WorkerRuntime:
    def __init__(self, ctx: FarmContext, name: str | None = None, vram_gb: float | None = None) -> None:
        from farm.workers.pipelines import FAMILIES, pick_device

        self.ctx = ctx
        settings = ctx.settings
        self.name = name or settings.resolved_worker_name
        self.host = socket.gethostname()
        self.queue = worker_queue(self.name)
        self.device = pick_device(settings.device)
        self.vram_budget_gb = vram_gb or settings.worker_vram_gb
        if self.device.type == "cpu" and self.vram_budget_gb is None:
            self.vram_budget_gb = CPU_DEFAULT_VRAM_GB
        self.families = list(FAMILIES)
        self.serves = settings.worker_model_ids()
        self._models: collections.OrderedDict[str, LoadedModel] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None

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
            families=self.families, max_pixels=self.ctx.settings.worker_max_pixels, capacity=1,
            speed=self.ctx.settings.worker_speed, load_gbps=self.ctx.settings.worker_load_gbps,
            software=farm.lineage.software_versions(self.device.type), started_at=utcnow(), last_heartbeat_at=utcnow(),
        )
        with self.ctx.db.transaction() as session:
            worker = session.get(Worker, self.name)
            if worker is None:
                session.add(Worker(id=self.name, state="online", **values))
            else:
                for key, value in values.items():
                    setattr(worker, key, value)
                worker.state = "online"  # a drain (worker.draining) outlives restarts
        logger.info("worker %s registered: %s, %.2f GB VRAM, queue %s", self.name, self.device_name, total, self.queue)
        self.ctx.events.wake_scheduler()

    def heartbeat(self) -> None:
        total, free = self.vram()
        with self.ctx.db.transaction() as session:
            worker = session.get(Worker, self.name)
            if worker is None:
                session.rollback()
                self.register()
                return
            worker.vram_total_gb, worker.vram_free_gb = total, free
            worker.loaded_models = self.loaded_models()
            worker.last_heartbeat_at = utcnow()
            if worker.state == "offline":
                # Declared lost while alive (a long pause): its old jobs were
                # re-queued and their late writes are refused; take new work.
                worker.state = "online"
            states.renew_leases(session, self.name, self.ctx.settings.lease_s)

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.ctx.settings.heartbeat_s):
            try:
                self.heartbeat()
            except Exception as exc:
                logger.warning("heartbeat failed: %s", exc)

    def start(self) -> None:
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
        self._stop.set()
        try:
            with self.ctx.db.transaction() as session:
                worker = session.get(Worker, self.name)
                if worker is not None:
                    worker.state, worker.loaded_models = "offline", []
        except Exception as exc:
            logger.warning("could not mark worker %s offline: %s", self.name, exc)
        set_runtime(None)

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
        self._make_room(entry.vram_gb, keep)
        path, revision = self.resolve_source(entry)
        dtype = pick_dtype(self.device, entry.dtype, entry.family)
        pipe = load_pipeline(path, entry.family, self.device, dtype)
        loaded = LoadedModel(entry.id, entry.family, pipe, estimate_vram_gb(pipe), entry.source, revision,
                             entry.weights_sha256, str(dtype).replace("torch.", ""))
        with self._lock:
            self._models[entry.id] = loaded
        load_s = time.perf_counter() - started
        logger.info("loaded model %s in %.2fs (%.3f GB)", entry.id, load_s, loaded.vram_gb)
        return loaded, load_s

    def evict(self, model_ids) -> None:
        """Drop models the scheduler chose to make room (those not held are ignored)."""
        for model_id in model_ids:
            with self._lock:
                evicted = self._models.pop(model_id, None)
            if evicted is not None:
                logger.info("evicting model %s (%.3f GB) as the scheduler asked", model_id, evicted.vram_gb)
                del evicted
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

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
            logger.info("evicting model %s (%.3f GB) to make room", model_id, evicted.vram_gb)
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

"""JSON shapes of jobs, outputs and workers as the API returns them."""

from __future__ import annotations

import logging
from typing import Any

from flask import url_for

from farm.models import Job, Output, Worker

logger = logging.getLogger(__name__)


def _iso(value):
    return value.isoformat() if value else None


def job_view(job: Job, rerender_matches: bool | None = None, webhook: dict[str, Any] | None = None,
             queue: dict[str, Any] | None = None) -> dict[str, Any]:
    """``webhook``: where the job's own webhook stands (farm.services.webhooks.job_webhooks); ``queue``: where a
    queued job stands (farm.services.jobs.queue_standing)."""
    total = job.progress_total or job.steps
    step = job.progress_step if job.status != "succeeded" else total
    return {
        "id": str(job.id),
        "status": job.status,
        "polling_url": url_for("jobs.get_job", job_id=job.id),
        "progress": {
            "step": step,
            "total": total,
            "percent": round(100.0 * step / total, 1) if total else 0.0,
            "eta_s": round(job.eta_s, 2) if job.eta_s is not None else None,
        },
        "outputs": [output_link(output) for output in job.outputs],
        "error": job.error if job.status in ("failed", "canceled") or job.error else None,
        "campaign": str(job.campaign_id) if job.campaign_id else None,
        "model": job.model_id,
        "params": job.params,
        "priority": job.priority,
        "created_at": _iso(job.created_at),
        "assigned_at": _iso(job.assigned_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "worker": job.worker_id,
        "attempt": job.attempt,
        "rerender_of": str(job.rerender_of) if job.rerender_of else None,
        "rerender_matches": rerender_matches,
        "webhook": webhook,
        "deadline": _iso(job.deadline),
        "at_risk": bool(queue and queue.pop("at_risk", False)),
        "deadline_missed": job.deadline_missed_s is not None,
        "deadline_missed_s": job.deadline_missed_s,
        "queue": queue,
        "preemption": {"count": job.preemptions or 0, "stopping": bool(job.preempt_requested) and job.status == "running",
                       "resumes": bool(job.resume_key) and job.status == "queued"},
    }


def output_link(output: Output) -> dict[str, Any]:
    return {
        "id": str(output.id),
        "index": output.index,
        "url": url_for("outputs.get_output_image", output_id=output.id),
        "lineage_url": url_for("outputs.get_output", output_id=output.id),
    }


def output_view(output: Output) -> dict[str, Any]:
    return {**output.lineage, **output_link(output)}


def worker_state(worker: Worker) -> str:
    """online, draining (online but taking no work), stopping (SIGTERM),
    unhealthy (its store refuses it; see health_error) or offline."""
    return "draining" if worker.draining and worker.state == "online" else worker.state


def worker_view(worker: Worker, heartbeat_age_s: float) -> dict[str, Any]:
    return {
        "id": worker.id,
        "host": worker.host,
        "state": worker_state(worker),
        "draining": worker.draining,
        "health_error": worker.health_error,
        "device": worker.device,
        "device_name": worker.device_name,
        "vram_total_gb": worker.vram_total_gb,
        "vram_free_gb": worker.vram_free_gb,
        "loaded_models": worker.loaded_models,
        "host_models": worker.host_models,
        "ram_cache_gb": worker.ram_cache_gb,
        "h2d_gbps": worker.h2d_gbps,
        "serves_models": worker.serves_models,
        "families": worker.families,
        "max_pixels": worker.max_pixels,
        "heartbeat_age_s": round(heartbeat_age_s, 2),
        "started_at": _iso(worker.started_at),
        "software": worker.software,
    }

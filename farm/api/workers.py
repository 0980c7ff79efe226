"""/api/v1/workers and /api/v1/models."""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify
from sqlalchemy import select

from farm.api import schemas
from farm.api.contract import declare
from farm.api.security import farm_context
from farm.api.views import worker_state, worker_view
from farm.models import ModelEntry, Worker, utcnow

logger = logging.getLogger(__name__)
bp = Blueprint("workers", __name__)


@bp.get("/workers")
@declare("Workers with their state, VRAM and the models they hold", {200: schemas.WorkerList})
def list_workers():
    now = utcnow()
    with farm_context().db.session() as session:
        workers = session.execute(select(Worker).order_by(Worker.id)).scalars().all()
    return jsonify({"workers": [worker_view(w, (now - w.last_heartbeat_at).total_seconds()) for w in workers]})


@bp.post("/workers/<worker_id>/drain")
@declare("Drain a worker: it finishes its work and takes no more (admin)", {200: schemas.WorkerState},
         auth="admin", path=schemas.WorkerPath, errors=(409,))
def drain_worker(worker_id: str):
    """Finish current work, take no more."""
    from farm.services.workers import set_draining

    worker = set_draining(farm_context(), worker_id, True)
    return jsonify({"id": worker.id, "state": worker_state(worker)})


@bp.post("/workers/<worker_id>/resume")
@declare("Resume a drained worker (admin)", {200: schemas.WorkerState}, auth="admin", path=schemas.WorkerPath,
         errors=(409,))
def resume_worker(worker_id: str):
    from farm.services.workers import set_draining

    worker = set_draining(farm_context(), worker_id, False)
    return jsonify({"id": worker.id, "state": worker_state(worker)})


@bp.get("/loras")
@declare("Registered LoRAs: id, family, weights sha256", {200: schemas.LoraList})
def list_loras():
    from farm.loras import list_loras as registered

    with farm_context().db.session() as session:
        rows = registered(session)
    return jsonify({"loras": [{"id": r.id, "family": r.family, "weights_sha256": r.weights_sha256,
                               "description": r.description} for r in rows]})


@bp.get("/models")
@declare("Registered models, their variants and which workers hold them", {200: schemas.ModelList})
def list_models():
    with farm_context().db.session() as session:
        models = session.execute(select(ModelEntry).order_by(ModelEntry.id)).scalars().all()
        workers = session.execute(select(Worker).where(Worker.state != "offline")).scalars().all()
    holders: dict[str, list[str]] = {}
    for worker in workers:
        for held in worker.loaded_models:
            holders.setdefault(held["id"], []).append(worker.id)
    return jsonify({"models": [
        {
            "id": m.id,
            "family": m.family,
            "source": m.source,
            "revision": m.revision,
            "dtype": m.dtype,
            "vram_gb": m.vram_gb,
            "default_steps": m.default_steps,
            "default_guidance": m.default_guidance,
            "description": m.description,
            "base": m.base,
            "variant": m.variant,
            # Every entry of the same base, this one included: what "variant" can pick.
            "variants": [{"id": v.id, "variant": v.variant, "default_steps": v.default_steps, "vram_gb": v.vram_gb,
                          "quantization": (v.quantization or {}).get("format")}
                         for v in models if m.base is not None and v.base == m.base],
            "quantization": m.quantization,
            "weights_sha256": m.weights_sha256,
            "held_by": sorted(holders.get(m.id, [])),
        }
        for m in models
    ]})

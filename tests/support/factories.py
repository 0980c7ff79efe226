"""Row factories for tests."""

from __future__ import annotations

import itertools
import uuid

from sqlalchemy import select

from farm.models import Job, ModelEntry, User

_names = itertools.count()


def ensure_user(session, name: str = "alice", admin: bool = False) -> User:
    user = session.execute(select(User).where(User.name == name)).scalar_one_or_none()
    if user is None:
        user = User(name=name, role="admin" if admin else "member")
        session.add(user)
        session.flush()
    return user


def ensure_model(session, model_id: str = "m-sd", family: str = "sd", vram_gb: float = 2.0) -> ModelEntry:
    entry = session.get(ModelEntry, model_id)
    if entry is None:
        entry = ModelEntry(id=model_id, source=f"/nonexistent/{model_id}", family=family, vram_gb=vram_gb)
        session.add(entry)
        session.flush()
    return entry


def make_job(ctx, user: str = "alice", model: str = "m-sd", **overrides) -> uuid.UUID:
    with ctx.db.transaction() as session:
        owner = ensure_user(session, user)
        ensure_model(session, model)
        params = {"prompt": "p", "final_prompt": "p", "final_negative_prompt": "", "width": 64, "height": 64, "steps": 2,
                  "guidance_scale": 5.0, "sampler": "euler", "scheduler": "normal", "seed": 1, "num_images": 1,
                  "output_format": "png", "model": model, "family": "sd", "negative_prompt": ""}
        fields = dict(user_id=owner.id, model_id=model, request={"prompt": "p"}, params=params, width=64, height=64,
                      steps=2, num_images=1, seed=1)
        fields.update(overrides)
        job = Job(**fields)
        session.add(job)
        session.flush()
        return job.id


def insert_jobs(session, *, user_id: int, model_id: str, prompts: list[str], **fields) -> list[uuid.UUID]:
    """Many job rows in one INSERT (history and search tests); ``fields`` set columns of every row."""
    from sqlalchemy import insert

    ids = [uuid.uuid4() for _ in prompts]
    session.execute(insert(Job), [dict(
        id=job_id, user_id=user_id, model_id=model_id, request={"prompt": prompt}, params={"prompt": prompt, "model": model_id},
        width=64, height=64, steps=2, seed=i, **fields) for i, (job_id, prompt) in enumerate(zip(ids, prompts))])
    return ids

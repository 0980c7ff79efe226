"""A job with wildcards rendered by a real worker on Postgres and S3: each
image's lineage (row, sidecar and embedded metadata) holds the prompt as
written, its expanded prompt and every wildcard's choice, and a rerender of
one image renders that image's prompt again."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import select

from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from farm.models import Job, Output
from farm.registry import add_model
from farm.services import jobs as job_service
from farm.settings import Settings
from farm.workers.pipelines import read_image_text
from farm.workers.runtime import WorkerRuntime
from tests.support.worker_jobs import submit_and_execute

pytestmark = pytest.mark.integration

PROMPT = "a __studio/outfit__ scarecrow at __time_of_day__"


@pytest.fixture()
def farm(tmp_path, migrated_postgres_url, s3, s3_bucket, tiny_models):
    wildcards = tmp_path / "wildcards" / "studio"
    wildcards.mkdir(parents=True)
    # Nested: an outfit line draws a built-in color.
    (wildcards / "outfit.txt").write_text("# what it wears\n__color__ raincoat\nstraw hat\n", encoding="utf-8")
    endpoint, access_key, secret_key = s3
    settings = Settings(home=tmp_path / "home", database_url=migrated_postgres_url, s3_endpoint=endpoint,
                        s3_access_key=access_key, s3_secret_key=secret_key, s3_bucket=s3_bucket, device="cpu",
                        worker_vram_gb=4.0, wildcards_dir=tmp_path / "wildcards")
    ctx = build_context(settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        add_model(session, "tiny-wild", str(tiny_models["tiny-a"]))
        user, _ = create_user(session, f"wild-{uuid.uuid4().hex[:6]}")
    return ctx, user, WorkerRuntime(ctx, name=f"w-wild-{uuid.uuid4().hex[:6]}")


def test_each_images_lineage_holds_its_wildcard_choices_and_a_rerender_repeats_it(farm):
    ctx, user, runtime = farm
    request = {"prompt": PROMPT, "negative_prompt": "__weather__", "model": "tiny-wild", "width": 64, "height": 64,
               "steps": 2, "seed": 21, "num_images": 3}
    job, _, _ = submit_and_execute(ctx, user, runtime, request)
    with ctx.db.session() as session:
        outputs = session.execute(select(Output).where(Output.job_id == job.id).order_by(Output.index)).scalars().all()
        session.expunge_all()
    assert [output.seed for output in outputs] == [21, 22, 23]
    prompts = set()
    for output in outputs:
        params = output.lineage["params"]
        assert output.lineage["request"]["prompt"] == PROMPT  # as submitted
        assert params["prompt"] == PROMPT and params["negative_prompt"] == "__weather__"
        choices = params["wildcards"]
        assert [c["name"] for c in choices if "within" not in c] == ["studio/outfit", "time_of_day", "weather"]
        outfit = next(c["choice"] for c in choices if c["name"] == "studio/outfit")
        nested = [c for c in choices if c.get("within") == "studio/outfit"]
        if outfit == "__color__ raincoat":
            assert len(nested) == 1 and nested[0]["name"] == "color"
            outfit = f"{nested[0]['choice']} raincoat"
        else:
            assert nested == []
        time_of_day = next(c["choice"] for c in choices if c["name"] == "time_of_day")
        assert params["final_prompt"] == f"a {outfit} scarecrow at {time_of_day}"
        assert params["final_negative_prompt"] == next(c["choice"] for c in choices if c["name"] == "weather")
        prompts.add(params["final_prompt"])

        sidecar = json.loads(ctx.storage.get(output.sidecar_key))
        assert sidecar["params"] == params
        embedded = read_image_text(ctx.storage.get(output.object_key))
        assert json.loads(embedded["farm"])["params"]["wildcards"] == choices
        assert embedded["parameters"].startswith(params["final_prompt"] + "\nNegative prompt: ")
    assert len(prompts) > 1  # each image drew from its own seed

    # The last image again: its own draws, so the same bytes.
    last = outputs[-1]
    rerun = job_service.rerender_output(ctx, user, str(last.id))
    from farm import states
    from farm.workers import render as render_module

    with ctx.db.transaction() as session:
        states.assign_job(session, rerun.id, 1, runtime.name, 30)
    assert render_module.execute_job(runtime, rerun.id, 1) == "succeeded"
    with ctx.db.session() as session:
        again = session.execute(select(Output).where(Output.job_id == rerun.id)).scalar_one()
        assert session.get(Job, rerun.id).params["final_prompt"] == last.lineage["params"]["final_prompt"]
    assert again.lineage["params"] == last.lineage["params"]
    assert again.content_sha256 == last.content_sha256

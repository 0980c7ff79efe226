"""Dashboard pages on a real app (SQLite, local store, an in-process worker
with a tiny model): what each page shows, the same permissions as the API, and
CSRF on every form post."""

from __future__ import annotations

import io
import re
import uuid

import pytest
from PIL import Image
from sqlalchemy import select

from farm import states
from farm.api import create_app
from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from farm.models import Campaign, Job, Worker, utcnow
from farm.registry import add_model
from farm.services.tokens import OPERATOR, list_tokens
from farm.workers import render as render_module
from farm.workers.runtime import WorkerRuntime
from farm.workers.tiny import write_tiny_model

SIZE = {"width": "64", "height": "64", "steps": "2"}


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("dash") / "sd", family="sd")


@pytest.fixture()
def farm(sqlite_settings, tiny_sd):
    settings = sqlite_settings.model_copy(update={"device": "cpu", "worker_vram_gb": 4.0})
    ctx = build_context(settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        add_model(session, "tiny-sd", str(tiny_sd))
        create_user(session, "ana", password="ana password 1")
        create_user(session, "bo", password="bo password 12")
        create_user(session, "root", admin=True, password="root password 1")
    app = create_app(settings, context=ctx)
    return ctx, app, WorkerRuntime(ctx, name="w1")


def csrf_from(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def signed_in(app, name: str):
    client = app.test_client()
    csrf = csrf_from(client.get("/login").get_data(as_text=True))
    assert client.post("/login", data={"name": name, "password": f"{name} password {'12' if name == 'bo' else '1'}",
                                       "csrf_token": csrf}).status_code == 302
    client.csrf = csrf_from(client.get("/create").get_data(as_text=True))
    return client


def post(client, path, **data):
    return client.post(path, data={"csrf_token": client.csrf, **data}, content_type="multipart/form-data")


def run_queued(ctx, runtime) -> None:
    with ctx.db.session() as session:
        ids = session.execute(select(Job.id).where(Job.status == "queued").order_by(Job.created_at)).scalars().all()
    for job_id in ids:
        with ctx.db.transaction() as session:
            states.assign_job(session, job_id, 1, runtime.name, 30)
        assert render_module.execute_job(runtime, job_id, 1) == "succeeded"


def only_campaign(ctx) -> Campaign:
    with ctx.db.session() as session:
        return session.execute(select(Campaign)).scalar_one()


def test_a_matrix_campaign_is_checked_then_submitted(farm):
    ctx, app, _ = farm
    ana = signed_in(app, "ana")
    form = {"prompt": "a red boat\na blue kite", "model": "tiny-sd", "seed": "5", "seed_count": "2",
            "campaign_name": "boats", "steps": "2", "aspect_ratio": ["256*256", "384*256"]}
    check = post(ana, "/create/check", **form).get_data(as_text=True)
    assert "<b>8</b> jobs" in check and "<b>8</b> images" in check  # 2 prompts x 2 seeds x 2 frames
    with ctx.db.session() as session:
        assert session.execute(select(Job)).first() is None  # the dry run created nothing
    response = post(ana, "/create", **form)
    campaign = only_campaign(ctx)
    assert response.status_code == 302 and response.headers["Location"] == f"/campaigns/{campaign.id}"
    with ctx.db.session() as session:
        jobs = session.execute(select(Job).where(Job.campaign_id == campaign.id)).scalars().all()
    assert sorted({(j.params["final_prompt"].split(",")[0], j.seed, j.width, j.height) for j in jobs}) == sorted(
        (p, s, w, 256) for p in ("a blue kite", "a red boat") for s in (5, 6) for w in (256, 384))
    page = ana.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    assert "8 jobs" in page and "queued 8" in page


def test_field_errors_show_next_to_the_field_and_keep_the_input(farm):
    _, app, _ = farm
    ana = signed_in(app, "ana")
    response = post(ana, "/create", prompt="a lighthouse", steps="many", width="64", height="64", model="tiny-sd")
    page = response.get_data(as_text=True)
    assert response.status_code == 422
    assert re.search(r'id="error-steps">[^<]*not a whole number', page)
    assert "a lighthouse</textarea>" in page  # nothing typed is lost
    unknown = post(ana, "/create", prompt="a lighthouse", model="no-such-model", **{k: v for k, v in SIZE.items()})
    assert unknown.status_code == 422 and 'id="error-model"' in unknown.get_data(as_text=True)
    no_seeds = post(ana, "/create", prompt="a lighthouse", model="tiny-sd", seed_count="0", **SIZE)
    assert no_seeds.status_code == 422 and re.search(r'id="error-seed_count">give 1 to 100000 seeds', no_seeds.get_data(as_text=True))
    empty = post(ana, "/create/check", prompt="  ")
    assert "<b>prompt</b>" in empty.get_data(as_text=True)


def test_self_attention_guidance_from_the_form(farm):
    ctx, app, _ = farm
    ana = signed_in(app, "ana")
    refused = post(ana, "/create", prompt="a lighthouse", model="tiny-sd", sag_scale="5", sampler="ddim", **SIZE)
    assert refused.status_code == 422 and 'id="error-sag_scale"' in refused.get_data(as_text=True)
    assert post(ana, "/create", prompt="a lighthouse", model="tiny-sd", sag_scale="0.75", sampler="ddim", **SIZE).status_code == 302
    with ctx.db.session() as session:
        [job] = session.execute(select(Job)).scalars().all()
    assert job.params["sag_scale"] == 0.75


def test_csv_rows_are_previewed_and_become_a_campaign(farm):
    ctx, app, _ = farm
    ana = signed_in(app, "ana")
    csv_text = "prompt,seed,styles\na cat,1,\na dog,2,photo-golden-hour-landscape|3d-low-poly\na fox,3,\n"
    preview = post(ana, "/create/rows-preview", rows=(io.BytesIO(csv_text.encode()), "rows.csv")).get_data(as_text=True)
    assert "3 rows" in preview and "a dog" in preview and "photo-golden-hour-landscape | 3d-low-poly" in preview
    bad = post(ana, "/create/rows-preview", rows=(io.BytesIO(b"prompt,seed\na cat,one\n"), "rows.csv")).get_data(as_text=True)
    assert "is not a number" in bad
    response = post(ana, "/create", model="tiny-sd", campaign_name="pets", rows=(io.BytesIO(csv_text.encode()), "rows.csv"), **SIZE)
    assert response.status_code == 302, response.get_data(as_text=True)
    campaign = only_campaign(ctx)
    assert campaign.job_count == 3 and campaign.row_count == 3


def test_gallery_thumbnails_image_page_and_rerender(farm):
    ctx, app, runtime = farm
    ana = signed_in(app, "ana")
    assert post(ana, "/create", prompt="a bell", model="tiny-sd", seed_count="3", seed="1", campaign_name="bells",
                styles=["photo-golden-hour-landscape"], **SIZE).status_code == 302
    campaign = only_campaign(ctx)
    run_queued(ctx, runtime)
    gallery = ana.get(f"/campaigns/{campaign.id}/gallery?status=succeeded").get_data(as_text=True)
    thumbs = re.findall(r'src="(/thumbs/[^"]+\.webp)"', gallery)
    assert len(thumbs) == 3
    assert ana.get(f"/campaigns/{campaign.id}/gallery?status=failed").get_data(as_text=True).count("/thumbs/") == 0
    assert ana.get(f"/campaigns/{campaign.id}/gallery?style=photo-golden-hour-landscape").get_data(as_text=True).count("/thumbs/") == 3
    assert ana.get(f"/campaigns/{campaign.id}/gallery?style=3d-voxel").get_data(as_text=True).count("/thumbs/") == 0
    assert ana.get(f"/campaigns/{campaign.id}/gallery?status=bogus").status_code == 400
    thumb = ana.get(thumbs[0])
    assert thumb.mimetype == "image/webp" and Image.open(io.BytesIO(thumb.data)).format == "WEBP"
    output_id = thumbs[0].split("/")[-1].removesuffix(".webp")
    with ctx.db.session() as session:
        from farm.models import Output

        key = session.get(Output, uuid.UUID(output_id)).object_key
    assert ctx.storage.exists(f"thumbs/{key}.webp")  # made once, kept in the store
    page = ana.get(f"/images/{output_id}").get_data(as_text=True)
    assert 'id="lineage"' in page and "photo-golden-hour-landscape" in page and "content_sha256" in page
    # No worker offers describe: the button says so instead of posting to a 503.
    assert re.search(r'<button type="button" id="describe" disabled title="no worker offers describe', page)
    with ctx.db.transaction() as session:
        session.add(Worker(id="wd", host="h", queue="q-wd", device="cpu", device_name="cpu", vram_total_gb=8,
                           vram_free_gb=8, max_pixels=1 << 22, families=["sd"], describe_model="tiny-describe",
                           last_heartbeat_at=utcnow()))
    page = ana.get(f"/images/{output_id}").get_data(as_text=True)
    assert f'action="/images/{output_id}/describe"' in page and "disabled" not in re.search(r'<button[^>]*id="describe"[^>]*>', page).group(0)
    rerender = post(ana, f"/images/{output_id}/rerender")
    assert rerender.status_code == 302 and rerender.headers["Location"] == f"/images/{output_id}#made-from"
    with ctx.db.session() as session:
        rerender_id = session.execute(select(Job.id).where(Job.rerender_of == uuid.UUID(output_id))).scalar_one()
    run_queued(ctx, runtime)
    assert "succeeded" in ana.get(f"/jobs/{rerender_id}").get_data(as_text=True)
    copy = ana.get(f"/create?from={output_id}").get_data(as_text=True)
    assert "a bell</textarea>" in copy and 'value="photo-golden-hour-landscape" checked' in copy


def test_campaign_controls(farm):
    ctx, app, _ = farm
    ana = signed_in(app, "ana")
    post(ana, "/create", prompt="a bell", model="tiny-sd", seed_count="4", campaign_name="bells", **SIZE)
    campaign = only_campaign(ctx)
    assert post(ana, f"/campaigns/{campaign.id}/pause").status_code == 302
    assert only_campaign(ctx).status == "paused"
    again = post(ana, f"/campaigns/{campaign.id}/pause")
    assert again.status_code == 409 and "only active campaigns can be paused" in again.get_data(as_text=True)
    post(ana, f"/campaigns/{campaign.id}/cancel")
    assert only_campaign(ctx).status == "canceled"
    manifest = ana.get(f"/campaigns/{campaign.id}/manifest.csv").get_data(as_text=True).splitlines()
    assert manifest[0].startswith("job_id,status") and len(manifest) == 5


def test_members_see_only_what_the_api_shows_them(farm):
    ctx, app, runtime = farm
    ana, bo, root = signed_in(app, "ana"), signed_in(app, "bo"), signed_in(app, "root")
    post(ana, "/create", prompt="a bell", model="tiny-sd", campaign_name="ana's", **SIZE)
    campaign = only_campaign(ctx)
    run_queued(ctx, runtime)
    with ctx.db.session() as session:
        job = session.execute(select(Job)).scalar_one()
        output_id = job.outputs[0].id
    for path in (f"/campaigns/{campaign.id}", f"/campaigns/{campaign.id}/gallery", f"/campaigns/{campaign.id}/progress",
                 f"/campaigns/{campaign.id}/manifest.csv", f"/campaigns/{campaign.id}/export.zip", f"/jobs/{job.id}",
                 f"/images/{output_id}", f"/images/{output_id}/full", f"/thumbs/{output_id}.webp", f"/create?from={output_id}"):
        assert ana.get(path).status_code == 200, path
        assert root.get(path).status_code == 200, path  # admins see everything
        assert bo.get(path).status_code == 404, path  # someone else's: missing, as in the API
    for path in (f"/campaigns/{campaign.id}/pause", f"/images/{output_id}/rerender", f"/images/{output_id}/vary_subtle"):
        assert post(bo, path).status_code == 404, path
    assert "ana&#39;s" not in bo.get("/campaigns").get_data(as_text=True)
    assert "ana&#39;s" in ana.get("/campaigns").get_data(as_text=True)


GET_PAGES = ("/", "/create", "/create/styles", "/campaigns", "/workers", "/usage", "/admin", "/admin/usage.csv", f"/campaigns/{uuid.uuid4()}", f"/jobs/{uuid.uuid4()}",
             f"/images/{uuid.uuid4()}", f"/thumbs/{uuid.uuid4()}.webp")
POST_ACTIONS = ("/create", "/create/check", "/create/rows-preview", f"/campaigns/{uuid.uuid4()}/pause",
                f"/campaigns/{uuid.uuid4()}/cancel", f"/campaigns/{uuid.uuid4()}/retry-failed",
                f"/images/{uuid.uuid4()}/rerender", f"/images/{uuid.uuid4()}/upscale_2x", "/workers/w1/drain",
                "/admin/quota/user/1", "/admin/tokens", "/admin/tokens/1/revoke", "/logout")


@pytest.mark.parametrize("path", GET_PAGES)
def test_every_page_needs_a_session(farm, path):
    _, app, _ = farm
    response = app.test_client().get(path)
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    polled = app.test_client().get(path, headers={"HX-Request": "true"})
    assert polled.status_code == 401 and polled.headers["HX-Redirect"].startswith("/login")


@pytest.mark.parametrize("path", POST_ACTIONS)
def test_every_action_needs_the_csrf_token(farm, path):
    _, app, _ = farm
    ana = signed_in(app, "ana")
    response = ana.post(path, data={"prompt": "a bell"})
    assert response.status_code == 400 and "CSRF check failed" in response.get_data(as_text=True)
    forged = ana.post(path, data={"prompt": "a bell", "csrf_token": "not-the-token"})
    assert forged.status_code == 400


def test_workers_page_shows_vram_models_and_queue_and_only_admins_drain(farm):
    ctx, app, runtime = farm
    runtime.register()
    ana, root = signed_in(app, "ana"), signed_in(app, "root")
    post(ana, "/create", prompt="a bell", model="tiny-sd", seed_count="2", campaign_name="bells", **SIZE)
    run_queued(ctx, runtime)
    runtime.heartbeat()  # reports the model it now holds
    post(ana, "/create", prompt="a bell", model="tiny-sd", seed_count="3", campaign_name="more bells", **SIZE)
    with ctx.db.transaction() as session:
        waiting = session.execute(select(Job).where(Job.status == "queued")).scalars().first()
        waiting.error = "waiting: no worker can run this job (needs 40.0 GB, the largest GPU has 4.0 GB)"
    page = ana.get("/workers").get_data(as_text=True)
    assert 'id="worker-w1"' in page and "tiny-sd" in page and "of 4.0 GB" in page
    assert re.search(r'<td>tiny-sd</td><td class="num"><a href="/jobs\?[^"]*status=queued[^"]*">3</a></td>', page)  # queue depth per model, linked
    assert "needs 40.0 GB" in page
    assert 'id="drain-w1"' not in page  # members get no drain button
    assert post(ana, "/workers/w1/drain").status_code == 403
    assert 'id="drain-w1"' in root.get("/workers").get_data(as_text=True)
    assert post(root, "/workers/w1/drain").status_code == 302
    with ctx.db.session() as session:
        from farm.models import Worker

        assert session.get(Worker, "w1").draining
    assert 'id="resume-w1"' in root.get("/workers?fragment=1").get_data(as_text=True)
    assert post(root, "/workers/w1/resume").status_code == 302


def test_usage_quota_editing_csv_and_tokens(farm):
    ctx, app, runtime = farm
    ana, root = signed_in(app, "ana"), signed_in(app, "root")
    post(ana, "/create", prompt="a bell", model="tiny-sd", seed_count="2", campaign_name="bells", **SIZE)
    run_queued(ctx, runtime)
    mine = ana.get("/usage").get_data(as_text=True)
    assert "<b>2</b> images" in mine and 'id="my-usage-chart"' in mine and "unlimited" in mine
    for path in ("/admin", "/admin/usage.csv"):
        assert ana.get(path).status_code == 403
    assert post(ana, "/admin/quota/user/1", images_per_day="5").status_code == 403
    with ctx.db.session() as session:
        from farm.models import User

        ana_id = session.execute(select(User.id).where(User.name == "ana")).scalar_one()
    bad = post(root, f"/admin/quota/user/{ana_id}", images_per_day="lots")
    assert bad.status_code == 422 and "is not a number" in bad.get_data(as_text=True)
    assert post(root, f"/admin/quota/user/{ana_id}", images_per_day="3", max_steps="40").status_code == 302
    admin_page = root.get("/admin").get_data(as_text=True)
    assert f'aria-label="ana images_per_day" value="3"' in admin_page
    assert "1 images today" in post(ana, "/create/check", prompt="a bell", model="tiny-sd", **SIZE).get_data(as_text=True)
    over = post(ana, "/create", prompt="a bell", model="tiny-sd", seed_count="2", campaign_name="too many", **SIZE)
    assert over.status_code == 429, over.status_code
    assert over.get_data(as_text=True).count("has used 2 of 3 images today") == 1  # said once, above the form
    csv_text = root.get("/admin/usage.csv?group_by=user,model").get_data(as_text=True).splitlines()
    assert csv_text[0] == "user,model,images,gpu_seconds" and csv_text[1].startswith("ana,tiny-sd,2,")
    created = post(root, "/admin/tokens", user_id=str(ana_id), name="ci", scope="read").get_data(as_text=True)
    token = re.search(r'id="new-token">[^<]*<code>([^<]+)</code>', created).group(1)
    assert app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    token_id = max(t.id for t in list_tokens(ctx, OPERATOR, all_users=True))
    assert post(root, f"/admin/tokens/{token_id}/revoke").status_code == 302
    assert app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401



def test_vary_upscale_and_image_prompt_start_jobs_from_the_image(farm):
    ctx, app, runtime = farm
    ana = signed_in(app, "ana")
    post(ana, "/create", prompt="a bell", model="tiny-sd", **SIZE)
    run_queued(ctx, runtime)
    with ctx.db.session() as session:
        output_id = session.execute(select(Job)).scalar_one().outputs[0].id
    for mode, size in (("vary_subtle", (64, 64)), ("upscale_1.5x", (96, 96))):
        response = post(ana, f"/images/{output_id}/{mode}")
        assert response.status_code == 302, response.get_data(as_text=True)
        assert response.headers["Location"] == f"/images/{output_id}#made-from"  # back to the image, the job in its strip
        with ctx.db.session() as session:
            job = session.execute(select(Job).where(Job.parent_output == output_id)
                                  .order_by(Job.created_at.desc()).limit(1)).scalar_one()
            assert job.request["image_mode"] == mode and job.request["parent_output"] == str(output_id)
            assert (job.width, job.height) == size
    assert post(ana, f"/images/{output_id}/sharpen").status_code == 404
    form = ana.get(f"/create?image_prompt={output_id}").get_data(as_text=True)
    assert f'name="image_prompt" value="{output_id}"' in form
    response = post(ana, "/create", prompt="a bell", model="tiny-sd", image_prompt=str(output_id), **SIZE)
    # The tiny model has no IP-Adapter: the refusal names the field, above the form (it has no input of its own).
    assert response.status_code == 422
    assert re.search(r'id="form-message">.*<b>image_prompts</b>: [^<]*IP-Adapter', response.get_data(as_text=True), re.S)
    # References: the image page offers the image as one; the form carries it to the request check.
    assert f"/create?reference={output_id}" in ana.get(f"/images/{output_id}").get_data(as_text=True)
    form = ana.get(f"/create?reference={output_id}").get_data(as_text=True)
    assert f'name="reference" value="{output_id}"' in form
    response = post(ana, "/create", prompt="a bell", model="tiny-sd", reference=str(output_id), **SIZE)
    assert response.status_code == 422  # SD takes no references; the refusal names the field
    assert re.search(r'id="form-message">.*<b>references</b>: sd models take no reference images',
                     response.get_data(as_text=True), re.S)


def test_edit_from_the_image_page_opens_the_form_on_an_editing_model_and_queues_an_edit(farm):
    from tests.support.factories import ensure_model

    ctx, app, runtime = farm
    ana = signed_in(app, "ana")
    assert post(ana, "/create", prompt="a cup on a table", model="tiny-sd", **SIZE).status_code == 302
    run_queued(ctx, runtime)
    with ctx.db.session() as session:
        from farm.models import Output

        output_id = str(session.execute(select(Output.id)).scalar_one())
    assert 'id="edit-image"' not in ana.get(f"/images/{output_id}").get_data(as_text=True)  # no editing model yet
    with ctx.db.transaction() as session:
        ensure_model(session, "m-kontext", family="flux_kontext", vram_gb=12.0)
    page = ana.get(f"/images/{output_id}").get_data(as_text=True)
    assert f'href="/create?edit={output_id}"' in page
    form = ana.get(f"/create?edit={output_id}").get_data(as_text=True)
    assert 'name="image_mode" value="edit"' in form and f'name="parent_output" value="{output_id}"' in form
    assert re.search(r'<option value="m-kontext"[^>]*selected', form) and 'id="edit-note"' in form
    answer = post(ana, "/create", prompt="replace the cup with a teapot", model="m-kontext", image_mode="edit",
                  parent_output=output_id)
    assert answer.status_code == 302, answer.get_data(as_text=True)
    with ctx.db.session() as session:
        job = session.execute(select(Job).where(Job.model_id == "m-kontext")).scalar_one()
    assert job.params["image_task"]["mode"] == "edit" and job.params["image_task"]["parent_output"] == output_id
    # An output the user cannot see is not editable through the form either.
    assert signed_in(app, "bo").get(f"/create?edit={output_id}").status_code == 404


def test_image_page_strip_shows_the_jobs_made_from_it_live_then_done(farm):
    ctx, app, runtime = farm
    ana, bo = signed_in(app, "ana"), signed_in(app, "bo")
    post(ana, "/create", prompt="a bell", model="tiny-sd", **SIZE)
    run_queued(ctx, runtime)
    with ctx.db.session() as session:
        output_id = session.execute(select(Job)).scalar_one().outputs[0].id
    page = ana.get(f"/images/{output_id}").get_data(as_text=True)
    assert 'id="made-from"' in page and "Made from this image" not in page and "hx-trigger" not in page.split('id="made-from"')[1][:200]
    assert post(ana, f"/images/{output_id}/vary_subtle").status_code == 302
    assert post(ana, f"/images/{output_id}/rerender").status_code == 302
    with ctx.db.session() as session:
        vary = session.execute(select(Job).where(Job.parent_output == output_id)).scalar_one()
        again = session.execute(select(Job).where(Job.rerender_of == output_id)).scalar_one()
    page = ana.get(f"/images/{output_id}").get_data(as_text=True)
    strip = page.split('id="made-from"')[1].split('id="lineage"')[0]
    assert "Made from this image" in page and "live.js" in page
    # Newest first, each unfinished one followed live (its stream) and by the strip's poll.
    assert strip.index(f'id="made-{again.id}"') < strip.index(f'id="made-{vary.id}"')
    assert f'data-live-job="{again.id}"' in strip and f'data-live-job="{vary.id}"' in strip
    assert "Rerender</a>" in strip and "Vary (subtle)</a>" in strip
    assert f'hx-get="/images/{output_id}?fragment=1"' in page and "every" in strip[:400]
    fragment = ana.get(f"/images/{output_id}?fragment=1").get_data(as_text=True)
    assert 'id="made-from"' in fragment and "<html" not in fragment
    assert bo.get(f"/images/{output_id}?fragment=1").status_code == 404  # not bo's image

    run_queued(ctx, runtime)
    done = ana.get(f"/images/{output_id}?fragment=1").get_data(as_text=True)
    assert "data-live-job" not in done and "hx-trigger" not in done  # nothing left to follow: no poll
    assert done.count("/thumbs/") == 2 and done.count("badge-succeeded") == 2
    for job in (vary, again):
        with ctx.db.session() as session:
            new_output = session.get(Job, job.id).outputs[0].id
        assert f'href="/images/{new_output}"' in done


def test_quota_refusals_say_when_to_retry(farm):
    """The dashboard's 429s (the form, and the error page of an action) carry Retry-After, like the API's."""
    from farm.models import User
    from farm.services.quotas import NOT_BY_WAITING_RETRY_AFTER_S, QUEUE_RETRY_AFTER_S, set_quota

    ctx, app, _ = farm
    ana = signed_in(app, "ana")
    with ctx.db.session() as session:
        ana_id = session.execute(select(User.id).where(User.name == "ana")).scalar_one()
    post(ana, "/create", prompt="a bell", model="tiny-sd", seed_count="2", campaign_name="bells", **SIZE)
    campaign = only_campaign(ctx)
    set_quota(ctx, "user", ana_id, {"max_steps": 1, "max_queued_jobs": 2})
    steps = post(ana, "/create", prompt="a bell", model="tiny-sd", **SIZE)
    assert steps.status_code == 429 and steps.headers["Retry-After"] == str(NOT_BY_WAITING_RETRY_AFTER_S)
    set_quota(ctx, "user", ana_id, {"max_queued_jobs": 2})
    full = post(ana, "/create", prompt="a bell", model="tiny-sd", **SIZE)
    assert full.status_code == 429 and full.headers["Retry-After"] == str(QUEUE_RETRY_AFTER_S)
    assert "max_queued_jobs" in full.get_data(as_text=True)
    # An action refused on the quota: the error page.
    with ctx.db.session() as session:
        first = session.execute(select(Job.id).where(Job.campaign_id == campaign.id)).scalars().first()
    with ctx.db.transaction() as session:
        states.fail_job(session, first, None, "boom")
    post(ana, "/create", prompt="a bell", model="tiny-sd", **SIZE)  # the room the failure left
    retried = post(ana, f"/campaigns/{campaign.id}/retry-failed")
    assert retried.status_code == 429 and retried.headers["Retry-After"] == str(QUEUE_RETRY_AFTER_S)
    assert "Over quota" in retried.get_data(as_text=True)


def test_the_campaign_page_shows_how_its_webhook_deliveries_went(farm):
    ctx, app, _ = farm
    ana = signed_in(app, "ana")
    post(ana, "/create", prompt="a bell", model="tiny-sd", campaign_name="hooked", **SIZE)
    campaign = only_campaign(ctx)
    assert "campaign-webhook" not in ana.get(f"/campaigns/{campaign.id}/progress").get_data(as_text=True)
    with ctx.db.transaction() as session:
        row = session.get(Campaign, campaign.id)
        row.webhook_url, row.webhook_secret = "https://hooks.example.com/farm", "a-secret-of-16-chars"
        row.webhook_state, row.webhook_attempts, row.webhook_last_error = "failed", 3, "HTTP 500 from the receiver"
    page = ana.get(f"/campaigns/{campaign.id}/progress").get_data(as_text=True)
    assert "https://hooks.example.com/farm" in page and "completion failed after 3 attempts" in page
    assert "HTTP 500 from the receiver" in page and "a-secret-of-16-chars" not in page


def test_the_status_and_workers_pages_show_models_in_host_memory(farm):
    from farm.models import Worker

    ctx, app, _ = farm
    with ctx.db.transaction() as session:
        session.add(Worker(id="gpu-t", host="h", queue="q", device="cuda", device_name="L4", vram_total_gb=24,
                           vram_free_gb=17, max_pixels=10**7, loaded_models=[{"id": "sdxl-base", "vram_gb": 7.0}],
                           host_models=[{"id": "flux-dev", "gb": 23.8}, {"id": "sd15", "gb": 2.2}], ram_cache_gb=64.0))
        session.add(Worker(id="gpu-plain", host="h", queue="q2", device="cuda", device_name="L4", vram_total_gb=24,
                           vram_free_gb=24, max_pixels=10**7))
    ana = signed_in(app, "ana")
    workers = ana.get("/workers").get_data(as_text=True)
    assert "host memory (64.0 GB): flux-dev 23.8 GB · sd15 2.2 GB" in workers
    assert workers.count("host memory (") == 1  # a worker without a tier shows none
    status = ana.get("/").get_data(as_text=True)
    assert "<th>in host memory</th>" in status and "<td>sdxl-base</td><td>flux-dev, sd15</td>" in status


def test_a_deadline_from_the_form_shows_on_the_job_page_with_its_place_in_the_queue(farm):
    import datetime as dt

    from farm.models import Worker, utcnow
    from farm.scheduler.service import Scheduler

    ctx, app, _ = farm
    ana = signed_in(app, "ana")
    past = post(ana, "/create", prompt="a lighthouse", model="tiny-sd", deadline="2001-01-01T00:00:00Z", **SIZE)
    assert past.status_code == 422 and re.search(r'id="error-deadline">[^<]*in the past', past.get_data(as_text=True))
    due = (utcnow() + dt.timedelta(hours=2)).isoformat()
    for _ in range(2):
        assert post(ana, "/create", prompt="a lighthouse", model="tiny-sd", deadline=due, **SIZE).status_code == 302
    with ctx.db.transaction() as session:
        session.add(Worker(id="w9", host="h", queue="q-w9", device="cpu", device_name="cpu", vram_total_gb=8,
                           vram_free_gb=8, max_pixels=1 << 22, families=["sd"]))
    sent = []
    Scheduler(ctx, type("Dispatcher", (), {"send": lambda self, *a, **k: sent.append(a[0]),
                                          "send_preload": lambda self, *a, **k: None})()).run_pass()
    with ctx.db.session() as session:
        waiting = session.execute(select(Job.id).where(Job.status == "queued")).scalar_one()
    page = ana.get(f"/jobs/{waiting}").get_data(as_text=True)
    assert re.search(r'id="job-queue">Position 1 among', page) and 'id="job-deadline">Due' in page


def test_a_campaign_at_risk_shows_a_badge_and_its_predicted_finish(farm):
    import datetime as dt

    from farm.models import utcnow

    ctx, app, _ = farm
    ana = signed_in(app, "ana")
    due = (utcnow() + dt.timedelta(hours=1)).isoformat()
    assert post(ana, "/create", prompt="a bell", model="tiny-sd", seed_count="2", campaign_name="bells", deadline=due,
                **SIZE).status_code == 302
    campaign = only_campaign(ctx)
    assert campaign.deadline is not None
    page = ana.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    assert 'id="campaign-deadline">Due' in page and 'id="campaign-at-risk"' not in page
    with ctx.db.transaction() as session:
        row = session.get(Campaign, campaign.id)
        row.at_risk, row.predicted_finish_at = True, utcnow() + dt.timedelta(hours=2)
    page = ana.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    assert 'id="campaign-at-risk">at risk' in page and "predicted to finish" in page

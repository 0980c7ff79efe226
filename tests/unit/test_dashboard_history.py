"""The jobs history, the job page and the image page (issue 19) on SQLite with
a tiny in-process worker: filters, the LIKE search, keyset pages, the API's
visibility, bounded parameters, cancel, grouped lineage and what changed."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import pytest
from sqlalchemy import select, update

from farm import states
from farm.models import Job, User, utcnow
from farm.services import campaigns as campaign_service
from farm.services import jobs as job_service
from farm.services import tokens as token_service
from farm.services.tokens import OPERATOR
from tests.support.dashboard import post, sign_in
from tests.unit.test_dashboard_pages import farm, run_queued, tiny_sd  # noqa: F401  (fixtures)

SMALL = {"model": "tiny-sd", "width": 64, "height": 64, "steps": 2}


def user(ctx, name: str) -> User:
    with ctx.db.session() as session:
        found = session.execute(select(User).where(User.name == name)).scalar_one()
        session.expunge(found)
        return found


def submit(ctx, name: str, prompt: str, **extra) -> str:
    return str(job_service.submit_job(ctx, user(ctx, name), {**SMALL, "prompt": prompt, **extra}).id)


def listed(client, query: str = "") -> list[str]:
    page = client.get(f"/jobs{query}")
    assert page.status_code == 200, page.get_data(as_text=True)
    return re.findall(r'<tr data-job="([^"]+)"', page.get_data(as_text=True))


def test_history_lists_every_visible_job_newest_first_with_filters_and_search(farm):
    ctx, app, runtime = farm
    ana, bo, root = sign_in(app, "ana", "ana password 1"), sign_in(app, "bo", "bo password 12"), sign_in(app, "root", "root password 1")
    fox = submit(ctx, "ana", "a red fox in the snow")
    lighthouse = submit(ctx, "ana", "A Lighthouse at dusk")
    theirs = submit(ctx, "bo", "a red fox, bo's")
    req = campaign_service.parse_campaign({"name": "bells", "base": {**SMALL, "prompt": "a brass bell"}, "matrix": {"seed": [1, 2]}})
    campaign_id = campaign_service.submit_campaign(ctx, user(ctx, "ana"), req)["id"]
    run_queued(ctx, runtime)
    canceled = submit(ctx, "ana", "a quiet harbour")
    job_service.cancel_job(ctx, user(ctx, "ana"), canceled)

    mine = listed(ana)
    assert len(mine) == 5 and mine[0] == canceled and theirs not in mine  # newest first, never another user's job
    assert mine[3:] == [lighthouse, fox]
    assert listed(bo) == [theirs]
    assert set(listed(root)) == set(mine) | {theirs}  # admins see every job
    page = ana.get("/jobs").get_data(as_text=True)
    assert "a red fox in the snow" in page and "/thumbs/" in page and "tiny-sd" in page and "badge-succeeded" in page

    assert listed(ana, "?q=fox") == [fox]
    assert listed(ana, "?q=lighthouse+DUSK") == [lighthouse]  # every word, any case
    assert listed(ana, "?q=fox+dusk") == []
    assert listed(ana, "?q=100%25") == []  # LIKE wildcards are escaped
    assert listed(ana, "?status=canceled") == [canceled]
    assert listed(ana, "?status=canceled,succeeded") == mine  # several, as the API's list takes them
    for page in (ana.get(f"/campaigns/{campaign_id}"), ana.get("/campaigns")):  # campaign counts link to the list
        assert f"/jobs?campaign={campaign_id}&amp;status=succeeded" in page.get_data(as_text=True)
    assert set(listed(ana, f"?campaign={campaign_id}")) == set(mine[1:3])
    assert listed(ana, "?model=other") == []
    assert len(listed(ana, "?model=tiny-sd&status=succeeded")) == 4
    with ctx.db.transaction() as session:
        session.execute(update(Job).where(Job.id == uuid.UUID(fox)).values(created_at=utcnow() - dt.timedelta(days=3)))
    day = dt.datetime.now(dt.timezone.utc).date()
    assert fox not in listed(ana, f"?since={day.isoformat()}")
    assert listed(ana, f"?until={(day - dt.timedelta(days=1)).isoformat()}") == [fox]
    assert listed(bo, f"?campaign={campaign_id}") == []  # another's campaign: nothing, not an error


def test_history_pages_with_a_cursor(farm):
    ctx, app, _ = farm
    ana = sign_in(app, "ana", "ana password 1")
    ids = [submit(ctx, "ana", f"a bell number {i}") for i in range(5)]
    first = ana.get("/jobs?limit=2&q=bell").get_data(as_text=True)
    seen = re.findall(r'<tr data-job="([^"]+)"', first)
    while 'id="older"' in first:
        older = re.search(r'id="older" href="([^"]+)"', first).group(1).replace("&amp;", "&")
        assert "q=bell" in older and "limit=2" in older  # filters stay on every page
        first = ana.get(older).get_data(as_text=True)
        seen += re.findall(r'<tr data-job="([^"]+)"', first)
    assert seen == ids[::-1]


@pytest.mark.parametrize("query, named", [
    ("status=bogus", "status"), ("status=queued,bogus", "status"), ("limit=0", "limit"), ("limit=201", "limit"), ("limit=2x", "limit"),
    ("q=" + "a" * 201, "q"), ("q=" + "+w" * 13, "q"), ("cursor=not-a-cursor", "cursor"), ("cursor=" + "A" * 121, "cursor"),
    ("since=2026-13-01", "since"), ("until=yesterday", "until"), ("since=2026-12-02&until=2026-12-01", "until"),
    ("campaign=nope", "campaign"), ("model=" + "m" * 129, "model"), ("q=fox%00", "q"),
])
def test_history_parameters_are_bounded(farm, query, named):
    _, app, _ = farm
    answer = sign_in(app, "ana", "ana password 1").get(f"/jobs?{query}")
    assert answer.status_code == 400 and named in answer.get_data(as_text=True)


def test_job_page_shows_the_prompt_parameters_and_cancels_while_queued(farm):
    ctx, app, runtime = farm
    ana = sign_in(app, "ana", "ana password 1")
    job_id = submit(ctx, "ana", "a lighthouse at dusk", styles=["photo-golden-hour-landscape"])
    page = ana.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert '<h1 id="job-title">a lighthouse at dusk</h1>' in page
    assert f'<div id="live-preview" data-job="{job_id}">' in page and 'id="cancel-job"' in page
    parameters = re.search(r'<dl class="kv" id="job-parameters">(.*?)</dl>', page, re.S).group(1)
    assert "<dt>sampler</dt>" in parameters and "photo-golden-hour-landscape" in parameters
    assert "None" not in parameters and "<dt>preset</dt>" not in parameters  # empty fields left out
    fields = re.findall(r"<dt>([^<]+)</dt>", parameters)
    assert fields[0] == "final_prompt"
    assert fields.index("seed") < fields.index("width") < fields.index("steps") < fields.index("sampler")  # reading order

    _, plain = token_service.create_token(ctx, OPERATOR, user_id=user(ctx, "ana").id, name="viewer", scope="read")
    viewer = sign_in(app, token=plain)
    assert 'id="cancel-job"' not in viewer.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert post(viewer, f"/jobs/{job_id}/cancel").status_code == 403
    assert post(sign_in(app, "bo", "bo password 12"), f"/jobs/{job_id}/cancel").status_code == 404

    canceled = post(ana, f"/jobs/{job_id}/cancel")
    assert canceled.status_code == 302 and canceled.headers["Location"] == f"/jobs/{job_id}"
    after = ana.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert "badge-canceled" in after and 'id="cancel-job"' not in after and 'id="live-preview"' not in after
    again = post(ana, f"/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "already canceled" in again.get_data(as_text=True)

    done = submit(ctx, "ana", "a brass bell")
    run_queued(ctx, runtime)
    finished = ana.get(f"/jobs/{done}").get_data(as_text=True)
    assert "/thumbs/" in finished and 'id="cancel-job"' not in finished


def test_image_page_groups_the_lineage_and_shows_what_changed_from_the_parent(farm):
    ctx, app, runtime = farm
    ana = sign_in(app, "ana", "ana password 1")
    job_id = submit(ctx, "ana", "a brass bell", seed=7)
    run_queued(ctx, runtime)
    with ctx.db.session() as session:
        output_id = str(session.get(Job, uuid.UUID(job_id)).outputs[0].id)
    page = ana.get(f"/images/{output_id}").get_data(as_text=True)
    assert '<h1>a brass bell</h1>' in page and 'id="full-image"' in page and f'href="/images/{output_id}/full"' in page
    for group in ("prompt", "settings", "model", "worker", "timings", "files"):
        assert f'id="lineage-{group}"' in page, group
    assert f'href="/jobs/{job_id}"' in page and 'href="/workers#worker-w1"' in page and "content_sha256" in page
    assert ">None<" not in page and "What changed" not in page  # nothing empty, no parent
    timings = re.search(r'id="lineage-timings">(.*?)</section>', page, re.S).group(1)
    assert re.search(r"<dt>started_at</dt><dd>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC</dd>", timings)  # no microseconds

    vary = post(ana, f"/images/{output_id}/vary_strong")
    assert vary.headers["Location"].endswith(f"/images/{output_id}#made-from")  # back to the image, its strip
    run_queued(ctx, runtime)
    with ctx.db.session() as session:
        derived_job = session.execute(select(Job).where(Job.parent_output == uuid.UUID(output_id))).scalar_one()
        child = derived_job.outputs[0]
    derived = ana.get(f"/images/{child.id}").get_data(as_text=True)
    assert f'href="/images/{output_id}"' in derived and 'id="to-parent"' in derived
    changes = re.search(r'<table class="table" id="what-changed">(.*?)</table>', derived, re.S).group(1)
    assert "<th>image_task.mode</th>" in changes and "vary_strong" in changes and "<th>seed</th>" in changes
    assert "<th>steps</th>" not in changes or "<th>width</th>" not in changes  # only what differs


def test_a_filtered_gallery_page_past_the_first_holds_the_right_jobs_in_order(farm):
    """The filtered gallery's deferred join (dashboard/data.py): page 2 is the 49th.. matching jobs in expansion order."""
    from dashboard import data

    ctx, _, _ = farm
    req = campaign_service.parse_campaign({"name": "many", "base": {**SMALL, "prompt": "a bell"}, "matrix": {"seed_count": [120]}})
    campaign_id = uuid.UUID(campaign_service.submit_campaign(ctx, user(ctx, "ana"), req)["id"])
    with ctx.db.transaction() as session:
        ordered = session.execute(select(Job.id).where(Job.campaign_id == campaign_id).order_by(Job.campaign_index)).scalars().all()
        for job_id in ordered[::2]:  # through the state machine: the campaign's tallies follow
            states.fail_job(session, job_id, None, "out of memory")
    with ctx.db.session() as session:
        items, total = data.gallery_page(session, campaign_id, status="queued", style=None, model=None, page=2)
    assert total == 60 and [item.job_id for item in items] == ordered[1::2][48:60]

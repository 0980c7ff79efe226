"""Campaign files people can guess, expansion order and axes, the gallery in that
order, the X/Y grid and its PNG contact sheet, and campaign buttons by state,
on a real app (SQLite, local store, an in-process worker with a tiny model)."""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from farm import states
from farm.models import Campaign, Job, Output, User
from farm.services import campaign_grids as grids
from farm.services import tokens as token_service
from farm.services.campaigns import campaign_axes, expand, parse_campaign, position, submit_campaign
from farm.services.tokens import OPERATOR
from farm.spec import RequestError
from farm.workers import render as render_module
from tests.support.dashboard import post, sign_in

BASE = {"prompt": "x", "model": "tiny-sd", "width": 64, "height": 64, "steps": 2}


# ------------------------------------------------------------------ campaign files


def requests_of(payload: dict) -> list[dict]:
    return [item.request for item in expand(parse_campaign(payload))]


def test_a_matrix_over_aspect_ratio_wins_over_the_base_width_and_height():
    jobs = requests_of({"name": "a", "base": BASE, "matrix": {"aspect_ratio": ["1:1", "16:9"]}})
    assert [(j.get("aspect_ratio"), "width" in j, "height" in j) for j in jobs] == [("1:1", False, False), ("16:9", False, False)]


def test_a_row_width_wins_over_a_base_aspect_ratio_and_a_row_beats_the_matrix():
    base = {"prompt": "x", "aspect_ratio": "16:9"}
    jobs = requests_of({"name": "a", "base": base, "matrix": {"steps": [2, 3]},
                        "rows": [{"width": 64, "height": 96}, {"steps": 9}]})
    assert [(j.get("aspect_ratio"), j.get("width"), j["steps"]) for j in jobs] == [
        (None, 64, 2), ("16:9", None, 9), (None, 64, 3), ("16:9", None, 9)]


def test_a_matrix_over_styles_takes_plain_names_one_style_per_job_and_lists_still_work():
    plain = requests_of({"name": "s", "base": BASE, "matrix": {"styles": ["a", "b"]}})
    assert [j["styles"] for j in plain] == [["a"], ["b"]]
    lists = requests_of({"name": "s", "base": BASE, "matrix": {"styles": [["a", "c"], ["b"]]}})
    assert [j["styles"] for j in lists] == [["a", "c"], ["b"]]


def test_expansion_records_each_jobs_place_and_axis_values_in_mixed_radix_order():
    req = parse_campaign({"name": "o", "base": BASE, "matrix": {"seed": [1, 2, 3], "prompt": ["fox", "lighthouse"]},
                          "rows": [{"steps": 2}, {"steps": 3}]})
    jobs = expand(req)
    assert [j.index for j in jobs] == list(range(12))
    # Keys by name (prompt before seed), the last varying fastest, rows innermost.
    assert [j.axes for j in jobs[:4]] == [{"prompt": "fox", "seed": 1, "row": 1}, {"prompt": "fox", "seed": 1, "row": 2},
                                          {"prompt": "fox", "seed": 2, "row": 1}, {"prompt": "fox", "seed": 2, "row": 2}]
    assert jobs[6].axes == {"prompt": "lighthouse", "seed": 1, "row": 1}
    axes = campaign_axes(req.matrix, len(req.rows))
    assert [(a.name, a.size) for a in axes] == [("prompt", 2), ("seed", 3), ("row", 2)]
    for job in jobs:
        picks = {"prompt": ["fox", "lighthouse"].index(job.axes["prompt"]), "seed": job.axes["seed"] - 1,
                 "row": job.axes["row"] - 1}
        assert position(axes, picks) == job.index


def test_seed_count_is_an_axis_named_seed():
    req = parse_campaign({"name": "o", "base": BASE, "matrix": {"seed_count": [3], "model": ["m1", "m2"]}})
    assert [(a.name, a.size, a.values) for a in campaign_axes(req.matrix, 0)] == [("model", 2, ["m1", "m2"]), ("seed", 3, None)]
    assert sorted(expand(req)[0].axes) == ["model", "seed"]


def test_the_readme_campaign_file_is_valid_and_expands_as_it_says():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme[readme.index("`boats.json`:"):]
    body = json.loads(block[block.index("```json") + 7:block.index("```", block.index("```json") + 7)])
    jobs = expand(parse_campaign(body))
    assert len(jobs) == 32 and "= 32 jobs" in readme
    assert all("width" not in j.request and j.request["aspect_ratio"] in ("512*512", "768*512") for j in jobs)
    assert {tuple(j.request["styles"]) for j in jobs} == {("photo-golden-hour-landscape",),
                                                          ("paint-loose-watercolor", "film-widescreen-epic")}


def test_the_readme_campaign_file_passes_every_check_of_a_submission(sqlite_settings):
    # The whole submission path, as a dry run: each job's request resolved
    # against the registry (model sd15), the styles library and the sizes,
    # then the quota; nothing is created.
    from farm.context import build_context
    from tests.support.factories import ensure_model, ensure_user

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme[readme.index("`boats.json`:"):]
    body = json.loads(block[block.index("```json") + 7:block.index("```", block.index("```json") + 7)])
    ctx = build_context(sqlite_settings)
    with ctx.db.transaction() as session:
        ensure_model(session, "sd15", family="sd")
        user = ensure_user(session, "ana")
    answer = submit_campaign(ctx, user, parse_campaign({**body, "dry_run": True}))
    assert answer["jobs"] == 32 and "id" not in answer
    bad = {**body, "matrix": {**body["matrix"], "styles": [["photo-golden-hour-landscape"], ["no-such-style"]]}}
    with pytest.raises(RequestError, match="no-such-style"):
        submit_campaign(ctx, user, parse_campaign({**bad, "dry_run": True}))


# ------------------------------------------------------------------ a rendered 2 x 2 x 2 campaign


# The dashboard pages' farm: SQLite, the local store, users ana, bo and root, a tiny SD model, one worker runtime.
from tests.unit.test_dashboard_pages import farm, tiny_sd  # noqa: E402,F401  (fixtures)


def submit(ctx, payload: dict) -> str:
    with ctx.db.session() as session:
        user = session.execute(select(User).where(User.name == "ana")).scalar_one()
    return submit_campaign(ctx, user, parse_campaign(payload))["id"]


def run(ctx, runtime, campaign_id: str, limit: int | None = None) -> None:
    with ctx.db.session() as session:
        ids = session.execute(select(Job.id).where(Job.status == "queued", Job.campaign_id == uuid.UUID(campaign_id))
                              .order_by(Job.campaign_index)).scalars().all()
    for job_id in ids[:limit]:
        with ctx.db.transaction() as session:
            states.assign_job(session, job_id, 1, runtime.name, 30)
        assert render_module.execute_job(runtime, job_id, 1) == "succeeded"


MATRIX = {"prompt": ["a lighthouse", "a fox"], "styles": ["photo-golden-hour-landscape", "3d-low-poly"], "seed": [7, 8]}


def test_gallery_tiles_come_in_expansion_order_with_prompt_and_varying_axes(farm):
    ctx, app, runtime = farm
    campaign_id = submit(ctx, {"name": "order", "base": BASE, "matrix": MATRIX})
    run(ctx, runtime, campaign_id)
    page = sign_in(app, "ana", "ana password 1").get(f"/campaigns/{campaign_id}").get_data(as_text=True)
    prompts = re.findall(r'class="tile-prompt" title="([^"]+)"', page)
    assert prompts == ["a lighthouse"] * 4 + ["a fox"] * 4
    axes = re.findall(r'class="tile-axes">([^<]+)<', page)
    # Keys by name: prompt, seed, styles (the last varying fastest).
    assert axes[:3] == ["seed: 7 · styles: photo-golden-hour-landscape", "seed: 7 · styles: 3d-low-poly",
                        "seed: 8 · styles: photo-golden-hour-landscape"]
    assert page.count("data-lightbox") == 8 and "gallery.js" in page
    assert 'id="lightbox"' in page


def test_the_manifest_lists_jobs_in_matrix_order(farm):
    ctx, app, _ = farm
    seeds = [90, 10, 70, 30, 50, 20, 80, 40]
    campaign_id = submit(ctx, {"name": "manifest", "base": BASE, "matrix": {"seed": seeds}})
    manifest = sign_in(app, "ana", "ana password 1").get(f"/campaigns/{campaign_id}/manifest.csv").get_data(as_text=True)
    assert [int(row["seed"]) for row in csv.DictReader(io.StringIO(manifest))] == seeds


def grid_labels(page: str) -> tuple[list[str], list[str]]:
    table = page[page.index('id="grid"'):]
    columns = re.findall(r'<th scope="col" title="([^"]+)"', table)
    rows = re.findall(r'<th scope="row" title="([^"]+)"', table)
    return columns, rows


def test_grid_puts_two_axes_on_rows_and_columns_and_the_third_on_pages(farm):
    ctx, app, runtime = farm
    campaign_id = submit(ctx, {"name": "grid", "base": BASE, "matrix": MATRIX})
    run(ctx, runtime, campaign_id, limit=7)  # the last cell (fox, Sharp, seed 8) stays queued
    ana = sign_in(app, "ana", "ana password 1")
    page = ana.get(f"/campaigns/{campaign_id}/grid?x=styles&y=prompt&page=1").get_data(as_text=True)
    assert grid_labels(page) == (["photo-golden-hour-landscape", "3d-low-poly"], ["a lighthouse", "a fox"])
    assert "seed = 8" in page and "page 2 of 2" in page
    with ctx.db.session() as session:
        campaign = session.get(Campaign, uuid.UUID(campaign_id))
        grid = grids.read_grid(session, campaign, "styles", "prompt", 1)
        jobs = {(j.campaign_axes["prompt"], j.campaign_axes["styles"], j.seed): j
                for j in session.execute(select(Job).where(Job.campaign_id == campaign.id)).scalars()}
    for j, prompt in enumerate(["a lighthouse", "a fox"]):
        for i, style in enumerate(["photo-golden-hour-landscape", "3d-low-poly"]):
            assert grid.rows[j][i].job_id == jobs[(prompt, style, 8)].id
    assert grid.rows[1][1].output_id is None and "badge-queued" in page  # not rendered yet: an empty cell
    other = ana.get(f"/campaigns/{campaign_id}/grid?x=seed&y=styles").get_data(as_text=True)
    assert grid_labels(other) == (["7", "8"], ["photo-golden-hour-landscape", "3d-low-poly"]) and "prompt = a lighthouse" in other
    for query, field in (("x=colour", "x"), ("x=seed&y=seed", "y"), ("x=seed&y=prompt&page=2", "page"), ("page=-1", "page")):
        refused = ana.get(f"/campaigns/{campaign_id}/grid?{query}")
        assert refused.status_code == 400 and field in refused.get_data(as_text=True), query


def test_grid_png_is_one_labelled_contact_sheet(farm):
    ctx, app, runtime = farm
    campaign_id = submit(ctx, {"name": "sheet", "base": BASE, "matrix": MATRIX})
    run(ctx, runtime, campaign_id)
    ana = sign_in(app, "ana", "ana password 1")
    # A cell takes the stored thumbnail when there is one: the last cell's original is gone, its thumbnail kept.
    with ctx.db.session() as session:
        last = session.execute(select(Output).join(Job, Job.id == Output.job_id).where(
            Job.campaign_id == uuid.UUID(campaign_id), Job.campaign_index == 5)).scalar_one()  # fox, seed 7, 3d-low-poly
    assert ana.get(f"/thumbs/{last.id}.webp").status_code == 200
    ctx.storage.delete(last.object_key)
    answer = ana.get(f"/campaigns/{campaign_id}/grid.png?x=styles&y=prompt&page=0")
    assert answer.status_code == 200 and answer.mimetype == "image/png"
    assert "attachment" in answer.headers["Content-Disposition"]
    sheet = Image.open(io.BytesIO(answer.data)).convert("RGB")
    left, top, cell = 180, 2 * (grids.LABEL_PX + 8) + 4, grids.CELL_MIN_PX  # 64 px renders are not scaled up
    assert sheet.size == (left + 2 * cell + 4, top + 2 * cell + 4)
    # Every cell holds an image (not the white background) and the label bands hold dark text.
    for j in range(2):
        for i in range(2):
            middle = sheet.getpixel((left + i * cell + cell // 2, top + j * cell + cell // 2))
            assert middle != (255, 255, 255)
    label_band = sheet.crop((left, top - grids.LABEL_PX - 8, left + cell, top))
    row_band = sheet.crop((0, top, left, top + grids.LABEL_PX + 4))
    for band in (label_band, row_band):
        assert min(sum(pixel) for pixel in band.getdata()) < 200  # some dark pixels: text was drawn


def test_a_grid_side_past_64_values_is_refused_naming_it(farm):
    ctx, app, _ = farm
    campaign_id = submit(ctx, {"name": "many", "base": BASE, "matrix": {"seed": list(range(65)), "prompt": ["a", "b"], "steps": [2, 3]}})
    ana = sign_in(app, "ana", "ana password 1")
    refused = ana.get(f"/campaigns/{campaign_id}/grid?x=seed&y=prompt")
    assert refused.status_code == 400 and "at most 64" in refused.get_data(as_text=True)
    # The long axis goes on the pages instead: each page one seed.
    with ctx.db.session() as session:
        campaign = session.get(Campaign, uuid.UUID(campaign_id))
        with pytest.raises(RequestError, match="at most 64"):
            grids.read_grid(session, campaign, "seed", None, 0)
    assert ana.get(f"/campaigns/{campaign_id}/grid?x=prompt&y=prompt").status_code == 400
    # Unasked, the grid picks axes that fit and pages through the long one.
    default = ana.get(f"/campaigns/{campaign_id}/grid")
    assert default.status_code == 200 and "page 1 of 65" in default.get_data(as_text=True)


def actions(page: str) -> list[str]:
    head = page[page.index('id="campaign-actions"'):]
    head = head[:head.index("</div>")]
    return re.findall(r'id="action-([a-z-]+)"', head)


def test_campaign_buttons_follow_its_state_and_read_only_sessions_see_none(farm):
    ctx, app, runtime = farm
    campaign_id = submit(ctx, {"name": "b", "base": BASE, "matrix": {"seed": [1, 2]}})
    ana = sign_in(app, "ana", "ana password 1")
    page = f"/campaigns/{campaign_id}"
    assert actions(ana.get(page).get_data(as_text=True)) == ["pause", "cancel"]
    post(ana, f"{page}/pause")
    assert actions(ana.get(page).get_data(as_text=True)) == ["resume", "cancel"]
    # The progress poll carries the buttons too (swapped out of band).
    assert 'hx-swap-oob="true"' in ana.get(f"{page}/progress").get_data(as_text=True)
    post(ana, f"{page}/resume")
    run(ctx, runtime, campaign_id, limit=1)
    with ctx.db.transaction() as session:
        job_id = session.execute(select(Job.id).where(Job.campaign_id == uuid.UUID(campaign_id), Job.status == "queued")).scalar_one()
        states.fail_job(session, job_id, 1, "boom")
    # Nothing is unfinished: the next look completes the campaign; only the retry is left.
    assert actions(ana.get(page).get_data(as_text=True)) == ["retry-failed"]
    post(ana, f"{page}/retry-failed")
    assert actions(ana.get(page).get_data(as_text=True)) == ["pause", "cancel"]
    post(ana, f"{page}/cancel")
    assert actions(ana.get(page).get_data(as_text=True)) == []
    _, plain = token_service.create_token(ctx, OPERATOR, user_id=1, name="viewer", scope="read")
    fresh = submit(ctx, {"name": "c", "base": BASE, "matrix": {"seed": [1]}})
    reader = sign_in(app, token=plain)
    assert actions(reader.get(f"/campaigns/{fresh}").get_data(as_text=True)) == []


def test_the_contact_sheet_stays_bounded_at_64_by_64_cells():
    side = grids.Axis("seed", 64, list(range(64)))
    grid = grids.Grid(axes=[side, grids.Axis("prompt", 64, [f"p{n}" for n in range(64)])], x=side,
                      y=grids.Axis("prompt", 64, [f"p{n}" for n in range(64)]), page=0, pages=1, page_label="",
                      x_labels=[str(n) for n in range(64)], y_labels=[f"p{n}" for n in range(64)],
                      rows=[[None] * 64 for _ in range(64)])
    sheet = Image.open(io.BytesIO(grids.contact_sheet(grid, "big", lambda key: None)))
    assert sheet.width <= grids.SHEET_MAX_PX + 200 and sheet.height <= grids.SHEET_MAX_PX + 60

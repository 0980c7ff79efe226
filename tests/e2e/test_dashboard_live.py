"""Live previews on the job page (issue 19), in headless Chromium against a
real farm (api under uvicorn, scheduler, a worker with a tiny model, on
Postgres, Redis and S3): the worker's previews arrive over Server-Sent
Events while it renders and the page's poll is skipped meanwhile; with no
EventSource the page still follows the job by polling. Screenshots go to
test-artifacts/screenshots/."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Client, running_cluster
from tests.e2e.test_dashboard_browser import browser, sign_in, wait_true  # noqa: F401  (the browser fixture)

pytestmark = pytest.mark.e2e

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
# Long enough on CPU for several previews to arrive before the image does.
SLOW_JOB = dict(prompt="a lighthouse at dawn", model="tiny-a", width=256, height=256, steps=150)


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_job_page_shows_previews_over_sse_during_a_render(tmp_path, s3, redis_url, tiny_models, browser):  # noqa: F811
    with running_cluster(tmp_path, s3, redis_url, {"tiny-a": tiny_models["tiny-a"]}, {"wa": ["tiny-a"]}) as cluster:
        client = Client(cluster, cluster.token)
        page = sign_in(browser, cluster, cluster.token)
        polls = []
        # Polls, not the fragment refreshes the stream asks for.
        page.on("request", lambda request: polls.append(request.url)
                if "fragment=1" in request.url and "x-live-refresh" not in request.headers else None)
        streams = []
        page.on("response", lambda response: streams.append(response.headers.get("content-type", ""))
                if response.url.endswith("/events") else None)

        job_id = client.submit(**SLOW_JOB)
        page.goto(f"{cluster.api_url}/jobs/{job_id}")
        wait_true(page, "(() => { const i = document.querySelector('#live-preview-image');"
                        " return i && !i.hidden && i.src.startsWith('data:image/jpeg') && i.naturalWidth === 128; })()")
        # Read together: the next event changes both.
        step, status = page.evaluate("[document.querySelector('#live-step').textContent,"
                                     " document.querySelector('#job-status').textContent]")
        assert step.startswith("Step ") and " of 150" in step
        assert f"{round(100 * int(step.split()[1]) / 150, 1):.1f}%" in status
        shot(page, "live-job-preview-1366")
        page.set_viewport_size({"width": 390, "height": 844})
        shot(page, "live-job-preview-390")
        page.set_viewport_size({"width": 1366, "height": 800})
        polls_while_live = len(polls)

        assert client.wait_final(job_id)["status"] == "succeeded"
        # The end of the stream refreshes the status once: the image, and no preview any more.
        wait_true(page, "(() => { const i = document.querySelectorAll('#job-status .grid img');"
                        " return i.length === 1 && i[0].complete && i[0].naturalWidth > 0; })()")
        wait_true(page, "document.querySelector('#live-preview').hidden")
        assert "succeeded" in page.inner_text("#job-state")
        assert any(kind.startswith("text/event-stream") for kind in streams)
        assert polls_while_live == 0, f"the page polled while its stream was open: {polls}"
        shot(page, "live-job-done-1366")

        # Without EventSource the page falls back to its htmx poll and still sees the job through.
        page.context.add_init_script("delete window.EventSource;")
        job_id = client.submit(**{**SLOW_JOB, "steps": 40})
        page.goto(f"{cluster.api_url}/jobs/{job_id}")
        wait_true(page, "document.querySelectorAll('#job-status .grid img').length === 1")
        assert any(f"/jobs/{job_id}?fragment=1" in url for url in polls)
        assert page.query_selector("#live-preview-image") is None


def test_image_page_strip_follows_jobs_made_from_the_image_over_sse(tmp_path, s3, redis_url, tiny_models, browser):  # noqa: F811
    """Rerender and Vary stay on the image page; the new jobs head its "Made from this image" strip, the
    unfinished one showing the worker's previews and steps over its job's stream (no poll meanwhile), then
    its thumbnail linking to the new image."""
    with running_cluster(tmp_path, s3, redis_url, {"tiny-a": tiny_models["tiny-a"]}, {"wa": ["tiny-a"]}) as cluster:
        client = Client(cluster, cluster.token)
        parent = client.wait_final(client.submit(**{**SLOW_JOB, "steps": 40}), timeout=300)
        assert parent["status"] == "succeeded", parent
        output_id = parent["outputs"][0]["id"]
        page = sign_in(browser, cluster, cluster.token)
        polls = []
        page.on("request", lambda request: polls.append(request.url)
                if "fragment=1" in request.url and "x-live-refresh" not in request.headers else None)
        streams = []
        page.on("response", lambda response: streams.append(response.url) if response.url.endswith("/events") else None)

        page.goto(f"{cluster.api_url}/images/{output_id}")
        assert page.locator("#made-from .tile").count() == 0
        page.click("#rerender")  # the rerender renders the parent's 40 steps again: long enough to watch
        page.wait_for_url(f"{cluster.api_url}/images/{output_id}#made-from")
        assert page.locator("#made-from .tile").count() == 1 and "Rerender" in page.inner_text("#made-from")
        wait_true(page, "(() => { const i = document.querySelector('#made-from img.live-preview');"
                        " return i && !i.hidden && i.src.startsWith('data:image/jpeg') && i.naturalWidth === 128; })()")
        step = page.inner_text("#made-from .live-step")
        assert step.startswith("Step ") and " of 40" in step, step
        assert page.inner_text("#made-from .badge") == "running"  # steps arriving: never still "queued"
        assert any("/jobs/" in url for url in streams)
        shot(page, "live-image-strip-1366")
        page.set_viewport_size({"width": 390, "height": 844})
        page.evaluate("document.querySelector('#made-from').scrollIntoView()")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        page.screenshot(path=str(SCREENSHOTS / "live-image-strip-390.png"))
        page.set_viewport_size({"width": 1366, "height": 800})
        polls_while_live = len(polls)

        # The stream's end refreshes the strip: the new image's thumbnail, nothing left to follow.
        wait_true(page, "(() => { const i = document.querySelector('#made-from .tile a[href^=\"/images/\"] img');"
                        " return i && i.complete && i.naturalWidth > 0 &&"
                        " !document.querySelector('#made-from [data-live-job]'); })()", timeout=300_000)
        assert polls_while_live == 0, f"the image page polled while its streams were open: {polls}"
        assert "succeeded" in page.inner_text("#made-from .badge")

        # A second action joins the strip at its head; both stay on the image page.
        page.click("text=Vary (subtle)")
        page.wait_for_url(f"{cluster.api_url}/images/{output_id}#made-from")
        labels = page.eval_on_selector_all("#made-from .tile-head", "heads => heads.map(h => h.textContent.trim())")
        assert len(labels) == 2 and labels[0].endswith("Vary (subtle)") and labels[1].endswith("Rerender"), labels
        wait_true(page, "(() => { const i = document.querySelectorAll('#made-from .tile a[href^=\"/images/\"] img');"
                        " return i.length === 2 && [...i].every(x => x.complete && x.naturalWidth > 0); })()", timeout=300_000)
        assert page.locator("#made-from .badge-succeeded").count() == 2
        shot(page, "live-image-strip-done-1366")

"""The jobs history, the job page and the image page in headless Chromium
against a real farm (api, scheduler and a worker with a tiny SD model, on
Postgres, Redis and S3): a job made through the API is found again by a search
on the Jobs page and opened; its image page at 1366 and 390 px shows the image
within the window and its lineage; a queued job is canceled from its page.
Screenshots in test-artifacts/screenshots/history-*.png."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Client, running_cluster
from tests.e2e.test_dashboard_browser import browser  # noqa: F401  (the headless Chromium fixture)

pytestmark = pytest.mark.e2e

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
TIMEOUT_MS = 120_000
FITS = "document.documentElement.scrollWidth <= window.innerWidth"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3, tiny_models):
    """tiny-a is served by worker wa; tiny-b is registered but served by no one, so its jobs stay queued."""
    redis_url = os.environ.get("FARM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    with running_cluster(tmp_path_factory.mktemp("history"), s3, redis_url, tiny_models, {"wa": ["tiny-a"]}) as started:
        yield started


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"history-{name}.png"), full_page=True)


def signed_in_page(browser, cluster, width: int, height: int):
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(cluster.api_url + "/login")
    page.fill("#token", cluster.token)
    page.click("button[type=submit]")
    page.wait_for_url(cluster.api_url + "/")
    return page


def wait_for(client: Client, job_id: str, status: str) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = client.job(job_id, wait=5)
        if job["status"] == status:
            return job
    raise AssertionError(f"job {job_id} never became {status}: {job}")


def test_a_job_from_the_api_is_found_by_search_opened_and_a_queued_one_canceled(cluster, browser):  # noqa: F811
    api = Client(cluster, cluster.token)
    small = {"model": "tiny-a", "width": 128, "height": 128, "steps": 4}
    wanted = api.submit(prompt="a lighthouse at dusk, long exposure", seed=5, **small)
    api.submit(prompt="a red fox in the snow", seed=6, **small)
    stuck = api.submit(prompt="a paper boat on a pond", model="tiny-b", width=128, height=128, steps=4)
    wait_for(api, wanted, "succeeded")

    page = signed_in_page(browser, cluster, 1366, 800)
    page.goto(cluster.api_url + "/jobs")
    assert page.locator("#job-rows tbody tr").count() == 3
    page.fill("#q", "lighthouse")
    page.click("#job-filters button[type=submit]")
    page.wait_for_url("**/jobs?q=lighthouse*")
    rows = page.locator("#job-rows tbody tr")
    assert rows.count() == 1 and rows.first.get_attribute("data-job") == wanted
    shot(page, "jobs-search-1366")
    page.click(f'tr[data-job="{wanted}"] td:nth-child(2) a')
    page.wait_for_url(f"**/jobs/{wanted}")
    assert page.inner_text("#job-title") == "a lighthouse at dusk, long exposure"
    assert page.locator("#job-state").inner_text() == "succeeded" and page.locator("#cancel-job").count() == 0
    assert "sampler" in page.inner_text("#job-parameters")
    shot(page, "job-1366")

    page.click("#job-status .tile a")
    page.wait_for_url("**/images/*")
    page.wait_for_function("document.querySelector('#full-image').complete")
    box = page.locator("#full-image").bounding_box()
    assert box["height"] <= 800 and box["width"] <= 1366  # the image fits the window
    for group in ("prompt", "settings", "model", "worker", "timings", "files"):
        assert page.locator(f"#lineage-{group}").count() == 1, group
    assert "None" not in page.inner_text("#lineage")
    assert page.locator("#to-job").get_attribute("href") == f"/jobs/{wanted}"
    image_url = page.url
    shot(page, "image-1366")

    phone = signed_in_page(browser, cluster, 390, 844)
    phone.goto(image_url)
    phone.wait_for_function("document.querySelector('#full-image').complete")
    assert phone.evaluate(FITS), "the image page scrolls sideways at 390 px"
    assert phone.locator("#full-image").bounding_box()["width"] <= 390
    shot(phone, "image-390")
    phone.goto(cluster.api_url + "/jobs")
    assert phone.evaluate(FITS), "the jobs page scrolls sideways at 390 px"
    shot(phone, "jobs-390")

    page.goto(f"{cluster.api_url}/jobs/{stuck}")
    assert page.locator("#job-state").inner_text() == "queued"
    assert page.locator(f'#live-preview[data-job="{stuck}"]').count() == 1
    shot(page, "job-queued-1366")
    page.click("#cancel-job")
    page.wait_for_url(f"**/jobs/{stuck}")
    assert page.locator("#job-state").inner_text() == "canceled" and page.locator("#cancel-job").count() == 0
    assert page.locator("#job-error").count() == 0  # the scheduler's "waiting: …" note went with the queue
    assert api.job(stuck)["status"] == "canceled"
    shot(page, "job-canceled-1366")
    page.goto(cluster.api_url + "/jobs?status=canceled")
    assert [row.get_attribute("data-job") for row in page.locator("#job-rows tbody tr").all()] == [stuck]

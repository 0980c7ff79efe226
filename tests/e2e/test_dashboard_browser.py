"""The dashboard in headless Chromium against a real farm (api, scheduler and a
worker with a tiny model, on Postgres, Redis and S3): a member builds campaigns
from a matrix and from a CSV upload and watches them complete, opens an image
and rerenders it, and is refused admin pages; an admin drains a worker and
edits a quota; a read-only token's session shows no write actions, and an
admin ends it from the sessions page. Screenshots of each page go to test-artifacts/dashboard/."""

from __future__ import annotations

import time

import shutil
from pathlib import Path

import pytest

from tests.e2e.conftest import running_cluster

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TIMEOUT_MS = 120_000


@pytest.fixture()
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: `make test` installs it (scripts/ensure-browser.sh)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(browser, cluster, token: str):
    page = browser.new_context(viewport={"width": 1366, "height": 800}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(cluster.api_url + "/login")
    shot(page, "01-login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(cluster.api_url + "/")
    return page


def fill_small(page) -> None:
    page.select_option("#model", "tiny-a")
    page.click("summary")  # advanced options
    page.fill("#width", "128")
    page.fill("#height", "128")
    page.fill("#steps", "4")


def wait_true(page, expression: str, timeout: float = None) -> None:
    """Poll a JavaScript expression from here until it is true. The page's
    Content-Security-Policy forbids eval, which Playwright's wait_for_function
    needs; evaluate() is not subject to it."""
    deadline = time.monotonic() + (timeout or TIMEOUT_MS) / 1000
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {expression}")
        time.sleep(0.1)


def wait_complete(page) -> None:
    wait_true(page, "document.querySelector('#campaign-percent') && document.querySelector('#campaign-percent').textContent.trim() === '100.0'",
                           timeout=TIMEOUT_MS)


THUMBNAILS_SHOWN = "[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth > 0 && i.naturalWidth <= 256)"


def test_dashboard_in_a_browser(tmp_path, s3, redis_url, tiny_models, browser):
    with running_cluster(tmp_path, s3, redis_url, {"tiny-a": tiny_models["tiny-a"]}, {"wa": ["tiny-a"]}) as cluster:
        base = cluster.api_url
        member = sign_in(browser, cluster, cluster.token)

        # A campaign from a matrix: 2 prompts x 2 seeds, checked first.
        member.goto(base + "/create")
        member.fill("#prompt", "a red boat\na blue kite")
        fill_small(member)
        member.fill("#seed", "7")
        member.fill("#seed_count", "2")
        member.fill("#campaign_name", "matrix")
        member.fill("#style-search", "golden")
        member.wait_for_selector("#style-list input[value=photo-golden-hour-landscape]")
        member.check("#style-list input[value=photo-golden-hour-landscape]")
        member.click("#check-button")
        member.wait_for_selector("#check-result")
        assert "4 jobs" in member.inner_text("#check-result")
        shot(member, "02-create-checked")
        member.click("#submit-button")
        member.wait_for_url(f"{base}/campaigns/*")
        wait_complete(member)  # progress arrives by polling, without a reload
        wait_true(member, "document.querySelectorAll('#gallery img').length === 4", timeout=TIMEOUT_MS)
        wait_true(member, THUMBNAILS_SHOWN, timeout=TIMEOUT_MS)  # served as small WebPs from the store
        assert "succeeded 4" in member.inner_text("#campaign-counts")
        shot(member, "03-campaign-matrix")

        # A field error says what to fix, next to the field.
        member.goto(base + "/create")
        member.fill("#prompt", "a lighthouse")
        fill_small(member)
        member.fill("#steps", "0")
        member.click("#submit-button")
        assert "greater than or equal to 1" in member.inner_text("#error-steps")
        shot(member, "04-create-field-error")

        # A campaign from a CSV upload, previewed first.
        rows = tmp_path / "rows.csv"
        rows.write_text("prompt,seed\na green door,1\na yellow cab,2\na grey owl,3\n")
        member.goto(base + "/create")
        fill_small(member)
        member.fill("#campaign_name", "from csv")
        member.set_input_files("#rows", str(rows))
        member.wait_for_selector("#rows-preview")
        assert "a yellow cab" in member.inner_text("#rows-preview")
        shot(member, "05-create-csv-preview")
        member.click("#submit-button")
        member.wait_for_url(f"{base}/campaigns/*")
        wait_complete(member)
        wait_true(member, "document.querySelectorAll('#gallery img').length === 3", timeout=TIMEOUT_MS)

        member.goto(base + "/campaigns")
        assert "matrix" in member.inner_text("#campaign-rows") and "from csv" in member.inner_text("#campaign-rows")
        shot(member, "06-campaigns")

        # Open an image, read its lineage, rerender it.
        member.goto(base + "/campaigns")
        member.click("text=matrix")
        member.click("#gallery a[data-lightbox] >> nth=0")  # the lightbox (static/gallery.js); Details opens the image page
        member.wait_for_selector("#lightbox:not([hidden])")
        member.click("#lightbox-open")
        member.wait_for_selector("#lineage")
        assert "photo-golden-hour-landscape" in member.inner_text("#lineage")
        # The page is there before its image: wait for the image to load (or fail to), then check its size.
        wait_true(member, "document.querySelector('#full-image').complete")
        assert member.evaluate("document.querySelector('#full-image').naturalWidth") == 128
        shot(member, "07-image")
        member.click("#rerender")  # back on the image page, the rerender heading its "Made from this image" strip
        member.wait_for_url(f"{base}/images/*#made-from")
        wait_true(member, "(() => { const b = document.querySelector('#made-from .badge');"
                          " return b && b.textContent === 'succeeded'; })()", timeout=TIMEOUT_MS)
        member.click("#made-from .tile-head a:not(.badge)")
        member.wait_for_url(f"{base}/jobs/*")
        assert member.inner_text("#job-state") == "succeeded"
        shot(member, "08-rerender-job")

        # What a member may not do.
        member.goto(base + "/workers")
        member.wait_for_selector("#worker-wa")
        assert member.locator("#drain-wa").count() == 0
        shot(member, "09-workers-member")
        refused = member.goto(base + "/admin")
        assert refused.status == 403 and "only admins" in member.inner_text("body")
        shot(member, "10-admin-refused")
        member.goto(base + "/usage")
        member.wait_for_selector("#my-usage-chart")
        shot(member, "11-usage")

        # An admin drains and resumes the worker and edits the member's quota.
        admin = sign_in(browser, cluster, cluster.admin_token)
        admin.goto(base + "/workers")
        admin.click("#drain-wa")
        admin.wait_for_selector("#resume-wa")
        assert "draining" in admin.inner_text("#worker-wa")
        shot(admin, "12-workers-drained")
        admin.click("#resume-wa")
        admin.wait_for_selector("#drain-wa")
        admin.goto(base + "/admin")
        admin.fill("[aria-label='alice images_per_day']", "50")
        admin.click("#save-user-alice")
        admin.wait_for_selector("#user-quotas")
        assert admin.input_value("[aria-label='alice images_per_day']") == "50"
        shot(admin, "13-admin-quota")
        member.goto(base + "/usage")
        assert "50" in member.inner_text("#my-quota")

        # A read-only token signs in to a session that shows no way to change anything.
        viewer_token = cluster.farm("tokens", "create", "alice", "--name", "viewer", "--read-only").stdout.strip().splitlines()[-1]
        viewer = sign_in(browser, cluster, viewer_token)
        assert "read-only" in viewer.inner_text("#read-only")
        viewer.goto(base + "/campaigns")
        viewer.click("text=matrix")
        viewer.wait_for_selector("#gallery")
        assert viewer.locator("#action-pause").count() == 0
        viewer.goto(base + viewer.get_attribute("#gallery a[data-lightbox] >> nth=0", "href"))
        viewer.wait_for_selector("#lineage")
        assert viewer.locator("#rerender").count() == 0 and viewer.locator("#copy-parameters").count() == 0
        shot(viewer, "14-read-only-image")

        # An admin sees it among the sessions and ends it; the viewer's next page is the sign-in form.
        admin.goto(base + "/admin")
        admin.click("#sessions-link")
        row = admin.locator("#session-table tr", has_text="token viewer")
        assert row.count() == 1 and "read" in row.inner_text()
        shot(admin, "15-sessions")
        row.locator("button").click()
        admin.wait_for_selector("#session-table")
        assert admin.locator("#session-table tr", has_text="token viewer").count() == 0
        viewer.reload()
        viewer.wait_for_url(base + "/login**")  # ?next=/images/… holds slashes, which one * does not match

"""A 2 x 2 matrix campaign in headless Chromium against a real farm (api,
scheduler and a worker with a tiny model, on Postgres, Redis and S3): the
gallery in matrix order with the prompt on each card, the lightbox driven by
the keyboard, and the X/Y grid with the right row and column labels, at
1366 px and 390 px. Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import running_cluster
from tests.e2e.test_dashboard_browser import browser  # noqa: F401  (fixture: headless Chromium)

pytestmark = pytest.mark.e2e

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
PROMPTS = ["a lighthouse on a cliff", "a red fox in snow"]
STYLES = ["photo-golden-hour-landscape", "3d-low-poly"]


@pytest.fixture(scope="module")
def campaign(tmp_path_factory, s3, redis_url, tiny_models):
    """One farm and one finished campaign for every test of the module."""
    import requests

    with running_cluster(tmp_path_factory.mktemp("gallery"), s3, redis_url, {"tiny-a": tiny_models["tiny-a"]},
                         {"w1": ["tiny-a"]}) as cluster:
        headers = {"Authorization": f"Bearer {cluster.token}"}
        body = {"name": "fox or lighthouse", "base": {"prompt": "unused", "model": "tiny-a", "width": 64, "height": 64,
                                                       "steps": 2, "seed": 5},
                "matrix": {"prompt": PROMPTS, "styles": STYLES}}  # plain style names: one style per job
        answer = requests.post(f"{cluster.api_url}/api/v1/campaigns", json=body, headers=headers, timeout=30)
        assert answer.status_code == 201, answer.text
        campaign_id = answer.json()["id"]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            view = requests.get(f"{cluster.api_url}/api/v1/campaigns/{campaign_id}", headers=headers, timeout=30).json()
            if view["status"] == "completed":
                break
            time.sleep(0.5)
        assert view["status"] == "completed" and view["counts"]["succeeded"] == 4, view
        yield cluster, campaign_id


def signed_in(browser, cluster, width: int):
    page = browser.new_context(viewport={"width": width, "height": 900}).new_page()
    page.set_default_timeout(60_000)
    errors: list[str] = []
    # Script errors and CSP refusals, and failed requests but the favicon (there is none).
    page.on("console", lambda message: errors.append(message.text)
            if message.type == "error" and not message.text.startswith("Failed to load resource") else None)
    page.on("response", lambda response: errors.append(f"{response.status} {response.url}")
            if response.status >= 400 and not response.url.endswith("/favicon.ico") else None)
    page.errors = errors
    page.goto(cluster.api_url + "/login")
    page.fill("#token", cluster.token)
    page.click("button[type=submit]")
    page.wait_for_url(cluster.api_url + "/")
    return page


def shot(page, name: str, full_page: bool = True) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


@pytest.mark.parametrize("width", [1366, 390])
def test_gallery_order_prompts_and_lightbox_keys(campaign, browser, width):
    cluster, campaign_id = campaign
    page = signed_in(browser, cluster, width)
    page.goto(f"{cluster.api_url}/campaigns")
    assert page.locator("#campaign-rows .badge-completed").count() == 1
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # the table scrolls inside its wrap
    shot(page, f"campaigns-list-{width}")
    page.goto(f"{cluster.api_url}/campaigns/{campaign_id}")
    # Matrix order: prompt (outer) then styles; the prompt on every card, in full on hover.
    assert page.locator(".tile-prompt").evaluate_all("els => els.map(e => e.title)") == [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
    assert page.locator(".tile-axes").all_inner_texts() == [f"styles: {s}" for s in STYLES] * 2
    # Buttons by state: a completed campaign offers no pause, resume or cancel.
    assert page.locator("#campaign-actions button").count() == 0
    page.wait_for_function("() => [...document.querySelectorAll('.tile img')].every(i => i.complete && i.naturalWidth > 0)")
    shot(page, f"campaign-gallery-{width}")

    page.locator("a[data-lightbox]").first.click()
    lightbox = page.locator("#lightbox")
    assert lightbox.is_visible()
    caption = page.locator("#lightbox-caption")
    assert PROMPTS[0] in caption.inner_text() and "(1 of 4)" in caption.inner_text()
    assert page.locator("#lightbox-download").get_attribute("download") is not None
    page.wait_for_function("() => { const i = document.getElementById('lightbox-image'); return i.complete && i.naturalWidth > 0; }")
    assert page.locator("#lightbox-image").evaluate("img => img.naturalWidth") == 64  # the full image, not the thumbnail
    shot(page, f"campaign-lightbox-{width}", full_page=False)  # the overlay covers the viewport
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert PROMPTS[1] in caption.inner_text() and "(3 of 4)" in caption.inner_text()
    page.keyboard.press("ArrowLeft")
    assert "(2 of 4)" in caption.inner_text() and STYLES[1] in caption.inner_text()
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    assert "(4 of 4)" in caption.inner_text()  # wraps around
    page.keyboard.press("Escape")
    assert not lightbox.is_visible()
    assert page.errors == []  # no CSP refusal, no script error


@pytest.mark.parametrize("width", [1366, 390])
def test_grid_has_labelled_rows_and_columns(campaign, browser, width):
    cluster, campaign_id = campaign
    page = signed_in(browser, cluster, width)
    page.goto(f"{cluster.api_url}/campaigns/{campaign_id}")
    page.click("#grid-link")
    page.select_option("select[name=x]", "styles")
    page.select_option("select[name=y]", "prompt")
    page.click("#grid-axes button[type=submit]")
    page.wait_for_url(re.compile(r".*/grid\?x=styles&y=prompt.*"))
    assert page.locator("#grid thead th[title]").evaluate_all("els => els.map(e => e.title)") == STYLES
    assert page.locator("#grid tbody th[scope=row]").evaluate_all("els => els.map(e => e.title)") == PROMPTS
    assert page.locator("#grid tbody img").count() == 4
    # Each cell is the job with its row's prompt and its column's style.
    captions = page.locator("#grid a[data-lightbox]").evaluate_all("els => els.map(e => e.dataset.caption)")
    for n, text in enumerate(captions):
        assert f"styles: {STYLES[n % 2]}" in text and f"prompt: {PROMPTS[n // 2]}" in text
    page.wait_for_function("() => [...document.querySelectorAll('#grid tbody img')].every(i => i.complete && i.naturalWidth > 0)")
    shot(page, f"campaign-grid-{width}")
    href = page.locator("#grid-download").get_attribute("href")
    answer = page.request.get(cluster.api_url + href)
    assert answer.status == 200 and answer.headers["content-type"] == "image/png"
    (SCREENSHOTS / f"campaign-grid-download-{width}.png").write_bytes(answer.body())  # the contact sheet, to look at
    assert page.errors == []
